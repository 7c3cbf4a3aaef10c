// Batched constrained next-token sampler.
//
// Per row, the pipeline is (python/wavalign/reference/sampling.py is the exact twin):
//   1. raw log-softmax of the unmodified logits (temperature 1)  -> raw logprob of the pick
//   2. penalties over the row's token history: repetition (HF style: divide positive
//      logits, multiply negative ones), then frequency (x count) and presence (x [count>0])
//   3. allowed-id mask: only ids inside the row's ranges [lo, hi) survive
//   4. temperature == 0 -> greedy argmax (lowest id on ties); processed logprob = 0
//   5. z = logit / temperature
//   6. top-k: keep z >= the k-th largest z              (ties at the boundary are kept)
//   7. top-p: on the top-k survivors, keep z >= z_m where m is the first position, in
//      descending order, at which the cumulative probability reaches p
//   8. min-p: keep z with exp(z - max z) >= min_p
//   9. draw by inverse CDF over surviving ids in ascending id order, using one Philox
//      uniform u = U(seed, offset[row]): the first id whose cumulative mass exceeds u * total
// Every filter is a threshold on z, so the kept set is {allowed ids : z >= tau}; no step
// sorts the vocabulary (only the few candidates that straddle a threshold are ordered).
// Finite parameters can still overflow float32 in steps 2 and 5 (a penalised logit of an
// allowed id +inf or NaN, z = +inf, or every allowed z -inf from finite logits): the row
// then fails with kSampleParameterOverflow instead of being sampled (sample_max_status).
//
// CPU / CUDA agreement (sample_tokens_cpu vs sample_tokens_cuda on the same inputs).
// Both backends perform the same float32 operations in the same order (penalties, the
// division by the temperature, z - max z, the exp polynomial of simd::exp_nonpositive)
// and compare thresholds the same way, but they add the masses in different groupings:
// the CPU in float32 SIMD lanes per 1024-id slice (kept_mass; raw_row_stats with
// per-slice maxima merged by rescaling), CUDA per thread in double with the row maximum,
// then a block tree / block scan. Sums therefore agree to float32 rounding, not bit for
// bit. What this guarantees:
//   identical  - statuses (every SampleStatus code, per row);
//              - greedy ids (temperature 0), lowest id on ties, and their logprob 0;
//              - the kept set of top-k and min-p (a count threshold and a value
//                threshold on z, ties at the boundary kept; min-p's bound max z +
//                log(min_p) is a double, so only a float within one double ulp of it
//                could fall either way), and of the allowed ranges;
//              - the kept set of top-p, except that a boundary whose cumulative mass lies
//                within float rounding of p * total may keep one tie-level value more or
//                less (this can also differ between two CUDA runs: the CUDA top-p
//                histogram adds masses with atomics in no fixed order);
//              - the processed distribution, up to float32 rounding of each mass and of
//                the totals (relative differences ~1e-7);
//              - a row's Philox uniform u = U(seed, offsets[row]), bit for bit.
//   may differ - a draw whose target u * total falls within that rounding of the
//                boundary between two adjacent kept ids (the cumulative masses of the two
//                backends straddle it differently): the backends then return kept ids
//                that are neighbours in ascending id order. The rate grows with the
//                number of kept ids and with how peaked the distribution is (the CPU's
//                float-lane error of a heavy slice shifts every later boundary). With
//                every id of a 168,072-id vocabulary kept, measured against a float64
//                emulation of the CUDA sums (4096 draws each): 2.4e-4 for N(0, 1) logits,
//                4.9e-4 for N(0, 2^2), 1.5e-3 for N(0, 2^2) at temperature 0.7 (2e-4 -
//                6e-4 reported on hardware). It is far lower when top-k / top-p / min-p
//                keep few ids, and bounded by the mass of the kept ids. The
//                logprobs of a differing draw are those of its own id, so each backend
//                stays exact for the distribution it drew from.
//              - processed and raw logprobs: equal to float32 rounding of the sums, not
//                bit for bit (the tests allow 2e-5).
// tests/test_sampling_cuda.py checks this at V = 168,072 (agreement >= 0.999 for draws
// from N(0, 2^2) logits at temperature 1 and for the top-k / top-p / min-p cases, exact
// for greedy, every drawn id inside the exactly computed kept set). The CPU
// numerics are the reference (training runs reproduce them exactly); CUDA is not made to
// mimic the CPU's float lanes.
//
// C++ never owns tensor memory: every pointer below is allocated by the caller.
#pragma once
#include <math.h>

#include <cstdint>

#include "wavalign/dtype.h"
#include "wavalign/philox.h"  // WAVALIGN_HD

