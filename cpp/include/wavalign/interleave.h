// Interleave state machine: after each sampled token, advance every row's phase under the
// ModalitySpec schedule and say which id set the row may sample from next. The sets are
// rows of a small range table built in Python (ModalitySpec.interleave_table) from
// interleave_allowed_mask_cpu, so the sampler receives allowed ranges with a single gather
// and no Python loop over rows. python/wavalign/codes.py mirrors the enums below.
//
// Per row: phase, tokens emitted in the current chunk, text / speech totals, text_done,
// finish reason. Transitions on the sampled id (python/wavalign/reference/interleave.py is
// the exact twin):
//   any schedule: EOS -> finished (kFinishEos)
//   sequential:  TEXT --begin_audio or a speech id--> SPEECH; SPEECH --end_audio--> CLOSING
//                (only EOS next, or finished at once when the spec has no EOS)
//   chunked(n, m): TEXT --n text tokens--> SPEECH --m speech tokens--> TEXT; end_text (or
//                the text budget) sets text_done: the row then stays in SPEECH
//   free:        the phase follows the type of the last token; begin_audio -> SPEECH,
//                end_audio -> TEXT
//   ratio(t1, u1, t2, u2, ...): VITA-Audio's interval ratio list. Pair k (the last pair
//                repeating) is t_k text tokens, then begin_audio, u_k speech units,
//                end_audio. Every pair but the last has exactly those sizes; the last pair
//                is where the public layout puts the remainders, so a row declares it by
//                leaving the quota: begin_audio before t_k text tokens (text ran out:
//                text_done = 1, the block takes any number of units), a text token past
//                t_k (text_done = 2: the block takes at most u_k units), or end_audio
//                after fewer or more than u_k units. After the last block only EOS.
//                A response that never opens a block is text only.
//   budgets:     a row whose text budget is spent cannot emit text (sequential: must switch
//                to speech; chunked: text_done); speech or total budget spent -> finished
//                (kFinishLength)
#pragma once
#include <cstdint>

namespace wavalign {

enum InterleavePhase : int8_t { kPhaseText = 0, kPhaseSpeech = 1, kPhaseClosing = 2 };
enum InterleaveSchedule : int32_t {
  kScheduleSequential = 0,
  kScheduleChunked = 1,
  kScheduleFree = 2,
  kScheduleRatio = 3,
};
enum FinishReason : int8_t { kFinishRunning = 0, kFinishEos = 1, kFinishLength = 2, kFinishEndAudio = 3 };

// Row indices of the range table the Python side builds for each schedule.
enum AllowedSet : int32_t {
  kSetText = 0,           // text phase
  kSetSpeech = 1,         // speech phase
  kSetSwitchToSpeech = 2, // sequential, text budget spent: begin_audio (or speech ids)
  kSetEosOnly = 3,        // closing, or a finished row (EOS keeps padding well-formed)
  kSetTextOnly = 4,       // ratio: the first token of a text chunk after a speech block
  kSetEndAudioOnly = 5,   // ratio: the last block is full (its text chunk ran past quota)
  kNumAllowedSets = 6,
};

struct InterleaveArgs {
  int64_t n_rows = 0;
  int32_t schedule = kScheduleSequential;
  int32_t text_chunk = 0;    // chunked: text tokens per chunk
  int32_t speech_chunk = 0;  // chunked: speech tokens per chunk
  // ratio: [2 * ratio_pairs] (text tokens, speech units) per pair, the units net of the
  // begin/end-of-audio pair around each block; device memory on CUDA.
  const int32_t* ratio_pattern = nullptr;
  int32_t ratio_pairs = 0;
  // Modality of every id: 0 text, 1 speech, 2 neither. [vocab]
  const int8_t* id_modality = nullptr;
  int64_t vocab = 0;
  int64_t eos = -1, begin_audio = -1, end_audio = -1, end_text = -1;  // -1 = absent

  const int64_t* sampled = nullptr;     // [n_rows] ids just sampled
  const int32_t* max_text = nullptr;   // [n_rows] budgets; < 0 = unlimited
  const int32_t* max_speech = nullptr;
  const int32_t* max_total = nullptr;

  // State, read and updated in place. [n_rows] each.
  int8_t* phase = nullptr;
  int32_t* chunk_count = nullptr;  // tokens of the current chunk (ratio: text, or units of the block)
  int32_t* chunk_index = nullptr;  // ratio: pair index of the current chunk (unused otherwise)
  int32_t* text_count = nullptr;
  int32_t* speech_count = nullptr;
  int8_t* text_done = nullptr;     // chunked: text channel closed; ratio: 1 / 2 = last pair (see above)
  int8_t* finish_reason = nullptr;

  int32_t* out_allowed_set = nullptr;  // [n_rows] AllowedSet for the next step
  int32_t* out_status = nullptr;       // [n_rows] 0 ok, 1 sampled id out of range,
                                       // 2 id not allowed in the row's phase
  void* cuda_stream = nullptr;
  int cuda_device = -1;  // CUDA: device of the pointers and the stream; -1 = current
};

void interleave_advance_cpu(const InterleaveArgs& args);

// out_mask[id] = 1 if allowed set `set` admits id under args.schedule, else 0, for every id
// in [0, args.vocab). Reads only the schedule, id_modality and special ids of `args`. The
// range table is built from this, so table and state machine share one predicate.
void interleave_allowed_mask_cpu(const InterleaveArgs& args, int32_t set, int8_t* out_mask);
#if defined(WAVALIGN_WITH_CUDA)
const char* interleave_advance_cuda(const InterleaveArgs& args);
#endif

}  // namespace wavalign
