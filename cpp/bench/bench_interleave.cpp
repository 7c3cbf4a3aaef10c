// wavalign_bench_interleave: the native CPU interleave state machine (interleave_advance_cpu)
// in isolation (no Python), reported as ns per row per decode step next to a "read floor"
// measured in the same run on the same arrays: a plain pass that reads every per-row input
// the op reads (sampled id, budgets, state) and writes every state array and output once.
//
// Ids are VITA-Audio's released layout (configs/modality/vita_audio_balance.yaml). The id
// stream is legal: it is made by running the state machine once and picking, for each row,
// an id from the allowed set the machine named for it (checked against
// interleave_allowed_mask_cpu), with per-row text / speech lengths so rows drift apart and
// some finish. The timed replays feed the same stream from the same initial state.
//
// Build:  cmake -S . -B build/bench -DWAVALIGN_BUILD_BENCH=ON -DWAVALIGN_BUILD_PYTHON=OFF
//         cmake --build build/bench -j2 && ./build/bench/wavalign_bench_interleave [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "wavalign/interleave.h"
#include "wavalign/sampling.h"  // get_num_threads
#include "wavalign/thread_pool.h"
#include "bench_common.h"

using Clock = std::chrono::steady_clock;
using namespace wavalign;
using bench::median;
using bench::parse_quick_flag;

