// CPU implementation of the batched constrained sampler (see wavalign/sampling.h for the
// pipeline). Rows are independent and spread over the thread pool; each row works in a
// thread-local float copy of its logits, so the caller's tensor is only read.
#include "wavalign/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "wavalign/philox.h"
#include "wavalign/thread_pool.h"

namespace wavalign {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Int8: return "int8";
  }
  return "unknown";
}

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBlock = 1024;    // ids per block (slice): raw statistics, histogram chunks, the draw

// Histogram used to find top-k / top-p thresholds without sorting: bucket by distance
// below the max, d = m - z, in kBucketsPerNat-wide slices up to kHistNats; everything
// further down (including -inf) shares the last bucket.
constexpr int kHistNats = 32;
constexpr int kBucketsPerNat = 128;
constexpr int kBuckets = kHistNats * kBucketsPerNat;  // + 1 tail bucket

using simd::exp_nonpositive;
using simd::f8;
using simd::kWidth;

struct Range {
  int64_t lo, hi;
};

// kBlock slices of a range [lo, hi): the unit of RowScratch::block_max and block_sums,
// numbered over a row's ranges in order, each range's from its lo.
inline int64_t slice_count(const Range& r) { return (r.hi - r.lo + kBlock - 1) / kBlock; }

struct Bf16 { uint16_t bits; };
struct Fp16 { uint16_t bits; };
inline float load_as_float(const float* p, int64_t i) { return p[i]; }
inline float load_as_float(const Bf16* p, int64_t i) { return bf16_to_float(p[i].bits); }
inline float load_as_float(const Fp16* p, int64_t i) { return fp16_to_float(p[i].bits); }

// Eight elements as floats: one vector load for float32 / bfloat16, lane by lane for float16.
// Force-inlined like the simd.h helpers (they return a vector; see simd.h).
WAVALIGN_SIMD_INLINE f8 load8(const float* p) { return simd::load(p); }
WAVALIGN_SIMD_INLINE f8 load8(const Bf16* p) { return simd::load_bf16(&p->bits); }
WAVALIGN_SIMD_INLINE f8 load8(const Fp16* p) {
  f8 v;
  for (int l = 0; l < kWidth; ++l) v[l] = fp16_to_float(p[l].bits);
  return v;
}

struct RawStats {
  float max = -kInf;
  double sum_exp = 0.0;  // sum_i exp(x_i - max)
  bool has_bad = false;  // NaN or +inf seen
};

// Folds one block (its max and its exp-sum relative to that max) into the row's running
// statistics with the usual running-max rescale (online softmax).
inline void merge_block(RawStats& stats, float block_max, double block_sum) {
  if (block_max > stats.max) {
    stats.sum_exp = stats.sum_exp * std::exp(static_cast<double>(stats.max) - block_max) + block_sum;
    stats.max = block_max;
  } else {
    stats.sum_exp += block_sum * std::exp(static_cast<double>(block_max) - stats.max);
  }
}

// Raw log-softmax statistics in ONE read of the row (the pass that touches memory):
// each kBlock slice is converted into an L1-resident buffer, its max taken, then its
// exp-sum; slices are merged with the usual running-max rescale (online softmax).
template <typename T>
WAVALIGN_SIMD_CLONES_512 RawStats raw_row_stats(const T* src, int64_t n, float* slice) {
  RawStats stats;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const T* block = src + start;
    f8 best_v = simd::splat(-kInf);
    simd::i8 bad_v = {};
    int64_t i = 0;
    for (; i + kWidth <= len; i += kWidth) {
      const f8 v = load8(block + i);
      simd::store(slice + i, v);
      bad_v |= (v != v) | (v == simd::splat(kInf));
      best_v = simd::vmax(v, best_v);
    }
    float block_max = simd::hmax(best_v);
    stats.has_bad |= simd::any_lane(bad_v);
    for (; i < len; ++i) {
      const float v = load_as_float(block, i);
      slice[i] = v;
      stats.has_bad |= (v != v) || (v == kInf);
      block_max = v > block_max ? v : block_max;
    }
    if (stats.has_bad) return stats;
    if (block_max == -kInf) continue;  // contributes nothing
    const f8 shift = simd::splat(block_max);
    const simd::f16 shift16 = simd::join(shift, shift);
    f8 acc = {};
    i = 0;
    const int64_t next = start + kBlock;  // prefetched during the exps, as in raw_row_stats_pair
    // Sixteen per exp (one zmm with AVX-512); acc takes the halves in order, as below.
    for (; i + 2 * kWidth <= len; i += 2 * kWidth) {
      if (next + i < n) __builtin_prefetch(src + next + i);
      const simd::f16 e = exp_nonpositive(simd::load16(slice + i) - shift16);
      acc += simd::low_half(e);
      acc += simd::high_half(e);
    }
    for (; i + kWidth <= len; i += kWidth) {
      if (next + i < n && (i & 15) == 0) __builtin_prefetch(src + next + i);
      acc += exp_nonpositive(simd::load(slice + i) - shift);
    }
    float tail = 0.0f;
    for (; i < len; ++i) tail += exp_nonpositive(slice[i] - block_max);
    const double block_sum = simd::hsum(acc) + tail;
    merge_block(stats, block_max, block_sum);
  }
  return stats;
}

