// CUDA implementation of the batched constrained sampler. The contract and the pipeline
// are in wavalign/sampling.h; cpp/src/cpu/sampling.cpp is the CPU twin whose ids,
// statuses and logprobs this file must reproduce.
//
// Design: one thread block per row (grid-stride over rows). The row is copied as float32
// into its slice of the caller's workspace and processed there in place:
//   validate parameters -> merge ranges (thread 0, shared memory) -> load, raw max and
//   NaN/+inf check -> raw log-sum-exp -> history penalties -> greedy argmax, or:
//   z = v / t and max z -> top-k / top-p thresholds (4-pass radix select over the
//   order-preserving uint32 key of z: counts for top-k, masses for top-p) -> min-p bound
//   -> kept mass -> inverse-CDF draw, chunk by chunk, with a block-wide inclusive scan.
// As on the CPU every filter is a threshold tau on z (kept = allowed ids with z >= tau),
// so nothing sorts the vocabulary.
//
// Every status is decided from a block-wide value (reduction result, __syncthreads_or or
// shared memory written by thread 0), so all threads of a block take the same branch;
// that is what makes the __syncthreads inside the helpers safe.
//
// Rounding: the float operations the CPU performs (penalties, division by temperature,
// the exp polynomial, z - max) are done in the same order with explicit _rn intrinsics,
// which the compiler never contracts into FMAs (the target is also built --fmad=false).
// Double sums are grouped differently (per-thread sums and a block tree instead of
// 8-lane vectors and 1024-element slices), so totals agree with the CPU to double
// rounding, not bit for bit. The top-p histogram adds masses with shared-memory double
// atomics whose order varies from run to run: a top-p boundary whose cumulative mass is
// within a rounding error of p * total may therefore land on the neighbouring value, on
// the CPU or between two GPU runs. Both are accepted. What is and is not identical to the
// CPU, with the measured rate of differing draws, is the "CPU / CUDA agreement" contract
// in wavalign/sampling.h.
//
// Device: the launcher makes args.cuda_device current (device_guard.cuh) and restores the
// caller's device, so tensors on cuda:1 work while cuda:0 is current.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <climits>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "device_guard.cuh"
#include "wavalign/philox.h"
#include "wavalign/sampling.h"

namespace wavalign {
namespace {

constexpr int kThreads = 512;              // per block (one block per row)
constexpr int kWarps = kThreads / 32;
constexpr int kRadixBins = 256;            // 8 bits of the key per radix pass
constexpr int64_t kMaxGrid = 1 << 20;      // rows beyond this are grid-strided

using BlockScan = cub::BlockScan<double, kThreads>;

// ---------------------------------------------------------------- element loads

// bfloat16 / float16 arrive as raw bits; both conversions to float are exact.
struct Bf16Bits { uint16_t bits; };
struct Fp16Bits { uint16_t bits; };

__device__ __forceinline__ float load_as_float(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_as_float(const Bf16Bits* p, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i].bits) << 16);
}
__device__ __forceinline__ float load_as_float(const Fp16Bits* p, int64_t i) {
  return __half2float(__ushort_as_half(p[i].bits));
}

// ---------------------------------------------------------------- float helpers

