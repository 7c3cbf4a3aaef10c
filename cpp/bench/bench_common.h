// Timing helpers shared by the wavalign_bench_* binaries.
#pragma once
#include <algorithm>
#include <chrono>
#include <vector>

namespace wavalign::bench {

// Seconds per call of fn: one warm-up call, then calls until min_seconds have passed
// (at least 3 calls).
template <typename Fn>
double seconds_per_call(Fn&& fn, double min_seconds) {
  using Clock = std::chrono::steady_clock;
  fn();  // warm-up
  int calls = 0;
  const auto start = Clock::now();
  double elapsed = 0.0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds || calls < 3);
  return elapsed / calls;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace wavalign::bench