// raw_row_stats of two rows at once, row a in lanes 0-7 and row b in lanes 8-15 of 16-wide
// vectors. Every lane sees the operations raw_row_stats applies to it, in the same order,
// and each row's lanes are reduced in the same order, so both results are bit-identical to
// two raw_row_stats calls; with AVX-512 one instruction serves both rows (the exp polynomial
// is most of this pass's time). Returns false, leaving the outputs unspecified, when either
// row holds NaN or +inf: the caller then runs raw_row_stats row by row (that row's error path).
template <typename T>
WAVALIGN_SIMD_CLONES_512 bool raw_row_stats_pair(const T* src_a, const T* src_b, int64_t n,
                                                 float* slice_a, float* slice_b,
                                                 RawStats* out_a, RawStats* out_b) {
  RawStats a, b;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const T* block_a = src_a + start;
    const T* block_b = src_b + start;
    // The reading pass stays eight-wide per row (it is bound by memory, and sixteen-wide
    // compares compile poorly without AVX-512 DQ); only the exp pass below pairs the rows.
    f8 best_a = simd::splat(-kInf), best_b = simd::splat(-kInf);
    simd::i8 bad_v = {};
    int64_t i = 0;
    for (; i + kWidth <= len; i += kWidth) {
      const f8 va = load8(block_a + i), vb = load8(block_b + i);
      simd::store(slice_a + i, va);
      simd::store(slice_b + i, vb);
      bad_v |= (va != va) | (va == simd::splat(kInf)) | (vb != vb) | (vb == simd::splat(kInf));
      best_a = simd::vmax(va, best_a);
      best_b = simd::vmax(vb, best_b);
    }
    float max_a = simd::hmax(best_a), max_b = simd::hmax(best_b);
    bool bad = simd::any_lane(bad_v);
    for (int64_t t = i; t < len; ++t) {
      const float x = load_as_float(block_a, t), y = load_as_float(block_b, t);
      slice_a[t] = x;
      slice_b[t] = y;
      bad |= (x != x) || (x == kInf) || (y != y) || (y == kInf);
      max_a = x > max_a ? x : max_a;
      max_b = y > max_b ? y : max_b;
    }
    if (bad) return false;
    // A block whose max is -inf contributes nothing (raw_row_stats skips it); shift it by 0
    // so its lanes compute exp(-inf) = 0 instead of NaN, and do not merge them.
    const float shift_a = max_a == -kInf ? 0.0f : max_a, shift_b = max_b == -kInf ? 0.0f : max_b;
    const simd::f16 shift = simd::join(simd::splat(shift_a), simd::splat(shift_b));
    simd::f16 acc = {};
    i = 0;
    // While the exps run, ask for the next block of both rows (one cache line each per two
    // vectors), so the reading pass finds it in cache instead of waiting on memory.
    const int64_t next = start + kBlock;
    for (; i + kWidth <= len; i += kWidth) {
      if (next + i < n && (i & 15) == 0) {
        __builtin_prefetch(src_a + next + i);
        __builtin_prefetch(src_b + next + i);
      }
      acc += exp_nonpositive(simd::join(simd::load(slice_a + i), simd::load(slice_b + i)) - shift);
    }
    float tail_a = 0.0f, tail_b = 0.0f;
    for (int64_t t = i; t < len; ++t) {
      tail_a += exp_nonpositive(slice_a[t] - max_a);
      tail_b += exp_nonpositive(slice_b[t] - max_b);
    }
    double sum_a = 0.0, sum_b = 0.0;
    for (int l = 0; l < kWidth; ++l) {
      sum_a += acc[l];
      sum_b += acc[kWidth + l];
    }
    if (max_a != -kInf) merge_block(a, max_a, sum_a + tail_a);
    if (max_b != -kInf) merge_block(b, max_b, sum_b + tail_b);
  }
  *out_a = a;
  *out_b = b;
  return true;
}

// dst[i] = float(src[i]).
template <typename T>
WAVALIGN_SIMD_CLONES void copy_as_float(const T* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) simd::store(dst + i, load8(src + i));
  for (; i < n; ++i) dst[i] = load_as_float(src, i);
}

// z[i] = float(src[i]) / temperature (src may be z itself), returns the max and writes
// the max of each kBlock slice to block_max[0, 1, ...]: later passes skip the slices that
// cannot hold what they look for. Division (not multiplication by 1/t) so values round
// exactly as `logits / t` does in PyTorch. Reading the caller's row directly (rows without
// penalties) fuses the copy into this pass.
template <typename T>
WAVALIGN_SIMD_CLONES float divide_and_max(const T* src, int64_t n, float temperature, float* z,
                                          float* block_max) {
  const f8 t = simd::splat(temperature);
  float best = -kInf;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    f8 best_v = simd::splat(-kInf);
    int64_t i = start;
    for (; i + kWidth <= end; i += kWidth) {
      const f8 v = load8(src + i) / t;
      simd::store(z + i, v);
      best_v = simd::vmax(v, best_v);
    }
    float block_best = simd::hmax(best_v);
    for (; i < end; ++i) {
      z[i] = load_as_float(src, i) / temperature;
      block_best = z[i] > block_best ? z[i] : block_best;
    }
    *block_max++ = block_best;
    best = block_best > best ? block_best : best;
  }
  return best;
}