// Scalar twin of simd::exp_nonpositive (cpp/src/cpu/simd.h): same constants, same
// operation order, every product and sum rounded separately, so masses match the CPU.
__device__ __forceinline__ float exp_nonpositive(float x) {
  const float clamped = x > -87.0f ? x : -87.0f;
  const float n = __fsub_rn(__fadd_rn(__fmul_rn(clamped, 1.44269504088896341f), 12582912.0f),
                            12582912.0f);
  float r = __fsub_rn(clamped, __fmul_rn(n, 0.693359375f));
  r = __fsub_rn(r, __fmul_rn(n, -2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = __fadd_rn(__fmul_rn(p, r), 1.3981999507e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 8.3334519073e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 4.1665795894e-2f);
  p = __fadd_rn(__fmul_rn(p, r), 1.6666665459e-1f);
  p = __fadd_rn(__fmul_rn(p, r), 5.0000001201e-1f);
  const float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
  const int32_t exponent_bits = (static_cast<int32_t>(n) + 127) << 23;
  return x < -87.0f ? 0.0f : __fmul_rn(y, __int_as_float(exponent_bits));
}

// Order-preserving key: a < b as floats (no NaN) <=> key(a) < key(b) as unsigned.
// -0 sorts just below +0; harmless, since thresholds are compared as floats (z >= tau).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t bits = __float_as_uint(f);
  return bits ^ ((bits & 0x80000000u) ? 0xFFFFFFFFu : 0x80000000u);
}
__device__ __forceinline__ float key_to_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

// Same predicate as params_valid in the CPU sampler.
__device__ __forceinline__ bool params_valid(float t, int64_t k, float p, float min_p, float rep,
                                             float pres, float freq) {
  return isfinite(t) && t >= 0.0f && k >= 0 && isfinite(p) && p > 0.0f && p <= 1.0f &&
         isfinite(min_p) && min_p >= 0.0f && min_p <= 1.0f && isfinite(rep) && rep > 0.0f &&
         isfinite(pres) && isfinite(freq);
}

// ---------------------------------------------------------------- per-block shared state

struct RowShared {
  int64_t lo[kMaxAllowedRanges];  // merged allowed ranges, ascending, disjoint
  int64_t hi[kMaxAllowedRanges];
  int n_ranges;                   // merged count; -1 = a malformed range
  unsigned long long bin_count[kRadixBins];
  double bin_mass[kRadixBins];
  uint32_t radix_prefix;          // radix-select state broadcast by thread 0
  double radix_above;
  double radix_target;
  int found_tid;                  // draw: first thread of the chunk past the target
  long long last_id;              // draw: last kept id with nonzero mass seen so far
  float red_f[kWarps];            // block-reduction scratch, one slot per warp
  double red_d[kWarps];
  long long red_ll[kWarps];
};

// ---------------------------------------------------------------- block reductions

struct MaxF {  // `b > a ? b : a` like the CPU's max loops: NaN never wins over a number
  __device__ float operator()(float a, float b) const { return b > a ? b : a; }
};
struct SumD {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MinLL {
  __device__ long long operator()(long long a, long long b) const { return b < a ? b : a; }
};

// Reduces `v` over the block; every thread gets the same result (it reduces the per-warp
// partials in the same order), so the result can steer block-wide branches. Contains
// barriers: call from every thread. The xor butterfly leaves each lane identical values
// because + and max are commutative in IEEE arithmetic.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  __syncthreads();  // a previous call's readers of `scratch` are done
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  T result = scratch[0];
  for (int w = 1; w < kWarps; ++w) result = op(result, scratch[w]);
  return result;
}

// ---------------------------------------------------------------- allowed ranges

// Thread 0 only. Validates, sorts by lo and merges the row's ranges into lo/hi exactly
// like merge_ranges on the CPU. Returns the merged count, or -1 on a malformed range.
__device__ int merge_ranges(const int64_t* raw, int64_t n_raw, int64_t vocab, int64_t* lo,
                            int64_t* hi) {
  if (raw == nullptr || n_raw == 0) {
    lo[0] = 0;
    hi[0] = vocab;
    return 1;
  }
  if (n_raw > kMaxAllowedRanges) return -1;  // the binding rejects this; never overflow
  int n = 0;
  for (int64_t r = 0; r < n_raw; ++r) {
    const int64_t l = raw[2 * r], h = raw[2 * r + 1];
    if (l < 0 || h > vocab || l > h) return -1;
    if (l == h) continue;  // padding
    int j = n++;           // insertion sort by lo (at most 64 entries)
    while (j > 0 && lo[j - 1] > l) {
      lo[j] = lo[j - 1];
      hi[j] = hi[j - 1];
      --j;
    }
    lo[j] = l;
    hi[j] = h;
  }
  int m = 0;  // merge in place: overlapping or touching ranges become one
  for (int i = 0; i < n; ++i) {
    if (m > 0 && lo[i] <= hi[m - 1]) {
      hi[m - 1] = hi[i] > hi[m - 1] ? hi[i] : hi[m - 1];
    } else {
      lo[m] = lo[i];
      hi[m] = hi[i];
      ++m;
    }
  }
  return m;
}

// Calls f(id) for the allowed ids this thread owns. Each thread sees its ids in ascending
// order (ranges are sorted), which the greedy tie rule relies on.
template <typename F>
__device__ __forceinline__ void for_each_allowed(const RowShared& sh, F&& f) {
  for (int r = 0; r < sh.n_ranges; ++r)
    for (int64_t i = sh.lo[r] + threadIdx.x; i < sh.hi[r]; i += kThreads) f(i);
}

// ---------------------------------------------------------------- radix select

// Threshold by 4-pass radix select (most significant byte first) over the keys of the
// allowed z, walking bins from the largest key down:
//   kByMass == false: the `target`-th largest z (1-based); ties are then kept by z >= tau.
//   kByMass == true:  over allowed ids with z >= floor_z, the z value v at which the
//     cumulative mass exp(z - max_z) in descending z order first reaches
//     target * (total mass): mass(z > v) < target * total <= mass(z >= v).
// Each pass histograms only the elements whose key matches the prefix chosen so far and
// carries the count/mass of everything above that prefix ("above").
template <bool kByMass>
__device__ float radix_threshold(const float* z, RowShared& sh, float floor_z, float max_z,
                                 double target) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kRadixBins; b += kThreads) {
      sh.bin_count[b] = 0;
      if (kByMass) sh.bin_mass[b] = 0.0;
    }
    __syncthreads();
    for_each_allowed(sh, [&](int64_t i) {
      const float zi = z[i];
      if (kByMass && !(zi >= floor_z)) return;
      const uint32_t key = order_key(zi);
      if ((key & mask) != prefix) return;
      const int bin = static_cast<int>((key >> shift) & 0xFFu);
      atomicAdd(&sh.bin_count[bin], 1ull);
      if (kByMass) atomicAdd(&sh.bin_mass[bin], static_cast<double>(exp_nonpositive(zi - max_z)));
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      if (shift == 24) {
        sh.radix_above = 0.0;
        if (kByMass) {
          // Total summed in the walk's own order, so the first pass reaches it exactly.
          double total = 0.0;
          for (int b = kRadixBins - 1; b >= 0; --b) total += sh.bin_mass[b];
          sh.radix_target = target * total;
        } else {
          sh.radix_target = target;
        }
      }
      double above = sh.radix_above, chosen_above = above;
      int chosen = -1;
      for (int b = kRadixBins - 1; b >= 0; --b) {
        const unsigned long long count = sh.bin_count[b];
        if (count == 0) continue;
        const double q = kByMass ? sh.bin_mass[b] : static_cast<double>(count);
        chosen = b;
        chosen_above = above;
        if (above + q >= sh.radix_target) break;
        above += q;
      }
      // Not reached (sub-bin masses summed in another order than their parent bin can fall
      // short by a rounding error): `chosen` is the lowest non-empty bin, i.e. keep the
      // whole parent bin, as the CPU keeps the whole bucket in that case.
      if (chosen < 0) chosen = 0;  // no element matched: cannot happen, stay in bounds
      sh.radix_prefix = prefix | (static_cast<uint32_t>(chosen) << shift);
      sh.radix_above = chosen_above;
    }
    __syncthreads();
    prefix = sh.radix_prefix;
    mask |= 0xFFu << shift;
  }
  return key_to_float(prefix);
}

