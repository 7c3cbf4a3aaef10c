"""Pure-Python twin of the native interleave state machine (cpp/include/wavalign/interleave*.h).

Readable and slow: one row at a time. The tests' oracle: `allowed_mask` must equal the
native mask that builds the sampler's range table (ModalitySpec.interleave_table), and
`reference_step` the native transitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wavalign.codes import (  # noqa: F401  (re-exported for the tests)
    FINISH_END_AUDIO, FINISH_EOS, FINISH_LENGTH, FINISH_RUNNING, N_ALLOWED_SETS, PHASE_CLOSING,
    PHASE_SPEECH, PHASE_TEXT, SCHEDULE_CODES, SET_END_AUDIO_ONLY, SET_EOS_ONLY, SET_SPEECH, SET_SWITCH_TO_SPEECH,
    SET_TEXT, SET_TEXT_ONLY,
)


def _specials(spec):
    def code(value):
        return -1 if value is None else value

    return code(spec.eos), code(spec.begin_audio), code(spec.end_audio), code(spec.end_text)


def allowed_mask(spec, allowed_set: int) -> torch.Tensor:
    """[V] bool: the ids a row in `allowed_set` may emit under spec.schedule."""
    modality = spec.modality_table()
    ids = torch.arange(spec.vocab_size)
    eos, begin, end, _ = _specials(spec)
    is_begin, is_end, is_eos = ids == begin, ids == end, ids == eos
    plain_text = (modality == 0) & ~is_begin & ~is_end
    plain_speech = (modality == 1) & ~is_begin & ~is_end
    kind = spec.schedule.kind
    if allowed_set == SET_TEXT:
        if kind == "sequential":
            return plain_text | is_begin | (plain_speech if begin < 0 else torch.zeros_like(is_begin))
        if kind == "chunked":
            return plain_text
        if kind == "ratio":
            return plain_text | is_begin
        return plain_text | plain_speech | is_begin
    if allowed_set == SET_SPEECH:
        if kind == "free":
            return plain_text | plain_speech | is_end | is_eos
        return plain_speech | is_end | is_eos
    if allowed_set == SET_SWITCH_TO_SPEECH:
        return is_begin if begin >= 0 else plain_speech
    if allowed_set == SET_EOS_ONLY:
        return is_eos
    if allowed_set == SET_TEXT_ONLY:
        return plain_text
    if allowed_set == SET_END_AUDIO_ONLY:
        return is_end
    raise ValueError(f"unknown allowed set {allowed_set}")


@dataclass
class RowState:
    phase: int = PHASE_TEXT
    chunk_count: int = 0
    chunk_index: int = 0  # ratio: which pair of the pattern the current chunk is
    text_count: int = 0
    speech_count: int = 0
    text_done: int = 0  # chunked: 1 = text channel closed; ratio: 1 / 2 = the last pair (see ratio_step)
    finish_reason: int = FINISH_RUNNING


def _spent(budget: int, used: int) -> bool:
    return budget >= 0 and used >= budget


def _quota(spec, index: int) -> tuple[int, int]:
    """ratio: (text tokens, speech units) of pair `index`, the last pair repeating."""
    pairs = spec.schedule.unit_pattern()
    return pairs[min(index, len(pairs) - 1)]


def current_set(spec, row: RowState, max_text: int) -> int:
    if row.finish_reason != FINISH_RUNNING or row.phase == PHASE_CLOSING:
        return SET_EOS_ONLY
    if spec.schedule.kind == "ratio":
        if row.phase == PHASE_SPEECH:
            full = row.chunk_count >= _quota(spec, row.chunk_index)[1]
            return SET_END_AUDIO_ONLY if row.text_done == 2 and full else SET_SPEECH
        if _spent(max_text, row.text_count):
            return SET_SWITCH_TO_SPEECH
        return SET_TEXT_ONLY if row.chunk_count == 0 and row.chunk_index > 0 else SET_TEXT
    if row.phase == PHASE_SPEECH:
        return SET_SPEECH
    if spec.schedule.kind == "sequential" and _spent(max_text, row.text_count):
        return SET_SWITCH_TO_SPEECH
    return SET_TEXT


def reference_step(spec, row: RowState, token: int, max_text=-1, max_speech=-1, max_total=-1) -> int:
    """Advance one row on `token`; returns the row's next allowed set. Raises on an illegal id."""
    if row.finish_reason != FINISH_RUNNING:
        return SET_EOS_ONLY
    if not 0 <= token < spec.vocab_size:
        raise ValueError(f"id {token} is outside [0, {spec.vocab_size})")
    if not bool(allowed_mask(spec, current_set(spec, row, max_text))[token]):
        raise ValueError(f"id {token} is not allowed in phase {row.phase}")
    eos, begin, end, end_text = _specials(spec)
    modality = int(spec.modality_table()[token])
    kind = spec.schedule.kind
    if token == eos:
        row.finish_reason = FINISH_EOS
        return current_set(spec, row, max_text)
    row.text_count += modality == 0
    row.speech_count += modality == 1
    if kind == "sequential":
        if row.phase == PHASE_TEXT and (token == begin or modality == 1):
            row.phase = PHASE_SPEECH
        elif row.phase == PHASE_SPEECH and token == end:
            row.phase = PHASE_CLOSING
    elif kind == "chunked":
        if row.phase == PHASE_TEXT:
            row.chunk_count += 1
            if token == end_text:
                row.text_done = 1
            if row.text_done or row.chunk_count >= spec.schedule.text:
                row.phase, row.chunk_count = PHASE_SPEECH, 0
        elif token == end:
            row.phase = PHASE_CLOSING
        else:
            row.chunk_count += 1
            if not row.text_done and row.chunk_count >= spec.schedule.speech:
                row.phase, row.chunk_count = PHASE_TEXT, 0
    elif kind == "ratio":
        ratio_step(spec, row, token == begin, token == end)
    else:
        if token == begin or (modality == 1 and token != end):
            row.phase = PHASE_SPEECH
        elif token == end or modality == 0:
            row.phase = PHASE_TEXT
    if row.phase == PHASE_CLOSING and eos < 0:
        row.finish_reason = FINISH_END_AUDIO
    total = row.text_count + row.speech_count
    if _spent(max_total, total) or _spent(max_speech, row.speech_count):
        row.finish_reason = FINISH_LENGTH
    elif _spent(max_text, row.text_count):
        if kind == "ratio":  # the text channel is over: the next block is the last
            row.text_done = row.text_done or 1
        elif kind == "chunked":
            row.text_done = 1
            if row.phase == PHASE_TEXT:
                row.phase, row.chunk_count = PHASE_SPEECH, 0
        elif kind == "free":
            row.finish_reason = FINISH_LENGTH
    return current_set(spec, row, max_text)


def ratio_step(spec, row: RowState, begin: bool, end: bool) -> None:
    """ratio: one non-EOS token. text_done 1 = the text ran out (the last block takes any
    number of units), 2 = the last text chunk ran past its quota (the block is capped)."""
    text_quota, unit_quota = _quota(spec, row.chunk_index)
    if row.phase == PHASE_TEXT:
        if begin:
            if row.text_done == 0 and row.chunk_count < text_quota:
                row.text_done = 1
            row.phase, row.chunk_count = PHASE_SPEECH, 0
        else:
            row.chunk_count += 1
            if row.text_done == 0 and row.chunk_count > text_quota:
                row.text_done = 2
    elif end:
        if row.text_done != 0 or row.chunk_count != unit_quota:
            row.phase = PHASE_CLOSING
        else:
            row.phase, row.chunk_index, row.chunk_count = PHASE_TEXT, row.chunk_index + 1, 0
    else:
        row.chunk_count += 1
