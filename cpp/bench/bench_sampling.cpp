// wavalign_bench_sampling: the native CPU sampler in isolation (no Python), reported as
// ns per row and effective GB/s of logits consumed, next to three floors measured in the
// same run on the same buffer: a plain read (sum of all logits), memcpy, and one exact
// log-sum-exp per row (an exp per logit, with the sampler's own exp, sixteen at a time).
// The last is what any sampler returning raw log-probs must compute once, and an exact
// top-p over all ids must compute twice (raw and processed logits); its ratio shows how
// far a configuration is from that compute, where the read ratio shows memory.
//
// Build:  cmake -S . -B build/bench -DWAVALIGN_BUILD_BENCH=ON -DWAVALIGN_BUILD_PYTHON=OFF
//         cmake --build build/bench -j2 && ./build/bench/wavalign_bench_sampling [--quick]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../src/cpu/simd.h"
#include "wavalign/sampling.h"
#include "wavalign/thread_pool.h"
#include "bench_common.h"

using namespace wavalign;
using bench::median;
using bench::parse_quick_flag;
using bench::seconds_per_call;

namespace {

// log(sum_i exp(row_i)), one 1024-logit slice at a time while it is in L1: the slice's
// max, then its exps (simd::exp_nonpositive on sixteen lanes, as the sampler's raw
// statistics use it), merged into the row's sum with the running-max rescale.
WAVALIGN_SIMD_CLONES_512 double row_logsumexp(const float* row, int64_t n) {
  constexpr int64_t kSlice = 1024;
  float row_max = -simd::kInf;
  double row_sum = 0.0;
  for (int64_t start = 0; start < n; start += kSlice) {
    const float* x = row + start;
    const int64_t len = std::min(kSlice, n - start);
    simd::f8 best_v = simd::splat(-simd::kInf);
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) best_v = simd::vmax(simd::load(x + i), best_v);
    float best = simd::hmax(best_v);
    for (; i < len; ++i) best = x[i] > best ? x[i] : best;
    if (best == -simd::kInf) continue;  // an all -inf slice adds nothing (and -inf - -inf is NaN)
    const simd::f16 shift = simd::splat16(best);
    simd::f16 acc = {};
    i = 0;
    // The next slice is prefetched while these exps run, as the sampler does, so the read
    // of memory overlaps the compute.
    for (; i + 16 <= len; i += 16) {
      if (start + kSlice + i < n) __builtin_prefetch(x + kSlice + i);
      acc += simd::exp_nonpositive(simd::load16(x + i) - shift);
    }
    double sum = 0.0;
    for (int l = 0; l < 16; ++l) sum += acc[l];
    for (; i < len; ++i) sum += simd::exp_nonpositive(x[i] - best);
    if (best > row_max) {
      row_sum = row_sum * std::exp(static_cast<double>(row_max) - best) + sum;
      row_max = best;
    } else {
      row_sum += sum * std::exp(static_cast<double>(best) - row_max);
    }
  }
  return row_max + std::log(row_sum);
}

struct Config {
  int64_t rows, vocab;
  const char* mode;
  bool masked;
};

