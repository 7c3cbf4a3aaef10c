#include "tensor_arg.h"

#include <sstream>

namespace py = pybind11;

namespace wavalign {
namespace {

const char* kCapsuleName = "dltensor";

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

bool map_dtype(const dlpack::DataType& t, DType* out) {
  if (t.lanes != 1) return false;
  if (t.code == dlpack::kFloat && t.bits == 32) { *out = DType::Float32; return true; }
  if (t.code == dlpack::kFloat && t.bits == 16) { *out = DType::Float16; return true; }
  if (t.code == dlpack::kBfloat && t.bits == 16) { *out = DType::BFloat16; return true; }
  if (t.code == dlpack::kInt && t.bits == 32) { *out = DType::Int32; return true; }
  if (t.code == dlpack::kInt && t.bits == 64) { *out = DType::Int64; return true; }
  if (t.code == dlpack::kInt && t.bits == 8) { *out = DType::Int8; return true; }
  return false;
}

std::string describe_dtype(const dlpack::DataType& t) {
  static const char* codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  std::ostringstream os;
  os << (t.code < 7 ? codes[t.code] : "type?") << int(t.bits);
  if (t.lanes != 1) os << "x" << t.lanes;
  return os.str();
}

}  // namespace

std::string TensorArg::device_str() const {
  if (device_type == dlpack::kCUDA) return "cuda:" + std::to_string(device_id);
  return "cpu";
}

int64_t TensorArg::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TensorArg tensor_arg(const py::handle& obj, const char* name) {
  TensorArg arg;
  arg.name = name;
  if (obj.is_none() || !py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) {
    throw py::type_error(std::string(name) + " must be a tensor or array supporting DLPack "
                         "(torch.Tensor, numpy.ndarray), got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const py::tuple device = obj.attr("__dlpack_device__")();
  const int device_type = device[0].cast<int>();
  if (device_type != dlpack::kCPU && device_type != dlpack::kCUDA) {
    throw py::value_error(std::string(name) + " lives on an unsupported device (DLPack type " +
                          std::to_string(device_type) + "); use CPU or CUDA memory");
  }
  try {
    // stream=-1 on CUDA: the producer need not synchronise; we launch on the caller's
    // current stream, which already orders this tensor's producers.
    arg.capsule = device_type == dlpack::kCUDA ? obj.attr("__dlpack__")(py::arg("stream") = -1)
                                               : obj.attr("__dlpack__")();
  } catch (py::error_already_set& e) {
    throw py::value_error(std::string(name) + " could not be exported through DLPack: " +
                          e.what());
  }
  if (!PyCapsule_IsValid(arg.capsule.ptr(), kCapsuleName)) {
    throw py::type_error(std::string(name) + ": __dlpack__ did not return a 'dltensor' capsule");
  }
  auto* managed =
      static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(arg.capsule.ptr(), kCapsuleName));
  const dlpack::Tensor& t = managed->dl_tensor;
  arg.device_type = t.device.device_type;
  arg.device_id = t.device.device_id;
  arg.shape.assign(t.shape, t.shape + t.ndim);
  // An unsupported element type is reported by require_dtype, which knows what was wanted.
  arg.dtype_known = map_dtype(t.dtype, &arg.dtype);
  arg.dtype_text = arg.dtype_known ? dtype_name(arg.dtype) : describe_dtype(t.dtype);
  // An empty tensor is trivially contiguous whatever strides its producer reports.
  if (t.strides != nullptr && arg.numel() > 0) {
    int64_t expected = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (t.shape[d] != 1 && t.strides[d] != expected) {
        throw py::value_error(std::string(name) + " must be contiguous (row-major) but has shape " +
                              shape_str(arg.shape) + " with non-contiguous strides; call "
                              ".contiguous() first");
      }
      expected *= t.shape[d];
    }
  }
  arg.data = static_cast<char*>(t.data) + t.byte_offset;
  return arg;
}

void require_dtype(const TensorArg& arg, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (arg.dtype_known && arg.dtype == d) return;
  std::ostringstream os;
  os << arg.name << " must have dtype ";
  size_t i = 0;
  for (DType d : allowed) os << (i++ ? " or " : "") << dtype_name(d);
  os << ", got " << arg.dtype_text;
  throw py::type_error(os.str());
}

void require_shape(const TensorArg& arg, std::initializer_list<int64_t> shape,
                   const char* shape_doc) {
  bool ok = arg.shape.size() == shape.size();
  size_t d = 0;
  for (int64_t want : shape) {
    if (!ok) break;
    ok = want < 0 || arg.shape[d] == want;
    ++d;
  }
  if (!ok) {
    throw py::value_error(arg.name + " must have shape " + shape_doc + ", got " +
                          shape_str(arg.shape));
  }
}

void require_same_device(const TensorArg& arg, const TensorArg& ref) {
  if (arg.device_type != ref.device_type || arg.device_id != ref.device_id) {
    throw py::value_error(arg.name + " is on " + arg.device_str() + " but " + ref.name +
                          " is on " + ref.device_str() + "; move them to one device");
  }
}

}  // namespace wavalign
