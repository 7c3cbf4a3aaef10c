// wavalign_bench_group_stats: the native CPU group statistics and advantages
// (group_stats_cpu) in isolation (no Python), reported as ns per group (row of the
// [B, G] reward matrix) next to a "read floor" measured in the same run on the same
// buffers: a plain pass that reads every reward once and writes every output once.
//
// Rewards: N(0.5, 0.25) with about 3% NaN (failed judge calls), 5% of groups all equal
// (zero variance) and 1% all NaN.
//
// Build:  cmake -S . -B build/bench -DWAVALIGN_BUILD_BENCH=ON -DWAVALIGN_BUILD_PYTHON=OFF
//         cmake --build build/bench -j2 && ./build/bench/wavalign_bench_group_stats [--quick]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "wavalign/group_stats.h"
#include "wavalign/sampling.h"  // get_num_threads
#include "wavalign/thread_pool.h"
#include "bench_common.h"

using namespace wavalign;
using bench::median;
using bench::parse_quick_flag;
using bench::seconds_per_call;

namespace {

constexpr int64_t kGroupsPerBlock = 256;  // group_stats_cpu's min_items_per_thread

const char* mode_name(int32_t m) {
  return m == kAdvantageGrpo ? "grpo" : m == kAdvantageDrGrpo ? "dr_grpo" : "rloo";
}

struct Config {
  int64_t groups, size;
  int32_t mode;
};

struct Result {
  double op_ns, floor_ns, ratio;
};

Result run_config(const Config& c, double min_seconds, int repeats) {
  const int64_t b = c.groups, g = c.size, elements = b * g;
  std::vector<float> rewards(elements);
  std::mt19937 rng(static_cast<uint32_t>(b * 31 + g));
  std::normal_distribution<float> normal(0.5f, 0.25f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float nan = std::nanf("");
  int64_t planted_missing = 0;
  for (int64_t i = 0; i < b; ++i) {
    float* row = rewards.data() + i * g;
    const float u = unit(rng);
    if (u < 0.01f) {
      std::fill(row, row + g, nan);
      ++planted_missing;
    } else if (u < 0.06f) {
      std::fill(row, row + g, 1.0f);
    } else {
      for (int64_t j = 0; j < g; ++j) row[j] = unit(rng) < 0.03f ? nan : normal(rng);
    }
  }

  std::vector<int32_t> valid(b);
  std::vector<float> mean(b), stdev(b), variance(b), hi(b), lo(b), adv(elements);
  std::vector<int8_t> zero_var(b), missing(b);
  GroupStatsArgs a;
  a.rewards = rewards.data();
  a.n_groups = b;
  a.group_size = g;
  a.mode = c.mode;
  a.valid_count = valid.data();
  a.mean = mean.data();
  a.std = stdev.data();
  a.variance = variance.data();
  a.max = hi.data();
  a.min = lo.data();
  a.zero_variance = zero_var.data();
  a.all_missing = missing.data();
  a.advantages = adv.data();

  // Floor: the same reads and writes as plain loops, blocked and threaded as the op.
  const int64_t blocks = (b + kGroupsPerBlock - 1) / kGroupsPerBlock;
  auto floor = [&] {
    parallel_for(blocks, [&](int64_t k, int) {
      const int64_t first = k * kGroupsPerBlock, last = std::min(b, first + kGroupsPerBlock);
      // Raw restrict pointers: int8 stores may alias anything, which would stop vectorizing.
      const float* __restrict in = rewards.data();
      float *__restrict out = adv.data(), *__restrict mn = mean.data(), *__restrict sd = stdev.data(),
            *__restrict var = variance.data(), *__restrict mx = hi.data(), *__restrict mi = lo.data();
      int32_t* __restrict vc = valid.data();
      int8_t *__restrict zv = zero_var.data(), *__restrict am = missing.data();
      for (int64_t i = first; i < last; ++i) {
        for (int64_t j = 0; j < g; ++j) out[i * g + j] = in[i * g + j];
        const float s = in[i * g];
        vc[i] = static_cast<int32_t>(g);
        mn[i] = sd[i] = var[i] = mx[i] = mi[i] = s;
        zv[i] = am[i] = 0;
      }
    });
  };

  std::vector<double> op_s, floor_s, ratios;
  for (int rep = 0; rep < repeats; ++rep) {
    op_s.push_back(seconds_per_call([&] { group_stats_cpu(a); }, min_seconds));
    if (rep == 0) {  // sanity: flags and finite advantages
      int64_t n_missing = 0;
      for (int64_t i = 0; i < b; ++i) {
        n_missing += missing[i];
        for (int64_t j = 0; j < g; ++j) {
          if (!std::isfinite(adv[i * g + j])) {
            std::fprintf(stderr, "group %lld: non-finite advantage\n", (long long)i);
            std::exit(1);
          }
        }
      }
      if (n_missing < planted_missing) {
        std::fprintf(stderr, "all_missing: %lld groups, planted %lld\n", (long long)n_missing,
                     (long long)planted_missing);
        std::exit(1);
      }
    }
    floor_s.push_back(seconds_per_call(floor, min_seconds));
    ratios.push_back(op_s.back() / floor_s.back());
  }
  return {median(op_s) / b * 1e9, median(floor_s) / b * 1e9, median(ratios)};
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = parse_quick_flag(argc, argv, "wavalign_bench_group_stats");
  const double min_seconds = quick ? 0.05 : 0.3;
  const int repeats = quick ? 3 : 5;
  std::vector<Config> configs;
  std::vector<std::pair<int64_t, int64_t>> shapes = {{1024, 8}, {65536, 4}};
  if (!quick) shapes = {{64, 8}, {1024, 4}, {1024, 8}, {1024, 16}, {65536, 4}, {65536, 8}, {65536, 16}};
  for (const auto& [groups, size] : shapes)
    for (int32_t mode : {kAdvantageGrpo, kAdvantageDrGrpo, kAdvantageRloo})
      configs.push_back({groups, size, mode});

  std::printf("# threads=%d repeats=%d (medians); ns per group (row of G rewards)\n", get_num_threads(), repeats);
  std::printf("%6s %3s %8s | %9s %9s | %8s\n", "B", "G", "mode", "op ns", "floor ns", "vs floor");
  double headline_ratio = 0.0, headline_ns = 0.0, headline_floor = 0.0;
  for (const Config& c : configs) {
    const Result res = run_config(c, min_seconds, repeats);
    std::printf("%6lld %3lld %8s | %9.2f %9.2f | %7.1fx\n", (long long)c.groups, (long long)c.size,
                mode_name(c.mode), res.op_ns, res.floor_ns, res.ratio);
    std::fflush(stdout);
    if (c.groups == 1024 && c.size == 8 && c.mode == kAdvantageGrpo) {
      headline_ratio = res.ratio;
      headline_ns = res.op_ns;
      headline_floor = res.floor_ns;
    }
  }
  std::printf("RESULT ratio=%.2f ns_per_group=%.2f floor_ns=%.2f "
              "(ratio = median of op time / read-floor time at B=1024 G=8 grpo)\n",
              headline_ratio, headline_ns, headline_floor);
  return 0;
}
