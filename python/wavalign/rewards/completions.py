"""Response ids -> the Completion objects reward functions see."""

from __future__ import annotations

from typing import Sequence

from wavalign.rewards.base import Completion


def make_completions(format, responses: Sequence[Sequence[int]], codec=None) -> list[Completion]:
    """Response ids -> Completions (text channel and speech units), split by the model's
    ResponseFormat. With a SpeechCodec, each completion with speech also carries its
    waveform (`audio` [S] float32 at `codec.sample_rate`), for rewards that listen."""
    completions = []
    for ids in responses:
        ids = [int(t) for t in ids]
        text, units = format.split(ids)
        completion = Completion(text=text, speech_units=units, ids=ids)
        if codec is not None and units:
            completion.audio, completion.sample_rate = codec.decode(units), codec.sample_rate
        completions.append(completion)
    return completions