// Mass of the kept elements of one slice: sum of exp(z - max_z) over z >= tau.
// Both the total and the draw use this one function, so they agree exactly.
WAVALIGN_SIMD_CLONES_512 double kept_mass(const float* z, int64_t n, float tau, float max_z) {
  const f8 tau_v = simd::splat(tau), max_v = simd::splat(max_z);
  const simd::f16 max16 = simd::join(max_v, max_v);
  f8 acc = {};
  int64_t i = 0;
  // Sixteen ids per exp (one zmm with AVX-512); acc still takes the two eight-lane halves
  // one after the other, as the eight-wide loop below does, so the sum rounds the same.
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    const f8 v0 = simd::load(z + i), v1 = simd::load(z + i + kWidth);
    const simd::i8 kept0 = v0 >= tau_v, kept1 = v1 >= tau_v;
    if (!simd::any_lane(kept0 | kept1)) continue;  // see below: skipping zeros is exact
    const simd::f16 e = exp_nonpositive(simd::join(v0, v1) - max16);
    acc += kept0 ? simd::low_half(e) : simd::splat(0.0f);
    acc += kept1 ? simd::high_half(e) : simd::splat(0.0f);
  }
  for (; i + kWidth <= n; i += kWidth) {
    const f8 v = simd::load(z + i);
    const simd::i8 kept = v >= tau_v;
    // Under top-k / top-p / min-p most vectors keep no lane: skip their exps. Adding the
    // zeros would not change acc (a sum of non-negative terms from +0), so this is exact.
    if (!simd::any_lane(kept)) continue;
    acc += kept ? exp_nonpositive(v - max_v) : simd::splat(0.0f);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += z[i] >= tau ? exp_nonpositive(z[i] - max_z) : 0.0f;
  return simd::hsum(acc) + tail;
}

inline int bucket_of(float z, float max_z) {
  const float scaled = (max_z - z) * static_cast<float>(kBucketsPerNat);
  return scaled < static_cast<float>(kBuckets) ? static_cast<int>(scaled) : kBuckets;
}

// Adds one slice to the bucket histogram (count and mass per bucket). Bucket ids and
// masses are computed sixteen at a time (eight for a remainder); only the scatter is
// scalar. Top-p alone needs no counts (only top-k reads them): with kCounts false they
// are not kept.
template <bool kCounts>
WAVALIGN_SIMD_CLONES_512 void add_to_histogram(const float* z, int64_t n, float max_z,
                                           int32_t* count, double* mass) {
  const f8 max_v = simd::splat(max_z);
  const f8 scale = simd::splat(static_cast<float>(kBucketsPerNat));
  const f8 tail = simd::splat(static_cast<float>(kBuckets));
  const simd::f16 max16 = simd::join(max_v, max_v), scale16 = simd::join(scale, scale),
                  tail16 = simd::join(tail, tail);
  // Two loops per chunk: the exps and bucket ids of a whole chunk first (independent
  // vectors, so they overlap in the pipeline), then the scalar scatter. Fused in one loop,
  // each vector's exp waited behind the previous vector's scatter. Same values, same
  // order of adds per bucket.
  int32_t chunk_bucket[kBlock];
  float chunk_mass[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const float* zc = z + start;
    int64_t i = 0;
    // Sixteen at a time (one zmm exp with AVX-512), each lane as in the eight-wide loop.
    for (; i + 2 * kWidth <= len; i += 2 * kWidth) {
      const simd::f16 v = simd::load16(zc + i);
      const simd::f16 scaled = (max16 - v) * scale16;
      const simd::i16 bucket = __builtin_convertvector(scaled < tail16 ? scaled : tail16, simd::i16);
      std::memcpy(chunk_bucket + i, &bucket, sizeof(bucket));
      simd::store16(chunk_mass + i, exp_nonpositive(v - max16));
    }
    for (; i + kWidth <= len; i += kWidth) {
      const f8 v = simd::load(zc + i);
      const f8 scaled = (max_v - v) * scale;
      const simd::i8 bucket = __builtin_convertvector(scaled < tail ? scaled : tail, simd::i8);
      std::memcpy(chunk_bucket + i, &bucket, sizeof(bucket));
      simd::store(chunk_mass + i, exp_nonpositive(v - max_v));
    }
    for (; i < len; ++i) {
      chunk_bucket[i] = bucket_of(zc[i], max_z);
      chunk_mass[i] = exp_nonpositive(zc[i] - max_z);
    }
    for (i = 0; i < len; ++i) {
      if (kCounts) count[chunk_bucket[i]] += 1;
      mass[chunk_bucket[i]] += chunk_mass[i];
    }
  }
}

