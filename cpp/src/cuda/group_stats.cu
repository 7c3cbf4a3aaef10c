// CUDA group statistics (one thread per group) and advantage broadcast (one thread per
// token). The arithmetic is group_stats_impl.h, shared with the CPU build.
#include <cuda_runtime.h>

#include "wavalign/group_stats.h"
#include "wavalign/group_stats_impl.h"

namespace wavalign {
namespace {

constexpr int kThreads = 256;

__global__ void group_stats_kernel(const GroupStatsArgs a) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g < a.n_groups) group_stats_one(a, g);
}

__global__ void broadcast_kernel(const BroadcastAdvantagesArgs a) {
  const int64_t total = a.n_rows * a.n_tokens;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    broadcast_one_row(a, i / a.n_tokens, i % a.n_tokens);
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* group_stats_cuda(const GroupStatsArgs& a) {
  if (a.n_groups == 0) return nullptr;
  const unsigned blocks = static_cast<unsigned>((a.n_groups + kThreads - 1) / kThreads);
  group_stats_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(a.cuda_stream)>>>(a);
  return launch_status();
}

const char* broadcast_advantages_cuda(const BroadcastAdvantagesArgs& a) {
  const int64_t total = a.n_rows * a.n_tokens;
  if (total == 0) return nullptr;
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(wanted < 65535 ? wanted : 65535);
  broadcast_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(a.cuda_stream)>>>(a);
  return launch_status();
}

}  // namespace wavalign
