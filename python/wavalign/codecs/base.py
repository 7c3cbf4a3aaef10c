"""SpeechCodec: what wavalign needs of a speech tokenizer / vocoder pair."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class SpeechCodec(Protocol):
    """Waveform <-> speech units.

    sample_rate: the rate `encode` expects and `decode` produces, in Hz.
    encode(waveform, sample_rate): [S] float32 waveform at `sample_rate` -> its speech units
        (ids of the codec's own unit vocabulary, not token ids); a codec that cannot take
        that rate raises ValueError.
    decode(units): speech units -> [S] float32 waveform at `sample_rate`.
    """

    sample_rate: int

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> list[int]: ...

    def decode(self, units: Sequence[int]) -> torch.Tensor: ...
