// Per-group kernels of the group statistics, shared by cpp/src/cpu and cpp/src/cuda.
#pragma once
#include <math.h>

#include <cstdint>

#include "wavalign/group_stats.h"
#include "wavalign/philox.h"  // WAVALIGN_HD

namespace wavalign {

WAVALIGN_HD bool is_nan(float v) { return v != v; }

// One group: sums in double, in index order. Shared verbatim by the CPU loop and the
// CUDA kernel (one thread per group), so both backends compute the same numbers.
WAVALIGN_HD void group_stats_one(const GroupStatsArgs& a, int64_t g) {
  const float* r = a.rewards + g * a.group_size;
  float* adv = a.advantages + g * a.group_size;
  const float nan = nanf("");
  int64_t n = 0;
  double sum = 0.0;
  float hi = -INFINITY;
  float lo = INFINITY;
  for (int64_t i = 0; i < a.group_size; ++i) {
    if (is_nan(r[i])) continue;
    ++n;
    sum += r[i];
    hi = r[i] > hi ? r[i] : hi;
    lo = r[i] < lo ? r[i] : lo;
  }
  a.valid_count[g] = static_cast<int32_t>(n);
  a.all_missing[g] = n == 0;
  a.zero_variance[g] = n > 0 && hi == lo;
  if (n == 0) {
    a.mean[g] = a.std[g] = a.variance[g] = a.max[g] = a.min[g] = nan;
    for (int64_t i = 0; i < a.group_size; ++i) adv[i] = 0.0f;
    return;
  }
  const double mean = sum / static_cast<double>(n);
  double squares = 0.0;
  for (int64_t i = 0; i < a.group_size; ++i)
    if (!is_nan(r[i])) squares += (r[i] - mean) * (r[i] - mean);
  const double divisor = a.sample_std ? static_cast<double>(n - 1) : static_cast<double>(n);
  const double variance = divisor > 0.0 ? squares / divisor : 0.0;
  const double std_dev = sqrt(variance);
  a.mean[g] = static_cast<float>(mean);
  a.variance[g] = static_cast<float>(variance);
  a.std[g] = static_cast<float>(std_dev);
  a.max[g] = hi;
  a.min[g] = lo;
  for (int64_t i = 0; i < a.group_size; ++i) {
    if (is_nan(r[i]) || a.zero_variance[g]) {
      adv[i] = 0.0f;
      continue;
    }
    double value = 0.0;
    if (a.mode == kAdvantageGrpo) {
      value = (r[i] - mean) / (std_dev + static_cast<double>(a.eps));
    } else if (a.mode == kAdvantageDrGrpo) {
      value = r[i] - mean;
    } else {  // rloo
      value = n > 1 ? r[i] - (sum - r[i]) / static_cast<double>(n - 1) : 0.0;
    }
    adv[i] = static_cast<float>(value);
  }
}

}  // namespace wavalign