// Appends to `out` every z in bucket `bucket` with z >= floor_z; returns `mass` plus
// their mass, added one by one in id order.
WAVALIGN_SIMD_CLONES double collect_bucket(const float* z, int64_t n, float max_z, int bucket,
                                           float floor_z, std::vector<float>* out, double mass) {
  const f8 max_v = simd::splat(max_z);
  const f8 scale = simd::splat(static_cast<float>(kBucketsPerNat));
  const f8 tail = simd::splat(static_cast<float>(kBuckets));
  const simd::i8 wanted = {bucket, bucket, bucket, bucket, bucket, bucket, bucket, bucket};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const f8 v = simd::load(z + i);
    const f8 scaled = (max_v - v) * scale;
    const simd::i8 hit = __builtin_convertvector(scaled < tail ? scaled : tail, simd::i8) == wanted;
    if (!simd::any_lane(hit)) continue;
    for (int l = 0; l < kWidth; ++l) {
      if (hit[l] && v[l] >= floor_z) {
        out->push_back(v[l]);
        mass += exp_nonpositive(v[l] - max_z);
      }
    }
  }
  for (; i < n; ++i) {
    if (bucket_of(z[i], max_z) == bucket && z[i] >= floor_z) {
      out->push_back(z[i]);
      mass += exp_nonpositive(z[i] - max_z);
    }
  }
  return mass;
}

// collect_bucket over a row's allowed ranges, skipping the kBlock slices whose max is below
// floor_z or whose max already lies in a deeper bucket (then so does every z of the slice:
// bucket_of only grows as z falls). Returns the mass summed per range, then over
// ranges, as one collect_bucket call per range would.
double collect_bucket_in_ranges(const float* z, const std::vector<Range>& ranges,
                                const float* block_max, float max_z, int bucket, float floor_z,
                                std::vector<float>* out) {
  double total = 0.0;
  int64_t block = 0;
  for (const Range& r : ranges) {
    double range_mass = 0.0;
    for (int64_t start = r.lo; start < r.hi; start += kBlock, ++block) {
      const float m = block_max[block];
      if (m < floor_z || bucket_of(m, max_z) > bucket) continue;
      range_mass = collect_bucket(z + start, std::min(kBlock, r.hi - start), max_z, bucket,
                                  floor_z, out, range_mass);
    }
    total += range_mass;
  }
  return total;
}

struct RowScratch {
  std::vector<float> z;               // [vocab] processed logits
  std::vector<int64_t> history;       // sorted copy of the row's history
  std::vector<int32_t> bucket_count;  // [kBuckets + 1]
  std::vector<double> bucket_mass;    // [kBuckets + 1]
  std::vector<float> candidates;      // z values of one boundary bucket
  std::vector<double> block_sums;     // mass of each kBlock slice of the kept set
  std::vector<float> block_max;       // max z of each kBlock slice (ranges in order)
  float slice[kBlock];                // one converted slice of the raw row
  float slice_b[kBlock];              // the second row's, when raw statistics run two rows at once
};

thread_local RowScratch t_scratch;

// Sorts, merges and validates a row's ranges. Returns false on a malformed range.
bool merge_ranges(const int64_t* raw, int64_t n_ranges, int64_t vocab, std::vector<Range>* out) {
  out->clear();
  if (raw == nullptr || n_ranges == 0) {
    out->push_back({0, vocab});
    return true;
  }
  if (n_ranges > kMaxAllowedRanges) return false;  // the binding rejects this; never overflow
  Range tmp[kMaxAllowedRanges];
  int n = 0;
  for (int64_t r = 0; r < n_ranges; ++r) {
    const int64_t lo = raw[2 * r], hi = raw[2 * r + 1];
    if (lo < 0 || hi > vocab || lo > hi) return false;
    if (lo < hi) tmp[n++] = {lo, hi};
  }
  std::sort(tmp, tmp + n, [](const Range& a, const Range& b) { return a.lo < b.lo; });
  for (int i = 0; i < n; ++i) {
    if (!out->empty() && tmp[i].lo <= out->back().hi) {
      out->back().hi = std::max(out->back().hi, tmp[i].hi);
    } else {
      out->push_back(tmp[i]);
    }
  }
  return true;
}