// ---------------------------------------------------------------- draw

// Inverse-CDF draw over the kept ids (z >= tau, z > -inf, nonzero mass) in ascending id
// order: the first id whose inclusive cumulative mass exceeds `target`. Scans one chunk
// of kThreads ids at a time, carrying the running sum, and stops at the chunk where the
// crossing happens. If rounding leaves the target uncrossed, returns the last kept id
// with nonzero mass (-1 if there is none).
__device__ int64_t draw_id(const float* z, RowShared& sh, BlockScan::TempStorage& scan_storage,
                           float tau, float max_z, double target) {
  if (threadIdx.x == 0) {
    sh.found_tid = INT_MAX;
    sh.last_id = -1;
  }
  __syncthreads();
  double carry = 0.0;  // identical in every thread: sum of the chunk aggregates so far
  for (int r = 0; r < sh.n_ranges; ++r) {
    const int64_t hi = sh.hi[r];
    for (int64_t start = sh.lo[r]; start < hi; start += kThreads) {
      const int64_t i = start + threadIdx.x;
      double mass = 0.0;
      if (i < hi) {
        const float zi = z[i];
        if (zi >= tau && zi != -CUDART_INF_F) {
          const float e = exp_nonpositive(zi - max_z);
          if (e > 0.0f) mass = e;
        }
      }
      double inclusive, chunk_total;
      BlockScan(scan_storage).InclusiveSum(mass, inclusive, chunk_total);
      if (mass > 0.0) {
        atomicMax(&sh.last_id, static_cast<long long>(i));
        if (carry + inclusive > target) atomicMin(&sh.found_tid, static_cast<int>(threadIdx.x));
      }
      __syncthreads();  // also guards scan_storage before the next chunk reuses it
      if (sh.found_tid != INT_MAX) return start + sh.found_tid;
      carry += chunk_total;
    }
  }
  return sh.last_id;
}

