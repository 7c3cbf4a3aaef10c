// Group reward statistics and advantages (WavAlign / GRPO family).
//
// rewards: [n_groups, group_size] float32; NaN means "no reward" (a failed judge call):
// it is excluded from every statistic and its advantage is 0. Per group g with valid
// rewards r (n of them):
//   mean, variance (population: / n, or sample: / (n - 1)), std = sqrt(variance), max, min
//   zero_variance = n >= 1 and max == min  (no preference signal; advantages forced to 0)
//   all_missing   = n == 0                 (statistics NaN, advantages 0)
// Advantages (valid samples of groups that are neither flag):
//   grpo:    (r_i - mean) / (std + eps)
//   dr_grpo:  r_i - mean
//   rloo:     r_i - mean of the other valid rewards   (0 when n == 1)
// Sums run in double, in index order, on every backend.
#pragma once
#include <cstdint>

namespace wavalign {

enum AdvantageMode : int32_t { kAdvantageGrpo = 0, kAdvantageDrGrpo = 1, kAdvantageRloo = 2 };

struct GroupStatsArgs {
  const float* rewards = nullptr;  // [n_groups, group_size]
  int64_t n_groups = 0;
  int64_t group_size = 0;
  int32_t mode = kAdvantageGrpo;
  bool sample_std = false;  // false: population std (the paper's masked trainer)
  float eps = 1e-4f;

  // Outputs, [n_groups] unless noted.
  int32_t* valid_count = nullptr;
  float* mean = nullptr;
  float* std = nullptr;
  float* variance = nullptr;
  float* max = nullptr;
  float* min = nullptr;
  int8_t* zero_variance = nullptr;
  int8_t* all_missing = nullptr;
  float* advantages = nullptr;  // [n_groups, group_size]

  void* cuda_stream = nullptr;
  int cuda_device = -1;  // CUDA: device of the pointers and the stream; -1 = current
};

void group_stats_cpu(const GroupStatsArgs& args);

#if defined(WAVALIGN_WITH_CUDA)
const char* group_stats_cuda(const GroupStatsArgs& args);
#endif

}  // namespace wavalign
