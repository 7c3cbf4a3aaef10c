// Timing helpers shared by the wavalign_bench_* binaries.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// The benchmarks' one option: returns whether --quick was given; --help prints the usage
// and exits 0; any other argument is an error (exit 2), so a typo is not run as a full run.
inline bool parse_quick_flag(int argc, char** argv, const char* program) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("usage: %s [--quick]\n", program);
      std::exit(0);
    } else {
      std::fprintf(stderr, "%s: unknown argument '%s' (usage: %s [--quick])\n", program, argv[i], program);
      std::exit(2);
    }
  }
  return quick;
}

}  // namespace wavalign::bench