double run_config(const Config& c, const std::vector<float>& logits, double min_seconds) {
  const int64_t n = c.rows;
  std::vector<float> temperature(n, 0.7f), top_p(n, 1.0f), min_p(n, 0.0f), rep(n, 1.0f),
      presence(n, 0.0f), frequency(n, 0.0f);
  std::vector<int64_t> top_k(n, 0), offsets(n), ranges(2 * n), ids(n);
  std::vector<float> logprobs(n), raw_logprobs(n);
  std::vector<int32_t> status(n);
  for (int64_t r = 0; r < n; ++r) {
    offsets[r] = r;
    ranges[2 * r] = c.vocab * 9 / 10;  // speech: the last ~10% of the vocabulary
    ranges[2 * r + 1] = c.vocab;
  }
  const std::string mode = c.mode;
  if (mode == "top_p0.9") std::fill(top_p.begin(), top_p.end(), 0.9f);
  if (mode == "top_k50") std::fill(top_k.begin(), top_k.end(), 50);
  if (mode == "min_p0.05") std::fill(min_p.begin(), min_p.end(), 0.05f);

  SampleTokensArgs a;
  a.logits = logits.data();
  a.logits_dtype = DType::Float32;
  a.n_rows = n;
  a.vocab = c.vocab;
  a.temperature = temperature.data();
  a.top_k = top_k.data();
  a.top_p = top_p.data();
  a.min_p = min_p.data();
  a.repetition_penalty = rep.data();
  a.presence_penalty = presence.data();
  a.frequency_penalty = frequency.data();
  a.allowed_ranges = c.masked ? ranges.data() : nullptr;
  a.n_ranges = c.masked ? 1 : 0;
  a.seed = 1;
  a.offsets = offsets.data();
  a.out_ids = ids.data();
  a.out_logprobs = logprobs.data();
  a.out_raw_logprobs = raw_logprobs.data();
  a.out_status = status.data();
  const double seconds = seconds_per_call([&] { sample_tokens_cpu(a); }, min_seconds);
  for (int64_t r = 0; r < n; ++r) {
    if (status[r] != kSampleOk) {
      std::fprintf(stderr, "row %lld failed with status %d\n", (long long)r, status[r]);
      std::exit(1);
    }
  }
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = parse_quick_flag(argc, argv, "wavalign_bench_sampling");
  const double min_seconds = quick ? 0.1 : 0.3;  // per measurement, per repeat
  const int repeats = quick ? 3 : 5;
  std::vector<Config> configs;
  if (quick) {
    configs = {{64, 168072, "top_p0.9", true}, {64, 168072, "plain", false},
               {64, 168072, "top_p0.9", false}};
  } else {
    for (int64_t vocab : {32000, 168072})
      for (int64_t rows : {8, 64, 256})
        for (const char* mode : {"plain", "top_p0.9", "top_k50", "min_p0.05"})
          for (bool masked : {false, true}) configs.push_back({rows, vocab, mode, masked});
  }
  std::printf("# threads=%d repeats=%d (medians)\n", get_num_threads(), repeats);
  std::printf("%5s %7s %10s %5s | %10s %9s | %12s %12s %10s | %10s %10s\n", "N", "V", "mode",
              "mask", "ns/row", "GB/s", "read GB/s", "memcpy GB/s", "lse ns/row", "vs read",
              "vs lse");
  double headline_ratio = 0.0, headline_ns = 0.0, headline_gbps = 0.0, headline_read = 0.0,
         headline_memcpy = 0.0, unmasked_top_p_ratio = 0.0, unmasked_top_p_ns = 0.0,
         headline_lse_ratio = 0.0, unmasked_top_p_lse_ratio = 0.0;
  for (const Config& c : configs) {
    const int64_t elements = c.rows * c.vocab;
    std::vector<float> logits(elements), copy(elements);
    std::mt19937 rng(static_cast<uint32_t>(c.rows + c.vocab));
    std::normal_distribution<float> normal(0.0f, 3.0f);
    for (float& v : logits) v = normal(rng);
    const double bytes = static_cast<double>(elements) * sizeof(float);

    // The sampler and the floors are timed back to back in each repeat: this shared VM's
    // speed drifts by up to 2x between runs, so a ratio is the median of the per-repeat
    // ratios and a time the median of the repeats.
    std::vector<double> partial(c.rows);
    volatile double sink = 0.0;
    std::vector<double> samples, reads, memcpys, lses, read_ratios, lse_ratios;
    for (int repeat = 0; repeat < repeats; ++repeat) {
      const double sample_s = run_config(c, logits, min_seconds);
      // Floor 1: read every logit once, on the same threads the sampler uses.
      const double read_s = seconds_per_call([&] {
        parallel_for(c.rows, [&](int64_t r, int) {
          const float* row = logits.data() + r * c.vocab;
          float acc[8] = {};
          for (int64_t i = 0; i + 8 <= c.vocab; i += 8)
            for (int l = 0; l < 8; ++l) acc[l] += row[i + l];
          partial[r] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
        });
        sink = sink + partial[0];
      }, min_seconds);
      // Floor 2: memcpy of the whole buffer (reads and writes it once).
      const double memcpy_s = seconds_per_call([&] {
        std::memcpy(copy.data(), logits.data(), static_cast<size_t>(bytes));
      }, min_seconds);
      // Floor 3: one exact log-sum-exp per row, on the same threads.
      const double lse_s = seconds_per_call([&] {
        parallel_for(c.rows, [&](int64_t r, int) {
          partial[r] = row_logsumexp(logits.data() + r * c.vocab, c.vocab);
        });
        sink = sink + partial[0];
      }, min_seconds);
      samples.push_back(sample_s);
      reads.push_back(read_s);
      memcpys.push_back(memcpy_s);
      lses.push_back(lse_s);
      read_ratios.push_back(sample_s / read_s);
      lse_ratios.push_back(sample_s / lse_s);
    }
    // The floor must compute the real thing: row 0's log-sum-exp against a double loop.
    {
      const float* row = logits.data();
      double row_max = -INFINITY, sum = 0.0;
      for (int64_t i = 0; i < c.vocab; ++i) row_max = std::max(row_max, static_cast<double>(row[i]));
      for (int64_t i = 0; i < c.vocab; ++i) sum += std::exp(row[i] - row_max);
      const double expected = row_max + std::log(sum), got = row_logsumexp(row, c.vocab);
      if (!(std::fabs(got - expected) <= 1e-4 * std::max(1.0, std::fabs(expected)))) {
        std::fprintf(stderr, "log-sum-exp floor is wrong: %.9g, expected %.9g\n", got, expected);
        std::exit(1);
      }
    }
    const double sample_s = median(samples), read_s = median(reads),
                 memcpy_s = median(memcpys), lse_s = median(lses);
    const double read_ratio = median(read_ratios), lse_ratio = median(lse_ratios);

    const double ns_per_row = sample_s / c.rows * 1e9;
    const double gbps = bytes / sample_s / 1e9;
    const double read_gbps = bytes / read_s / 1e9;
    const double memcpy_gbps = bytes / memcpy_s / 1e9;  // bytes copied per second
    std::printf("%5lld %7lld %10s %5s | %10.0f %9.2f | %12.2f %12.2f %10.0f | %9.1fx %9.1fx\n",
                (long long)c.rows, (long long)c.vocab, c.mode, c.masked ? "yes" : "no", ns_per_row,
                gbps, read_gbps, memcpy_gbps, lse_s / c.rows * 1e9, read_ratio, lse_ratio);
    if (c.rows == 64 && c.vocab == 168072 && std::string(c.mode) == "top_p0.9" && c.masked) {
      headline_ratio = read_ratio;
      headline_ns = ns_per_row;
      headline_gbps = gbps;
      headline_read = read_gbps;
      headline_memcpy = memcpy_gbps;
      headline_lse_ratio = lse_ratio;
    }
    if (c.rows == 64 && c.vocab == 168072 && std::string(c.mode) == "top_p0.9" && !c.masked) {
      unmasked_top_p_ratio = read_ratio;
      unmasked_top_p_ns = ns_per_row;
      unmasked_top_p_lse_ratio = lse_ratio;
    }
  }
  std::printf("RESULT ns_per_row=%.0f GBps=%.2f read_GBps=%.2f memcpy_GBps=%.2f ratio=%.2f "
              "unmasked_top_p_ns_per_row=%.0f unmasked_top_p_ratio=%.2f lse_ratio=%.2f "
              "unmasked_top_p_lse_ratio=%.2f "
              "(ratio = sampler time / logits-read floor at N=64 V=168072 top-p 0.9, with and "
              "without the speech mask; lse_ratio = the same over one exact log-sum-exp per row, "
              "at least 1 with the mask and 2 without)\n",
              headline_ns, headline_gbps, headline_read, headline_memcpy, headline_ratio,
              unmasked_top_p_ns, unmasked_top_p_ratio, headline_lse_ratio,
              unmasked_top_p_lse_ratio);
  return 0;
}
