// CUDA group statistics (one thread per group). The arithmetic is group_stats_impl.h,
// shared with the CPU build.
#include <cuda_runtime.h>

#include "device_guard.cuh"
#include "wavalign/group_stats.h"
#include "wavalign/group_stats_impl.h"

namespace wavalign {
namespace {

constexpr int kThreads = 256;

__global__ void group_stats_kernel(const GroupStatsArgs a) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g < a.n_groups) group_stats_one(a, g);
}

}  // namespace

const char* group_stats_cuda(const GroupStatsArgs& a) {
  if (a.n_groups == 0) return nullptr;
  const cuda_detail::DeviceGuard device(a.cuda_device);  // the tensors' device, restored after
  if (device.error() != nullptr) return device.error();
  const unsigned blocks = static_cast<unsigned>((a.n_groups + kThreads - 1) / kThreads);
  group_stats_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(a.cuda_stream)>>>(a);
  return cuda_detail::launch_status();
}

}  // namespace wavalign