// Applies repetition / frequency / presence penalties to the ids in `history`.
// z holds valid values only inside `ranges`; ids outside are masked, so they are skipped.
// Returns kSampleHistoryIdOutOfRange for a bad id (checked first, for every id),
// kSampleParameterOverflow when a penalised allowed logit is +inf or NaN, else kSampleOk.
int32_t apply_penalties(float* z, int64_t vocab, const std::vector<Range>& ranges,
                        const int64_t* history, int64_t len, float repetition, float presence,
                        float frequency, std::vector<int64_t>* sorted) {
  sorted->clear();
  for (int64_t i = 0; i < len; ++i) {
    const int64_t id = history[i];
    if (id == -1) continue;
    if (id < 0 || id >= vocab) return kSampleHistoryIdOutOfRange;
    sorted->push_back(id);
  }
  if (repetition == 1.0f && presence == 0.0f && frequency == 0.0f) return kSampleOk;
  int32_t status = kSampleOk;
  std::sort(sorted->begin(), sorted->end());
  for (size_t i = 0; i < sorted->size();) {
    size_t j = i;
    while (j < sorted->size() && (*sorted)[j] == (*sorted)[i]) ++j;
    const int64_t id = (*sorted)[i];
    const float count = static_cast<float>(j - i);
    i = j;
    bool allowed = false;
    for (const Range& r : ranges) allowed |= (id >= r.lo && id < r.hi);
    if (!allowed) continue;
    float v = z[id];
    if (repetition != 1.0f) v = v < 0.0f ? v * repetition : v / repetition;
    v = v - frequency * count;
    v = v - presence;
    z[id] = v;
    if (sample_value_overflows(v)) status = kSampleParameterOverflow;
  }
  return status;
}

// The k-th largest z over the allowed ids (1-based k), using the bucket histogram to
// narrow the search to one bucket, then nth_element inside it.
float kth_largest(const float* z, const std::vector<Range>& ranges, float max_z, int64_t k,
                  RowScratch& s, int* bucket_out) {
  int64_t above = 0;
  int b = 0;
  for (; b <= kBuckets; ++b) {
    if (above + s.bucket_count[b] >= k) break;
    above += s.bucket_count[b];
  }
  s.candidates.clear();
  collect_bucket_in_ranges(z, ranges, s.block_max.data(), max_z, b, -kInf, &s.candidates);
  const int64_t rank = k - above - 1;  // 0-based rank inside the bucket, descending
  std::nth_element(s.candidates.begin(), s.candidates.begin() + rank, s.candidates.end(),
                   std::greater<float>());
  *bucket_out = b;
  return s.candidates[rank];
}

// Threshold of top-p: walk buckets (mass, descending z) to the one where cumulative
// mass reaches p * total, then order only that bucket's survivors.
float top_p_threshold(const float* z, const std::vector<Range>& ranges, float max_z,
                      double top_p, float floor_z, int floor_bucket, RowScratch& s) {
  // Mass of survivors of the earlier filter (z >= floor_z): buckets above floor_bucket
  // are whole; floor_bucket itself is partial.
  double partial_floor_mass = 0.0;
  if (floor_bucket <= kBuckets) {
    s.candidates.clear();
    partial_floor_mass = collect_bucket_in_ranges(z, ranges, s.block_max.data(), max_z,
                                                  floor_bucket, floor_z, &s.candidates);
  }
  auto mass_of = [&](int b) {
    if (b < floor_bucket) return s.bucket_mass[b];
    return b == floor_bucket ? partial_floor_mass : 0.0;
  };
  double total = 0.0;
  for (int b = 0; b <= kBuckets; ++b) total += mass_of(b);
  const double target = top_p * total;
  double above = 0.0;
  int b = 0;
  for (; b < kBuckets; ++b) {
    if (above + mass_of(b) >= target) break;
    above += mass_of(b);
  }
  // The floor bucket's survivors are already in s.candidates when b is that bucket.
  if (b != floor_bucket) {
    s.candidates.clear();
    collect_bucket_in_ranges(z, ranges, s.block_max.data(), max_z, b, floor_z, &s.candidates);
  }
  std::sort(s.candidates.begin(), s.candidates.end(), std::greater<float>());
  double cumulative = above;
  for (float c : s.candidates) {
    cumulative += exp_nonpositive(c - max_z);
    if (cumulative >= target) return c;
  }
  // Rounding left the target unreached: keep the whole bucket.
  return s.candidates.empty() ? floor_z : s.candidates.back();
}

// Cut-offs probed by the top-k fast path, in nats below the max (after temperature).
constexpr int kProbes = 8;
constexpr float kProbeGaps[kProbes] = {0.25f, 0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 16.0f, 32.0f};
// Above this many candidates the histogram path is cheaper than ordering them.
constexpr int64_t kMaxTopKCandidates = 8192;

// counts[j] += #{z >= max_z - kProbeGaps[j]} over one slice, fully vectorized.
WAVALIGN_SIMD_CLONES void count_above_probes(const float* z, int64_t n, float max_z,
                                             int64_t* counts) {
  f8 cut[kProbes];
  for (int j = 0; j < kProbes; ++j) cut[j] = simd::splat(max_z - kProbeGaps[j]);
  simd::i8 acc[kProbes] = {};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const f8 v = simd::load(z + i);
    for (int j = 0; j < kProbes; ++j) acc[j] -= (v >= cut[j]);  // true lanes are -1
  }
  for (int j = 0; j < kProbes; ++j) {
    for (int l = 0; l < kWidth; ++l) counts[j] += acc[j][l];
    for (int64_t t = i; t < n; ++t) counts[j] += z[t] >= max_z - kProbeGaps[j];
  }
}

