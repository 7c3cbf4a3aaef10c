// Shared by every CUDA launcher (sampling.cu, group_stats.cu, interleave.cu): run the launch
// on the device that owns the tensors, not on whatever device the calling thread has
// current, and put the caller's device back afterwards.
//
// Why: a kernel launch (and stream handle 0, the legacy default stream) refers to the
// thread's *current* device. PyTorch does not make a tensor's device current for us, so a
// tensor on cuda:1 while cuda:0 is current would run cuda:1 pointers on cuda:0. The
// bindings put the DLPack device id of the tensors into Args::cuda_device; -1 means "the
// current device" (C++ callers that manage the device themselves).
#pragma once
#include <cuda_runtime.h>

namespace wavalign {
namespace cuda_detail {

class DeviceGuard {
 public:
  // device < 0: leave the current device alone. error() is the setup error, or nullptr.
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    int current = -1;
    cudaError_t err = cudaGetDevice(&current);
    if (err != cudaSuccess) {
      error_ = cudaGetErrorString(err);
      (void)cudaGetLastError();
      return;
    }
    if (current == device) return;
    err = cudaSetDevice(device);
    if (err != cudaSuccess) {
      error_ = cudaGetErrorString(err);
      (void)cudaGetLastError();
      return;
    }
    previous_ = current;
  }
  ~DeviceGuard() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);  // a destructor cannot report it
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

  const char* error() const { return error_; }

 private:
  int previous_ = -1;  // >= 0: the device to restore
  const char* error_ = nullptr;
};

// The launch status: nullptr on success, else the CUDA error string (the error is cleared).
inline const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda_detail
}  // namespace wavalign
