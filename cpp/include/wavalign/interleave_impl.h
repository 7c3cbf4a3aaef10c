// Per-row transition of the interleave state machine (contract in interleave.h), shared by
// the CPU loop and the CUDA kernel.
#pragma once
#include <cstdint>

#include "wavalign/interleave.h"
#include "wavalign/philox.h"  // WAVALIGN_HD

namespace wavalign {

constexpr int8_t kModText = 0, kModSpeech = 1;

// Is `id` in allowed set `set` under the schedule? The Python range table is built from
// this predicate (interleave_allowed_mask_cpu), so table and state machine cannot disagree.
WAVALIGN_HD bool interleave_allows(const InterleaveArgs& a, int32_t set, int64_t id) {
  const int8_t mod = a.id_modality[id];
  const bool begin = id == a.begin_audio, end = id == a.end_audio, eos = id == a.eos;
  const bool plain_text = mod == kModText && !begin && !end;
  const bool plain_speech = mod == kModSpeech && !begin && !end;
  const bool ratio = a.schedule == kScheduleRatio;
  switch (set) {
    case kSetText:
      if (a.schedule == kScheduleSequential)
        return plain_text || begin || (a.begin_audio < 0 && plain_speech);
      if (a.schedule == kScheduleChunked) return plain_text;
      if (ratio) return plain_text || begin;
      return plain_text || plain_speech || begin;  // free
    case kSetSpeech:
      if (a.schedule == kScheduleFree) return plain_text || plain_speech || end || eos;
      return plain_speech || end || eos;
    case kSetSwitchToSpeech:
      return a.begin_audio >= 0 ? begin : plain_speech;
    case kSetEosOnly:
      return eos;
    case kSetTextOnly:
      return plain_text;
    case kSetEndAudioOnly:
      return end;
    default:
      return false;
  }
}

WAVALIGN_HD bool spent(const int32_t* budget, int64_t row, int32_t used) {
  return budget != nullptr && budget[row] >= 0 && used >= budget[row];
}

// ratio: the text tokens / speech units of pair `index` (the last pair repeats).
WAVALIGN_HD int32_t ratio_text_quota(const InterleaveArgs& a, int32_t index) {
  return a.ratio_pattern[2 * (index < a.ratio_pairs ? index : a.ratio_pairs - 1)];
}
WAVALIGN_HD int32_t ratio_unit_quota(const InterleaveArgs& a, int32_t index) {
  return a.ratio_pattern[2 * (index < a.ratio_pairs ? index : a.ratio_pairs - 1) + 1];
}

WAVALIGN_HD int32_t interleave_current_set(const InterleaveArgs& a, int64_t row) {
  if (a.finish_reason[row] != kFinishRunning || a.phase[row] == kPhaseClosing) return kSetEosOnly;
  if (a.schedule == kScheduleRatio) {
    if (a.phase[row] == kPhaseSpeech)  // a last block after an over-long text chunk is capped
      return a.text_done[row] == 2 && a.chunk_count[row] >= ratio_unit_quota(a, a.chunk_index[row])
                 ? kSetEndAudioOnly : kSetSpeech;
    if (spent(a.max_text, row, a.text_count[row])) return kSetSwitchToSpeech;
    // A text chunk after a block is never empty (the public layout has none).
    return a.chunk_count[row] == 0 && a.chunk_index[row] > 0 ? kSetTextOnly : kSetText;
  }
  if (a.phase[row] == kPhaseSpeech) return kSetSpeech;
  if (a.schedule == kScheduleSequential && spent(a.max_text, row, a.text_count[row]))
    return kSetSwitchToSpeech;
  return kSetText;
}

// ratio: one non-EOS token (contract in interleave.h).
WAVALIGN_HD void ratio_step(const InterleaveArgs& a, int64_t row, bool begin, bool end) {
  const int32_t index = a.chunk_index[row];
  if (a.phase[row] == kPhaseText) {
    if (begin) {  // open the block; a short text chunk means the text ran out: last pair
      if (a.text_done[row] == 0 && a.chunk_count[row] < ratio_text_quota(a, index)) a.text_done[row] = 1;
      a.phase[row] = kPhaseSpeech;
      a.chunk_count[row] = 0;
    } else {
      a.chunk_count[row] += 1;
      if (a.text_done[row] == 0 && a.chunk_count[row] > ratio_text_quota(a, index)) a.text_done[row] = 2;
    }
  } else if (end) {  // close the block: a full block of a non-last pair leads to the next text chunk
    if (a.text_done[row] != 0 || a.chunk_count[row] != ratio_unit_quota(a, index)) {
      a.phase[row] = kPhaseClosing;
    } else {
      a.phase[row] = kPhaseText;
      a.chunk_index[row] = index + 1;
      a.chunk_count[row] = 0;
    }
  } else {
    a.chunk_count[row] += 1;
  }
}

WAVALIGN_HD void interleave_step_one(const InterleaveArgs& a, int64_t row) {
  a.out_status[row] = 0;
  if (a.sampled != nullptr && a.finish_reason[row] == kFinishRunning) {
    const int64_t id = a.sampled[row];
    if (id < 0 || id >= a.vocab) {
      a.out_status[row] = 1;
      return;
    }
    if (!interleave_allows(a, interleave_current_set(a, row), id)) {
      a.out_status[row] = 2;
      return;
    }
    const int8_t mod = a.id_modality[id];
    if (id == a.eos) {
      a.finish_reason[row] = kFinishEos;
    } else {
      if (mod == kModText) a.text_count[row] += 1;
      if (mod == kModSpeech) a.speech_count[row] += 1;
      const bool begin = id == a.begin_audio, end = id == a.end_audio;
      int8_t phase = a.phase[row];
      if (a.schedule == kScheduleSequential) {
        if (phase == kPhaseText && (begin || mod == kModSpeech)) phase = kPhaseSpeech;
        else if (phase == kPhaseSpeech && end) phase = kPhaseClosing;
      } else if (a.schedule == kScheduleChunked) {
        if (phase == kPhaseText) {
          a.chunk_count[row] += 1;
          if (id == a.end_text) a.text_done[row] = 1;
          if (a.text_done[row] || a.chunk_count[row] >= a.text_chunk) {
            phase = kPhaseSpeech;
            a.chunk_count[row] = 0;
          }
        } else if (end) {
          phase = kPhaseClosing;
        } else {
          a.chunk_count[row] += 1;
          if (!a.text_done[row] && a.chunk_count[row] >= a.speech_chunk) {
            phase = kPhaseText;
            a.chunk_count[row] = 0;
          }
        }
      } else if (a.schedule == kScheduleRatio) {
        ratio_step(a, row, begin, end);
        phase = a.phase[row];
      } else {  // free: follow the last token
        if (begin || (mod == kModSpeech && !end)) phase = kPhaseSpeech;
        else if (end || mod == kModText) phase = kPhaseText;
      }
      a.phase[row] = phase;
      if (phase == kPhaseClosing && a.eos < 0) a.finish_reason[row] = kFinishEndAudio;
      // Budgets. Text budget: sequential switches to speech (via the current set),
      // chunked marks the text channel done, free (no phase to force) finishes.
      const int32_t total = a.text_count[row] + a.speech_count[row];
      if (spent(a.max_total, row, total) || spent(a.max_speech, row, a.speech_count[row])) {
        a.finish_reason[row] = kFinishLength;
      } else if (spent(a.max_text, row, a.text_count[row])) {
        if (a.schedule == kScheduleRatio) {  // the text channel is over: the next block is the last
          if (a.text_done[row] == 0) a.text_done[row] = 1;
        } else if (a.schedule == kScheduleChunked) {
          a.text_done[row] = 1;
          if (a.phase[row] == kPhaseText) {
            a.phase[row] = kPhaseSpeech;
            a.chunk_count[row] = 0;
          }
        } else if (a.schedule == kScheduleFree) {
          a.finish_reason[row] = kFinishLength;
        }
      }
    }
  }
  a.out_allowed_set[row] = interleave_current_set(a, row);
}

}  // namespace wavalign