// Appends every z >= cut of one slice to `out`.
WAVALIGN_SIMD_CLONES void collect_at_least(const float* z, int64_t n, float cut,
                                           std::vector<float>* out) {
  const f8 cut_v = simd::splat(cut);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const f8 v = simd::load(z + i);
    const simd::i8 hit = v >= cut_v;
    if (!simd::any_lane(hit)) continue;
    for (int l = 0; l < kWidth; ++l)
      if (hit[l]) out->push_back(v[l]);
  }
  for (; i < n; ++i)
    if (z[i] >= cut) out->push_back(z[i]);
}

// Top-k threshold when a probe cut-off holds between k and kMaxTopKCandidates ids:
// leaves those candidates in s.candidates sorted descending and returns the k-th
// largest z. Returns false (nothing decided) when no probe fits.
bool top_k_small_candidates(const float* z, const std::vector<Range>& ranges, float max_z,
                            int64_t k, RowScratch& s, float* kth) {
  int64_t counts[kProbes] = {};
  for (const Range& r : ranges) count_above_probes(z + r.lo, r.hi - r.lo, max_z, counts);
  int probe = 0;
  while (probe < kProbes && counts[probe] < k) ++probe;
  if (probe == kProbes || counts[probe] > kMaxTopKCandidates) return false;
  s.candidates.clear();
  const float cut = max_z - kProbeGaps[probe];
  int64_t block = 0;
  for (const Range& r : ranges) {
    for (int64_t start = r.lo; start < r.hi; start += kBlock, ++block) {
      if (s.block_max[block] < cut) continue;  // nothing in this slice reaches the cut
      collect_at_least(z + start, std::min(kBlock, r.hi - start), cut, &s.candidates);
    }
  }
  std::sort(s.candidates.begin(), s.candidates.end(), std::greater<float>());
  *kth = s.candidates[k - 1];
  return true;
}

// Top-p over the top-k survivors held (sorted descending) in s.candidates.
float top_p_over_candidates(float max_z, float kth, double top_p, RowScratch& s) {
  double total = 0.0;
  size_t kept = 0;
  for (; kept < s.candidates.size() && s.candidates[kept] >= kth; ++kept)
    total += exp_nonpositive(s.candidates[kept] - max_z);
  const double target = top_p * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += exp_nonpositive(s.candidates[i] - max_z);
    if (cumulative >= target) return s.candidates[i];
  }
  return kth;  // rounding left the target unreached: keep every survivor
}

struct RowResult {
  int64_t id = -1;
  double logprob = 0.0;
  int32_t status = kSampleOk;
};

// The caller's row, read again only on the rare path where every processed logit of the
// allowed ids is -inf, to tell kSampleAllowedAllMasked from kSampleParameterOverflow.
struct RawRow {
  const void* data;
  bool (*any_allowed_finite)(const void* data, const std::vector<Range>& ranges);
};

template <typename T>
bool any_allowed_finite(const void* data, const std::vector<Range>& ranges) {
  const T* x = static_cast<const T*>(data);
  for (const Range& r : ranges)
    for (int64_t v = r.lo; v < r.hi; ++v)
      if (load_as_float(x, v) > -kInf) return true;
  return false;
}

bool params_valid(float t, int64_t k, float p, float min_p, float rep, float pres, float freq) {
  return std::isfinite(t) && t >= 0.0f && k >= 0 && std::isfinite(p) && p > 0.0f && p <= 1.0f &&
         std::isfinite(min_p) && min_p >= 0.0f && min_p <= 1.0f && std::isfinite(rep) &&
         rep > 0.0f && std::isfinite(pres) && std::isfinite(freq);
}