// ---------------------------------------------------------------- one row

template <typename T>
__device__ void sample_row(const SampleTokensArgs& a, int64_t row, RowShared& sh,
                           BlockScan::TempStorage& scan_storage) {
  const int64_t vocab = a.vocab;
  const int tid = threadIdx.x;

  auto finish = [&](int32_t status, int64_t id, float logprob, float raw_logprob) {
    if (tid != 0) return;
    a.out_status[row] = status;
    const bool ok = status == kSampleOk;
    a.out_ids[row] = ok ? id : -1;
    a.out_logprobs[row] = ok ? logprob : CUDART_NAN_F;
    a.out_raw_logprobs[row] = ok ? raw_logprob : CUDART_NAN_F;
  };
  auto fail = [&](int32_t status) { finish(status, -1, 0.0f, 0.0f); };

  // 1. parameters (every thread reads the same values, so the branch is uniform)
  const float temperature = a.temperature[row];
  const int64_t top_k = a.top_k[row];
  const float top_p_f = a.top_p[row];
  const float min_p_f = a.min_p[row];
  const float repetition = a.repetition_penalty[row];
  const float presence = a.presence_penalty[row];
  const float frequency = a.frequency_penalty[row];
  if (!params_valid(temperature, top_k, top_p_f, min_p_f, repetition, presence, frequency)) {
    fail(kSampleBadParameter);
    return;
  }

  // 2. allowed ranges
  if (tid == 0) {
    sh.n_ranges = merge_ranges(a.allowed_ranges ? a.allowed_ranges + row * a.n_ranges * 2 : nullptr,
                               a.n_ranges, vocab, sh.lo, sh.hi);
  }
  __syncthreads();
  if (sh.n_ranges < 0) { fail(kSampleBadRange); return; }
  if (sh.n_ranges == 0) { fail(kSampleEmptyAllowedSet); return; }

  // 3. load as float into the workspace; raw max, NaN/+inf check, raw log-sum-exp
  const T* x = static_cast<const T*>(a.logits) + row * vocab;
  float* z = a.workspace + row * vocab;
  float raw_max = -CUDART_INF_F;
  bool bad = false;
  for (int64_t i = tid; i < vocab; i += kThreads) {
    const float v = load_as_float(x, i);
    z[i] = v;
    bad |= (v != v) || (v == CUDART_INF_F);
    raw_max = v > raw_max ? v : raw_max;
  }
  if (__syncthreads_or(bad)) { fail(kSampleNonFiniteLogit); return; }
  raw_max = block_reduce(raw_max, MaxF(), sh.red_f);
  if (raw_max == -CUDART_INF_F) { fail(kSampleNoFiniteLogit); return; }
  // Per-thread sums run over ~vocab/512 terms (the CPU's float lanes over 128), so they
  // are kept in double; each thread re-reads only the elements it wrote itself.
  double raw_part = 0.0;
  for (int64_t i = tid; i < vocab; i += kThreads) raw_part += exp_nonpositive(z[i] - raw_max);
  const double raw_lse = static_cast<double>(raw_max) + log(block_reduce(raw_part, SumD(), sh.red_d));

  // 4. penalties: validate every history id first, even when no penalty is active
  const int64_t history_len = a.history ? a.history_len : 0;
  const int64_t* history = a.history ? a.history + row * a.history_len : nullptr;
  bool bad_id = false;
  for (int64_t j = tid; j < history_len; j += kThreads) {
    const int64_t id = history[j];
    bad_id |= id != -1 && (id < 0 || id >= vocab);
  }
  if (__syncthreads_or(bad_id)) { fail(kSampleHistoryIdOutOfRange); return; }  // barrier: z loaded
  if (!(repetition == 1.0f && presence == 0.0f && frequency == 0.0f)) {
    // Each distinct id is penalised once, by the thread holding its first occurrence, so
    // no two threads touch the same z. O(H^2 / threads) comparisons, fine for histories
    // of a few thousand tokens.
    bool overflow = false;  // a penalised allowed logit is +inf or NaN
    for (int64_t j = tid; j < history_len; j += kThreads) {
      const int64_t id = history[j];
      if (id == -1) continue;
      bool first = true;
      for (int64_t i = 0; i < j && first; ++i) first = history[i] != id;
      if (!first) continue;
      int64_t count = 1;
      for (int64_t i = j + 1; i < history_len; ++i) count += history[i] == id;
      float v = z[id];
      if (repetition != 1.0f) v = v < 0.0f ? __fmul_rn(v, repetition) : __fdiv_rn(v, repetition);
      v = __fsub_rn(v, __fmul_rn(frequency, static_cast<float>(count)));
      v = __fsub_rn(v, presence);
      z[id] = v;
      // Like the CPU, only allowed ids count (the others are never read).
      bool allowed = false;
      for (int r = 0; r < sh.n_ranges; ++r) allowed |= id >= sh.lo[r] && id < sh.hi[r];
      overflow |= allowed && sample_value_overflows(v);
    }
    if (__syncthreads_or(overflow)) { fail(kSampleParameterOverflow); return; }  // barrier: z written
  }

  // Rare path, block-uniform: every processed logit of the allowed ids is -inf. Were any
  // of the caller's logits there finite (the parameters overflowed) or not?
  auto any_allowed_finite = [&]() {
    bool finite = false;
    for_each_allowed(sh, [&](int64_t i) { finite |= load_as_float(x, i) > -CUDART_INF_F; });
    return __syncthreads_or(finite) != 0;
  };

  // 5. greedy: lowest id among the maxima of the allowed ids (each thread's own scan is
  // ascending, so strict > keeps its lowest id; the block then takes the lowest of those)
  if (temperature == 0.0f) {
    float best = -CUDART_INF_F;
    long long best_id = LLONG_MAX;
    for_each_allowed(sh, [&](int64_t i) {
      const float v = z[i];
      if (v > best) { best = v; best_id = i; }
    });
    const float block_best = block_reduce(best, MaxF(), sh.red_f);
    if (block_best == -CUDART_INF_F) { fail(sample_max_status(block_best, any_allowed_finite())); return; }
    const long long id =
        block_reduce(best == block_best ? best_id : LLONG_MAX, MinLL(), sh.red_ll);
    finish(kSampleOk, id, 0.0f,
           static_cast<float>(static_cast<double>(load_as_float(x, id)) - raw_lse));
    return;
  }

  // 6. z = v / t in place (true division, as PyTorch's logits / t), its max, n_allowed
  float max_z = -CUDART_INF_F;
  for_each_allowed(sh, [&](int64_t i) {
    const float v = __fdiv_rn(z[i], temperature);
    z[i] = v;
    max_z = v > max_z ? v : max_z;
  });
  max_z = block_reduce(max_z, MaxF(), sh.red_f);  // its barriers also publish the z writes
  // z = +inf (a finite logit over a tiny temperature), or every z -inf: nothing to draw.
  if (!(max_z > -CUDART_INF_F && max_z < CUDART_INF_F)) {
    fail(sample_max_status(max_z, max_z == -CUDART_INF_F && any_allowed_finite()));
    return;
  }
  int64_t n_allowed = 0;
  for (int r = 0; r < sh.n_ranges; ++r) n_allowed += sh.hi[r] - sh.lo[r];

  // 7. thresholds; kept set = allowed ids with z >= tau
  const double top_p = top_p_f;
  const double min_p = min_p_f;
  float tau = -CUDART_INF_F;
  float floor_z = -CUDART_INF_F;  // top-p works on the top-k survivors
  if (top_k > 0 && top_k < n_allowed) {
    floor_z = radix_threshold<false>(z, sh, -CUDART_INF_F, max_z, static_cast<double>(top_k));
    tau = floor_z;
  }
  if (top_p < 1.0) {
    const float tau_p = radix_threshold<true>(z, sh, floor_z, max_z, top_p);
    tau = tau < tau_p ? tau_p : tau;
  }
  if (min_p > 0.0) {
    // Smallest float f with (double)f >= max_z + log(min_p): "exp(z - max) >= min_p".
    const double bound = static_cast<double>(max_z) + log(min_p);
    float f = static_cast<float>(bound);
    if (static_cast<double>(f) < bound) f = nextafterf(f, CUDART_INF_F);
    tau = tau < f ? f : tau;
  }

  // 8. total kept mass
  double part = 0.0;
  for_each_allowed(sh, [&](int64_t i) {
    const float zi = z[i];
    if (zi >= tau) part += static_cast<double>(exp_nonpositive(zi - max_z));
  });
  const double total = block_reduce(part, SumD(), sh.red_d);

  // 9. draw with this row's Philox uniform
  const double u = philox_uniform(a.seed, static_cast<uint64_t>(a.offsets[row]));
  const int64_t id = draw_id(z, sh, scan_storage, tau, max_z, u * total);
  if (id < 0) { fail(kSampleAllowedAllMasked); return; }

  // 10. processed logprob, and raw logprob from the caller's original logits
  const double logprob = (static_cast<double>(z[id]) - max_z) - log(total);
  finish(kSampleOk, id, static_cast<float>(logprob),
         static_cast<float>(static_cast<double>(load_as_float(x, id)) - raw_lse));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(const SampleTokensArgs a) {
  __shared__ RowShared sh;
  __shared__ BlockScan::TempStorage scan_storage;
  for (int64_t row = blockIdx.x; row < a.n_rows; row += gridDim.x) {
    __syncthreads();  // the previous row's readers of the shared state are done
    sample_row<T>(a, row, sh, scan_storage);
  }
}

}  // namespace

