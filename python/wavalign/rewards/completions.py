"""Response ids -> the Completion objects reward functions see."""

from __future__ import annotations

import logging
from typing import Sequence

from wavalign.rewards.base import Completion

log = logging.getLogger(__name__)


def make_completions(format, responses: Sequence[Sequence[int]], codec=None, *,
                     stats: dict | None = None) -> list[Completion]:
    """Response ids -> Completions (text channel and speech units), split by the model's
    ResponseFormat. With a SpeechCodec, each completion with speech also carries its
    waveform (`audio` [S] float32 at `codec.sample_rate`), for rewards that listen.

    A codec that batches (`decode_many`) decodes the whole batch at once. A decode that
    raises or returns None leaves that completion's `audio` None (rewards that listen then
    give it no score) instead of failing the step; it is logged and, when `stats` is given,
    counted there: stats["decode_requested"] and stats["decode_failed"] are incremented.
    """
    completions = []
    for ids in responses:
        ids = [int(t) for t in ids]
        text, units = format.split(ids)
        completions.append(Completion(text=text, speech_units=units, ids=ids))
    if codec is None:
        return completions
    speaking = [c for c in completions if c.speech_units]
    waves = _decode(codec, [c.speech_units for c in speaking])
    failed = 0
    for completion, wave in zip(speaking, waves):
        if wave is None:
            failed += 1
        else:
            completion.audio, completion.sample_rate = wave, codec.sample_rate
    if failed:
        log.warning("speech codec: %d of %d responses could not be decoded; their audio rewards get no score",
                    failed, len(speaking))
    if stats is not None:
        stats["decode_requested"] = stats.get("decode_requested", 0) + len(speaking)
        stats["decode_failed"] = stats.get("decode_failed", 0) + failed
    return completions


def _decode(codec, batch: list[list[int]]) -> list:
    """One waveform or None per units list. An exception fails only its own sample, or the
    whole batch for a batched codec whose decode_many raised."""
    if not batch:
        return []
    decode_many = getattr(codec, "decode_many", None)
    if callable(decode_many):
        try:
            waves = list(decode_many(batch))
        except Exception as error:  # any codec error: the step goes on without this batch's audio
            log.warning("speech codec: decode_many failed for %d responses (%s: %s)", len(batch),
                        type(error).__name__, str(error)[:200])
            return [None] * len(batch)
        if len(waves) != len(batch):  # a codec bug, not a decode failure
            raise ValueError(f"speech codec decode_many returned {len(waves)} waveforms for {len(batch)} responses")
        return waves
    waves = []
    for units in batch:
        try:
            waves.append(codec.decode(units))
        except Exception as error:  # any codec error fails this sample only
            log.warning("speech codec: decode of %d units failed (%s: %s)", len(units), type(error).__name__,
                        str(error)[:200])
            waves.append(None)
    return waves