// Processes row `row` of processed logits already in s.z (penalties applied). With
// `divided_max` set, z is already divided by the temperature, that is its max, and
// s.block_max holds each slice's max; without it, this divides z and fills s.block_max,
// which the caller has sized. Slices: each range from r.lo in kBlock steps, ranges in order
// (the numbering of s.block_max and s.block_sums). A zero max may come out as -0 or +0
// depending on which slice holds it; every use below treats the two alike.
RowResult sample_processed_row(const SampleTokensArgs& a, int64_t row,
                               const std::vector<Range>& ranges, const RawRow& raw,
                               RowScratch& s, const float* divided_max) {
  RowResult out;
  float* z = s.z.data();
  const float temperature = a.temperature[row];

  if (temperature == 0.0f) {  // greedy: lowest id among the maxima
    float best = -kInf;
    for (const Range& r : ranges)
      for (int64_t v = r.lo; v < r.hi; ++v)
        if (z[v] > best) { best = z[v]; out.id = v; }
    // Penalties left no +inf or NaN (apply_penalties), so only an all -inf row fails.
    if (out.id < 0) out.status = sample_max_status(best, raw.any_allowed_finite(raw.data, ranges));
    return out;
  }

  float max_z = divided_max ? *divided_max : -kInf;
  int64_t n_allowed = 0, n_blocks = 0;
  for (const Range& r : ranges) {
    if (!divided_max) {
      max_z = std::max(max_z, divide_and_max(z + r.lo, r.hi - r.lo, temperature, z + r.lo,
                                             s.block_max.data() + n_blocks));
    }
    n_blocks += slice_count(r);
    n_allowed += r.hi - r.lo;
  }
  // z = +inf (a finite logit over a tiny temperature), or every z -inf: nothing to draw.
  out.status = sample_max_status(max_z, max_z == -kInf && raw.any_allowed_finite(raw.data, ranges));
  if (out.status != kSampleOk) return out;

  const int64_t top_k = a.top_k[row];
  const double top_p = a.top_p[row];
  const double min_p = a.min_p[row];
  float tau = -kInf;  // kept set: allowed ids with z >= tau

  const bool top_k_on = top_k > 0 && top_k < n_allowed;
  bool thresholds_done = !top_k_on && top_p >= 1.0;
  if (top_k_on) {
    // Fast path for the usual small k: a few vectorized counts find a cut-off holding
    // at least k ids; only those candidates are ordered.
    float kth = 0.0f;
    if (top_k_small_candidates(z, ranges, max_z, top_k, s, &kth)) {
      tau = kth;
      if (top_p < 1.0) tau = std::max(tau, top_p_over_candidates(max_z, kth, top_p, s));
      thresholds_done = true;
    }
  }
  if (!thresholds_done) {
    s.bucket_mass.assign(kBuckets + 1, 0.0);
    if (top_k_on) {  // kth_largest walks the counts
      s.bucket_count.assign(kBuckets + 1, 0);
      for (const Range& r : ranges)
        add_to_histogram<true>(z + r.lo, r.hi - r.lo, max_z, s.bucket_count.data(), s.bucket_mass.data());
    } else {
      for (const Range& r : ranges)
        add_to_histogram<false>(z + r.lo, r.hi - r.lo, max_z, nullptr, s.bucket_mass.data());
    }
    int floor_bucket = kBuckets + 1;  // "no earlier filter": every bucket whole
    float floor_z = -kInf;
    if (top_k_on) {
      floor_z = kth_largest(z, ranges, max_z, top_k, s, &floor_bucket);
      tau = floor_z;
    }
    if (top_p < 1.0) tau = std::max(tau, top_p_threshold(z, ranges, max_z, top_p, floor_z,
                                                         floor_bucket, s));
  }
  if (min_p > 0.0) {
    // Smallest float f with (double)f >= max_z + log(min_p): "exp(z - max) >= min_p".
    const double bound = static_cast<double>(max_z) + std::log(min_p);
    float f = static_cast<float>(bound);
    if (static_cast<double>(f) < bound) f = std::nextafter(f, kInf);
    tau = std::max(tau, f);
  }

  // Mass of the kept set, per block, in ascending id order.
  s.block_sums.clear();
  double total = 0.0;
  int64_t slice = 0;
  for (const Range& r : ranges) {
    for (int64_t start = r.lo; start < r.hi; start += kBlock, ++slice) {
      // A slice whose max is below tau keeps nothing: kept_mass would return +0.0.
      const double block = s.block_max[slice] < tau
                               ? 0.0
                               : kept_mass(z + start, std::min(kBlock, r.hi - start), tau, max_z);
      s.block_sums.push_back(block);
      total += block;
    }
  }

  // Inverse-CDF draw: first id whose cumulative mass exceeds u * total.
  const double u = philox_uniform(a.seed, static_cast<uint64_t>(a.offsets[row]));
  const double target = u * total;
  double cumulative = 0.0;
  size_t block_index = 0;
  int64_t last_positive = -1;
  for (const Range& r : ranges) {
    for (int64_t start = r.lo; start < r.hi && out.id < 0; start += kBlock, ++block_index) {
      const double block = s.block_sums[block_index];
      const int64_t len = std::min(kBlock, r.hi - start);
      if (cumulative + block <= target) {
        cumulative += block;
        if (block > 0.0)
          for (int64_t i = len - 1; i >= 0; --i)
            if (z[start + i] >= tau && z[start + i] > -kInf) { last_positive = start + i; break; }
        continue;
      }
      double inner = cumulative;
      for (int64_t i = 0; i < len; ++i) {
        const float zi = z[start + i];
        if (!(zi >= tau) || zi == -kInf) continue;
        const float e = exp_nonpositive(zi - max_z);
        if (e <= 0.0f) continue;
        last_positive = start + i;
        inner += e;
        if (inner > target) { out.id = start + i; break; }
      }
      // Rounding between block sums and the running sum: take the block's last survivor.
      if (out.id < 0 && last_positive >= start) out.id = last_positive;
      cumulative += block;
    }
    if (out.id >= 0) break;
  }
  if (out.id < 0) out.id = last_positive;
  if (out.id < 0) { out.status = kSampleAllowedAllMasked; return out; }
  out.logprob = (static_cast<double>(z[out.id]) - max_z) - std::log(total);
  return out;
}