namespace wavalign {

// Per-row outcome codes written to `status`; the Python layer turns them into exceptions.
enum SampleStatus : int32_t {
  kSampleOk = 0,
  kSampleNonFiniteLogit = 1,       // NaN or +inf among the row's logits
  kSampleNoFiniteLogit = 2,        // every raw logit is -inf
  kSampleEmptyAllowedSet = 3,      // the row's ranges cover no id
  kSampleAllowedAllMasked = 4,     // every allowed id has logit -inf after penalties
  kSampleHistoryIdOutOfRange = 5,  // a history id is not in [-1, vocab)
  kSampleBadRange = 6,             // a range has lo < 0, hi > vocab or lo > hi
  kSampleBadParameter = 7,         // temperature < 0, top_p not in (0, 1], min_p not in [0, 1],
                                   // top_k < 0, repetition_penalty <= 0, non-finite value
  kSampleParameterOverflow = 8,    // finite parameters whose arithmetic overflows float32: a
                                   // penalised or temperature-scaled logit of an allowed id is
                                   // +inf or NaN, or the log-normaliser is not finite (every
                                   // allowed id -inf although one had a finite logit)
};

// ---- Overflow rules shared by the CPU and CUDA samplers (kSampleParameterOverflow).
// Raw logits are NaN/+inf-free by the time these run (kSampleNonFiniteLogit), so a NaN or
// +inf among the processed logits of allowed ids can only come from the parameters.

// A penalised logit the row must not sample from: NaN or +inf.
WAVALIGN_HD bool sample_value_overflows(float v) { return !(v < INFINITY); }

// Status of a row from the largest processed logit `max_value` of its allowed ids (after
// penalties; after the division by the temperature unless greedy). finite_before: whether
// some allowed id has a finite raw logit (read only when max_value is -inf). A finite max
// is fine; +inf or NaN overflowed; -inf means nothing can be sampled: the caller's own
// -inf logits (kSampleAllowedAllMasked), or finite logits the parameters pushed to -inf.
WAVALIGN_HD int32_t sample_max_status(float max_value, bool finite_before) {
  if (max_value > -INFINITY && max_value < INFINITY) return kSampleOk;
  if (max_value == -INFINITY && !finite_before) return kSampleAllowedAllMasked;
  return kSampleParameterOverflow;
}

struct SampleTokensArgs {
  // logits: [n_rows, vocab] of logits_dtype, row-major contiguous.
  const void* logits = nullptr;
  DType logits_dtype = DType::Float32;
  int64_t n_rows = 0;
  int64_t vocab = 0;

  // Per-row parameters, each [n_rows].
  const float* temperature = nullptr;         // 0 = greedy
  const int64_t* top_k = nullptr;             // 0 = off
  const float* top_p = nullptr;               // 1 = off
  const float* min_p = nullptr;               // 0 = off
  const float* repetition_penalty = nullptr;  // 1 = off
  const float* presence_penalty = nullptr;    // 0 = off
  const float* frequency_penalty = nullptr;   // 0 = off

  // history: [n_rows, history_len] int64 token ids; -1 is padding. May be null (len 0).
  const int64_t* history = nullptr;
  int64_t history_len = 0;

  // allowed_ranges: [n_rows, n_ranges, 2] int64 half-open [lo, hi); lo == hi is padding.
  // Null (n_ranges 0) means every id is allowed. Ranges may overlap (union).
  const int64_t* allowed_ranges = nullptr;
  int64_t n_ranges = 0;

  // Randomness: row r draws from Philox(seed, offsets[r]). offsets: [n_rows] int64.
  uint64_t seed = 0;
  const int64_t* offsets = nullptr;

  // Outputs, each [n_rows].
  int64_t* out_ids = nullptr;
  float* out_logprobs = nullptr;      // log-prob under the processed distribution
  float* out_raw_logprobs = nullptr;  // log-softmax of the raw logits at temperature 1
  int32_t* out_status = nullptr;      // SampleStatus

  // CUDA only: [n_rows, vocab] float32 scratch for processed logits, the stream, and the
  // device that owns every pointer above and the stream (-1: the calling thread's current
  // device). The launcher makes cuda_device current for the launch and restores the
  // caller's device afterwards.
  float* workspace = nullptr;
  void* cuda_stream = nullptr;
  int cuda_device = -1;
};

// Upper bound on ranges per row (kept small so a row's merged ranges fit in registers
// or shared memory on every backend).
constexpr int64_t kMaxAllowedRanges = 64;

void sample_tokens_cpu(const SampleTokensArgs& args);

#if defined(WAVALIGN_WITH_CUDA)
// Enqueues on args.cuda_stream; returns a CUDA error string or nullptr.
const char* sample_tokens_cuda(const SampleTokensArgs& args);
bool cuda_device_available(int* device_count);
#endif

// Threads used by CPU ops (defaults to the CPUs this process may run on).
int get_num_threads();
void set_num_threads(int n);

}  // namespace wavalign
