// CUDA interleave state machine: one thread per row; the transition is interleave_impl.h,
// shared with the CPU build.
#include <cuda_runtime.h>

#include "device_guard.cuh"
#include "wavalign/interleave.h"
#include "wavalign/interleave_impl.h"

namespace wavalign {
namespace {

__global__ void interleave_kernel(const InterleaveArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row < a.n_rows) interleave_step_one(a, row);
}

}  // namespace

const char* interleave_advance_cuda(const InterleaveArgs& a) {
  if (a.n_rows == 0) return nullptr;
  const cuda_detail::DeviceGuard device(a.cuda_device);  // the tensors' device, restored after
  if (device.error() != nullptr) return device.error();
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((a.n_rows + kThreads - 1) / kThreads);
  interleave_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(a.cuda_stream)>>>(a);
  return cuda_detail::launch_status();
}

}  // namespace wavalign