template <typename T>
void sample_row(const SampleTokensArgs& a, int64_t row, const RawStats* precomputed) {
  const T* logits = static_cast<const T*>(a.logits);
  RowScratch& s = t_scratch;
  if (static_cast<int64_t>(s.z.size()) < a.vocab) s.z.resize(a.vocab);
  a.out_ids[row] = -1;
  a.out_logprobs[row] = std::numeric_limits<float>::quiet_NaN();
  a.out_raw_logprobs[row] = std::numeric_limits<float>::quiet_NaN();

  const float temperature = a.temperature[row];
  if (!params_valid(temperature, a.top_k[row], a.top_p[row], a.min_p[row],
                    a.repetition_penalty[row], a.presence_penalty[row],
                    a.frequency_penalty[row])) {
    a.out_status[row] = kSampleBadParameter;
    return;
  }
  std::vector<Range> ranges;
  ranges.reserve(8);
  if (!merge_ranges(a.allowed_ranges ? a.allowed_ranges + row * a.n_ranges * 2 : nullptr,
                    a.n_ranges, a.vocab, &ranges)) {
    a.out_status[row] = kSampleBadRange;
    return;
  }
  if (ranges.empty()) { a.out_status[row] = kSampleEmptyAllowedSet; return; }

  // Raw statistics read the caller's row directly; only allowed ids are copied out.
  const T* x = logits + row * a.vocab;
  float* z = s.z.data();
  const RawStats raw = precomputed ? *precomputed : raw_row_stats(x, a.vocab, s.slice);
  if (raw.has_bad) { a.out_status[row] = kSampleNonFiniteLogit; return; }
  if (raw.max == -kInf) { a.out_status[row] = kSampleNoFiniteLogit; return; }
  const double raw_lse = raw.max + std::log(raw.sum_exp);
  // Without penalties nothing happens between the copy and the temperature: one pass.
  const bool fuse_divide = temperature > 0.0f && a.repetition_penalty[row] == 1.0f &&
                           a.presence_penalty[row] == 0.0f && a.frequency_penalty[row] == 0.0f;
  float divided_max = -kInf;
  int64_t n_blocks = 0;
  for (const Range& r : ranges) n_blocks += slice_count(r);
  if (static_cast<int64_t>(s.block_max.size()) < n_blocks) s.block_max.resize(n_blocks);
  float* block_max = s.block_max.data();
  for (const Range& r : ranges) {
    if (fuse_divide) {
      divided_max = std::max(divided_max, divide_and_max(x + r.lo, r.hi - r.lo, temperature,
                                                         z + r.lo, block_max));
      block_max += slice_count(r);
    } else {
      copy_as_float(x + r.lo, r.hi - r.lo, z + r.lo);
    }
  }

  const int32_t penalty_status =
      apply_penalties(z, a.vocab, ranges, a.history ? a.history + row * a.history_len : nullptr,
                      a.history ? a.history_len : 0, a.repetition_penalty[row],
                      a.presence_penalty[row], a.frequency_penalty[row], &s.history);
  if (penalty_status != kSampleOk) {
    a.out_status[row] = penalty_status;
    return;
  }
  const RowResult result =
      sample_processed_row(a, row, ranges, RawRow{x, &any_allowed_finite<T>}, s,
                           fuse_divide ? &divided_max : nullptr);
  a.out_status[row] = result.status;
  if (result.status != kSampleOk) return;
  a.out_ids[row] = result.id;
  a.out_logprobs[row] = static_cast<float>(result.logprob);
  a.out_raw_logprobs[row] =
      static_cast<float>(static_cast<double>(load_as_float(x, result.id)) - raw_lse);
}

// Rows go to the thread pool in pairs: a pair's raw statistics are taken in one pass over
// both rows (raw_row_stats_pair), then each row is sampled on its own.
template <typename T>
void sample_rows(const SampleTokensArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  if (a.n_rows < 4 * get_num_threads()) {  // too few rows to pair without idling a thread
    parallel_for(a.n_rows, [&](int64_t row, int /*worker*/) { sample_row<T>(a, row, nullptr); });
    return;
  }
  parallel_for((a.n_rows + 1) / 2, [&](int64_t pair, int /*worker*/) {
    const int64_t first = 2 * pair;
    if (first + 1 >= a.n_rows) {
      sample_row<T>(a, first, nullptr);
      return;
    }
    RowScratch& s = t_scratch;
    RawStats raw[2];
    if (raw_row_stats_pair(logits + first * a.vocab, logits + (first + 1) * a.vocab, a.vocab, s.slice,
                           s.slice_b, &raw[0], &raw[1])) {
      sample_row<T>(a, first, &raw[0]);
      sample_row<T>(a, first + 1, &raw[1]);
    } else {  // NaN or +inf in one of them: row by row, through each row's own checks
      sample_row<T>(a, first, nullptr);
      sample_row<T>(a, first + 1, nullptr);
    }
  });
}

}  // namespace

void sample_tokens_cpu(const SampleTokensArgs& args) {
  switch (args.logits_dtype) {
    case DType::Float32: sample_rows<float>(args); break;
    case DType::BFloat16: sample_rows<Bf16>(args); break;
    case DType::Float16: sample_rows<Fp16>(args); break;
    default: break;  // the binding admits only the three float types
  }
}

}  // namespace wavalign