const char* sample_tokens_cuda(const SampleTokensArgs& args) {
  if (args.n_rows == 0) return nullptr;
  if (args.workspace == nullptr) return "sample_tokens_cuda: workspace is null";
  const cuda_detail::DeviceGuard device(args.cuda_device);  // the tensors' device, restored after
  if (device.error() != nullptr) return device.error();
  const cudaStream_t stream = static_cast<cudaStream_t>(args.cuda_stream);
  const unsigned grid = static_cast<unsigned>(args.n_rows < kMaxGrid ? args.n_rows : kMaxGrid);
  switch (args.logits_dtype) {
    case DType::Float32: sample_kernel<float><<<grid, kThreads, 0, stream>>>(args); break;
    case DType::BFloat16: sample_kernel<Bf16Bits><<<grid, kThreads, 0, stream>>>(args); break;
    case DType::Float16: sample_kernel<Fp16Bits><<<grid, kThreads, 0, stream>>>(args); break;
    default: return "sample_tokens_cuda: unsupported logits dtype";
  }
  return cuda_detail::launch_status();
}

bool cuda_device_available(int* device_count) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear our own error so later CUDA calls don't report it
    count = 0;
  }
  if (device_count != nullptr) *device_count = count;
  return err == cudaSuccess;
}

}  // namespace wavalign
