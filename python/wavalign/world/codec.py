"""WorldCodec: the built-in world's unit tokenizer as a wavalign.codecs.SpeechCodec."""

from __future__ import annotations

from typing import Sequence

import torch

from wavalign.world.audio import SAMPLE_RATE
from wavalign.world.units import UnitTokenizer


class WorldCodec:
    """encode: waveform at SAMPLE_RATE -> the world's speech units (k-means over frame features);
    decode: units -> the world vocoder's waveform (what the world's scorer listens to)."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self, units: UnitTokenizer):
        self.units = units

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> list[int]:
        """[S] float32 waveform at SAMPLE_RATE -> unit ids; ValueError at any other rate."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"audio at {sample_rate} Hz; the world's tokenizer needs {SAMPLE_RATE} Hz")
        return self.units.encode(waveform).tolist()

    def decode(self, units: Sequence[int]) -> torch.Tensor:
        """Unit ids -> [S] float32 waveform at SAMPLE_RATE."""
        return self.units.decode(list(units))
