// Validated views of caller-owned tensors received through DLPack.
//
// TensorArg borrows: it keeps the producer's capsule alive for the duration of the call
// and never renames it, so the producer's own capsule destructor releases the
// DLManagedTensor. Every check raises a Python exception naming the argument.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "dlpack_abi.h"
#include "wavalign/dtype.h"

namespace wavalign {

struct TensorArg {
  std::string name;
  pybind11::object capsule;  // keeps the export alive
  void* data = nullptr;
  DType dtype = DType::Float32;
  bool dtype_known = false;  // false: an element type wavalign has no DType for
  std::string dtype_text;    // e.g. "float64", for error messages
  std::vector<int64_t> shape;
  int32_t device_type = dlpack::kCPU;
  int32_t device_id = 0;

  bool is_cuda() const { return device_type == dlpack::kCUDA; }
  std::string device_str() const;
  int64_t numel() const;
};

// Imports `obj` (anything with __dlpack__: torch tensors, numpy arrays, ...) and checks
// that it is contiguous, on CPU or CUDA memory, and of a supported element type.
TensorArg tensor_arg(const pybind11::handle& obj, const char* name);

// Raise TypeError unless arg.dtype is one of `allowed`.
void require_dtype(const TensorArg& arg, std::initializer_list<DType> allowed);
// Raise ValueError unless arg.shape matches; -1 in `shape` matches any size.
void require_shape(const TensorArg& arg, std::initializer_list<int64_t> shape,
                   const char* shape_doc);
// Raise ValueError unless arg lives on the same device as `ref`.
void require_same_device(const TensorArg& arg, const TensorArg& ref);

}  // namespace wavalign