namespace {

// VITA-Audio: Qwen2.5 text ids, then 16,384 speech units; boundaries count as speech.
constexpr int64_t kVocab = 168072, kSpeechBegin = 151688;
constexpr int64_t kEos = 151645, kBeginAudio = 151665, kEndAudio = 151666;
// Balance list 1 4 3 8 4 10, units net of the begin/end-of-audio pair (what the native side takes).
const std::vector<int32_t> kRatioPattern = {1, 2, 3, 6, 4, 8};
constexpr int32_t kTextChunk = 13, kSpeechChunk = 26;  // chunked: GLM-4-Voice
constexpr int64_t kRowsPerBlock = 4096;  // interleave_advance_cpu's min_items_per_thread

const char* schedule_name(int32_t s) {
  switch (s) {
    case kScheduleSequential: return "sequential";
    case kScheduleChunked: return "chunked";
    case kScheduleFree: return "free";
    default: return "ratio";
  }
}

struct State {
  std::vector<int8_t> phase, text_done, finish_reason;
  std::vector<int32_t> chunk_count, chunk_index, text_count, speech_count, allowed, status;
  explicit State(int64_t n)
      : phase(n), text_done(n), finish_reason(n), chunk_count(n), chunk_index(n), text_count(n),
        speech_count(n), allowed(n), status(n) {}
  void reset() {
    for (auto* v : {&phase, &text_done, &finish_reason}) std::fill(v->begin(), v->end(), 0);
    for (auto* v : {&chunk_count, &chunk_index, &text_count, &speech_count, &allowed, &status})
      std::fill(v->begin(), v->end(), 0);
  }
  bool same_as(const State& o) const {
    return phase == o.phase && text_done == o.text_done && finish_reason == o.finish_reason &&
           chunk_count == o.chunk_count && chunk_index == o.chunk_index &&
           text_count == o.text_count && speech_count == o.speech_count && allowed == o.allowed;
  }
  void bind(InterleaveArgs& a) {
    a.phase = phase.data();
    a.chunk_count = chunk_count.data();
    a.chunk_index = chunk_index.data();
    a.text_count = text_count.data();
    a.speech_count = speech_count.data();
    a.text_done = text_done.data();
    a.finish_reason = finish_reason.data();
    a.out_allowed_set = allowed.data();
    a.out_status = status.data();
  }
};

struct Result {
  double op_ns, floor_ns, ratio, running;
};

Result run_config(int32_t schedule, int64_t n, int64_t steps, double min_seconds, int repeats) {
  std::vector<int8_t> modality(kVocab, 0);
  std::fill(modality.begin() + kSpeechBegin, modality.end(), int8_t{1});
  modality[kBeginAudio] = modality[kEndAudio] = 1;  // boundary_is_speech
  std::vector<int32_t> max_text(n, -1), max_speech(n, -1), max_total(n, 4096);

  InterleaveArgs a;
  a.n_rows = n;
  a.schedule = schedule;
  a.text_chunk = kTextChunk;
  a.speech_chunk = kSpeechChunk;
  a.ratio_pattern = kRatioPattern.data();
  a.ratio_pairs = static_cast<int32_t>(kRatioPattern.size() / 2);
  a.id_modality = modality.data();
  a.vocab = kVocab;
  a.eos = kEos;
  a.begin_audio = kBeginAudio;
  a.end_audio = kEndAudio;
  a.max_text = max_text.data();
  a.max_speech = max_speech.data();
  a.max_total = max_total.data();

  std::vector<std::vector<int8_t>> masks(kNumAllowedSets, std::vector<int8_t>(kVocab));
  for (int32_t s = 0; s < kNumAllowedSets; ++s) interleave_allowed_mask_cpu(a, s, masks[s].data());

  // Per-row lengths: text tokens before the row stops text, speech units after that.
  std::mt19937_64 rng(static_cast<uint64_t>(n) * 131 + schedule);
  std::vector<int32_t> text_len(n), unit_len(n);
  for (int64_t r = 0; r < n; ++r) {
    text_len[r] = 4 + static_cast<int32_t>(rng() % (schedule == kScheduleRatio ? 45 : 61));
    unit_len[r] = (schedule == kScheduleRatio ? 4 : 16) + static_cast<int32_t>(rng() % (schedule == kScheduleRatio ? 45 : 113));
  }
  std::uniform_int_distribution<int64_t> text_id(0, kSpeechBegin - 1), unit_id(kSpeechBegin, kVocab - 1);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto plain_text = [&] {
    for (;;) {
      const int64_t id = text_id(rng);
      if (id != kEos && id != kBeginAudio && id != kEndAudio) return id;
    }
  };
  auto quota = [&](int32_t index, int which) {
    const int32_t pairs = static_cast<int32_t>(kRatioPattern.size() / 2);
    return kRatioPattern[2 * std::min(index, pairs - 1) + which];
  };

  // One pass of the state machine makes the legal id stream [steps, n].
  State sim(n);
  sim.bind(a);
  a.sampled = nullptr;  // first call: the allowed set of the first token
  interleave_advance_cpu(a);
  std::vector<int64_t> ids(static_cast<size_t>(steps * n));
  int64_t running = 0;
  for (int64_t s = 0; s < steps; ++s) {
    int64_t* out = ids.data() + s * n;
    for (int64_t r = 0; r < n; ++r) {
      const int32_t set = sim.allowed[r];
      running += sim.finish_reason[r] == kFinishRunning;
      int64_t id = -1;
      const bool text_over = sim.text_count[r] >= text_len[r];
      switch (set) {
        case kSetEosOnly: id = kEos; break;
        case kSetEndAudioOnly: id = kEndAudio; break;
        case kSetSwitchToSpeech: id = kBeginAudio; break;
        case kSetTextOnly: id = plain_text(); break;
        case kSetText:
          if (schedule == kScheduleSequential) id = text_over ? kBeginAudio : plain_text();
          else if (schedule == kScheduleChunked) id = plain_text();
          else if (schedule == kScheduleFree) {
            const double u = unit(rng);
            id = u < 0.05 ? kBeginAudio : u < 0.35 ? unit_id(rng) : plain_text();
          } else {  // ratio: follow the quota; when the text runs out, open the last block
            id = !text_over && sim.chunk_count[r] < quota(sim.chunk_index[r], 0) ? plain_text() : kBeginAudio;
          }
          break;
        case kSetSpeech:
          if (schedule == kScheduleFree) {
            const double u = unit(rng);
            id = sim.text_count[r] + sim.speech_count[r] >= text_len[r] + unit_len[r] ? kEos
                 : u < 0.1 ? kEndAudio : u < 0.2 ? plain_text() : unit_id(rng);
          } else if (schedule == kScheduleRatio) {
            const int32_t want = sim.text_done[r] != 0 ? unit_len[r] : quota(sim.chunk_index[r], 1);
            id = sim.chunk_count[r] < want ? unit_id(rng) : kEndAudio;
          } else {
            id = sim.speech_count[r] < unit_len[r] ? unit_id(rng) : kEndAudio;
          }
          break;
      }
      if (id < 0 || !masks[set][id]) {
        std::fprintf(stderr, "bench bug: id %lld not in set %d (row %lld, step %lld)\n", (long long)id,
                     set, (long long)r, (long long)s);
        std::exit(1);
      }
      out[r] = id;
    }
    a.sampled = out;
    interleave_advance_cpu(a);
    for (int64_t r = 0; r < n; ++r) {
      if (sim.status[r] != 0) {
        std::fprintf(stderr, "%s: row %lld step %lld status %d for a legal id\n", schedule_name(schedule),
                     (long long)r, (long long)s, sim.status[r]);
        std::exit(1);
      }
    }
  }

  // Timed: `steps` calls from the initial state (the reset is not timed).
  State st(n);
  st.bind(a);
  auto replay_op = [&] {
    st.reset();
    a.sampled = nullptr;
    interleave_advance_cpu(a);
    const auto t0 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) {
      a.sampled = ids.data() + s * n;
      interleave_advance_cpu(a);
    }
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  // Floor: the same per-row reads and writes as plain loops, blocked and threaded as the op.
  volatile int32_t zero_source = 0;
  const int32_t z32 = zero_source;
  const int8_t z8 = static_cast<int8_t>(z32);
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  auto replay_floor = [&] {
    st.reset();
    const auto t0 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t* sampled = ids.data() + s * n;
      parallel_for(blocks, [&](int64_t b, int) {
        const int64_t lo = b * kRowsPerBlock, hi = std::min(n, lo + kRowsPerBlock);
        // Raw restrict pointers: int8 stores may alias anything, which would stop vectorizing.
        const int64_t* __restrict in = sampled;
        const int32_t *__restrict mt = max_text.data(), *__restrict ms = max_speech.data(),
                      *__restrict mo = max_total.data();
        int8_t *__restrict ph = st.phase.data(), *__restrict td = st.text_done.data(),
               *__restrict fr = st.finish_reason.data();
        int32_t *__restrict cc = st.chunk_count.data(), *__restrict ci = st.chunk_index.data(),
                *__restrict tc = st.text_count.data(), *__restrict sc = st.speech_count.data(),
                *__restrict al = st.allowed.data(), *__restrict ss = st.status.data();
        const int8_t k8 = z8;  // locals: int8 stores could alias the captured ones
        const int32_t k32 = z32;
        // Three passes, one per element width, so each one vectorizes.
        for (int64_t r = lo; r < hi; ++r) {
          al[r] = (static_cast<int32_t>(in[r]) ^ mt[r] ^ ms[r] ^ mo[r]) & 7;
          ss[r] = k32;
        }
        for (int64_t r = lo; r < hi; ++r) {
          cc[r] ^= k32;
          ci[r] ^= k32;
          tc[r] ^= k32;
          sc[r] ^= k32;
        }
        for (int64_t r = lo; r < hi; ++r) {
          ph[r] ^= k8;
          td[r] ^= k8;
          fr[r] ^= k8;
        }
      });
    }
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  auto per_replay = [&](auto& replay) {
    replay();  // warm-up
    double timed = 0.0;
    int calls = 0;
    const auto start = Clock::now();
    do {
      timed += replay();
      ++calls;
    } while (std::chrono::duration<double>(Clock::now() - start).count() < min_seconds || calls < 3);
    return timed / calls;
  };

  std::vector<double> op_s, floor_s, ratios;
  for (int rep = 0; rep < repeats; ++rep) {
    op_s.push_back(per_replay(replay_op));
    if (rep == 0 && !st.same_as(sim)) {
      std::fprintf(stderr, "%s: replay ended in a different state than the first pass\n", schedule_name(schedule));
      std::exit(1);
    }
    floor_s.push_back(per_replay(replay_floor));
    ratios.push_back(op_s.back() / floor_s.back());
  }
  const double row_steps = static_cast<double>(n) * steps;
  return {median(op_s) / row_steps * 1e9, median(floor_s) / row_steps * 1e9, median(ratios),
          running / row_steps};
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = parse_quick_flag(argc, argv, "wavalign_bench_interleave");
  const double min_seconds = quick ? 0.05 : 0.3;
  const int repeats = quick ? 3 : 5;
  const int64_t steps = quick ? 64 : 128;
  std::vector<int32_t> schedules = {kScheduleSequential, kScheduleRatio};
  std::vector<int64_t> sizes = {64, 4096, 65536};
  if (!quick) {
    schedules = {kScheduleSequential, kScheduleChunked, kScheduleFree, kScheduleRatio};
    sizes = {64, 512, 4096, 16384, 65536};
  }
  std::printf("# threads=%d steps=%lld repeats=%d (medians); ns per row per step\n", get_num_threads(),
              (long long)steps, repeats);
  std::printf("%10s %6s | %9s %9s | %8s | %8s\n", "schedule", "N", "op ns", "floor ns", "vs floor", "running");
  double headline_ratio = 0.0, headline_ns = 0.0, headline_floor = 0.0;
  for (int32_t schedule : schedules) {
    for (int64_t n : sizes) {
      const Result res = run_config(schedule, n, steps, min_seconds, repeats);
      std::printf("%10s %6lld | %9.2f %9.2f | %7.1fx | %7.0f%%\n", schedule_name(schedule), (long long)n,
                  res.op_ns, res.floor_ns, res.ratio, 100.0 * res.running);
      std::fflush(stdout);
      if (schedule == kScheduleRatio && n == 4096) {
        headline_ratio = res.ratio;
        headline_ns = res.op_ns;
        headline_floor = res.floor_ns;
      }
    }
  }
  std::printf("RESULT ratio=%.2f ns_per_row_step=%.2f floor_ns=%.2f "
              "(ratio = median of op time / read-floor time at N=4096, ratio schedule 1 4 3 8 4 10)\n",
              headline_ratio, headline_ns, headline_floor);
  return 0;
}
