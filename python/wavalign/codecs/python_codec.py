"""PythonCodec: your own speech codec, built by a factory you name.

    build_codec("python", options) with these options (YAML shown):

        factory: my_package.vocoder:make_codec   # a class or a function
        init: {checkpoint: /models/vocoder.pt}    # its keyword arguments (optional)

The factory's result must have `sample_rate` (a positive int, Hz) and `decode(units)` returning
a 1-D float waveform at that rate (a tensor, NumPy array or list; a leading batch axis of one
is dropped). `encode(waveform, sample_rate) -> units` is optional: without it the codec still
decodes for rewards that listen, `can_encode` is False, and `encode` raises only when called.
`decode_many(list_of_units)` is passed through when the object has it (batched vocoders).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch

from wavalign.imports import import_object


def load_factory(target, where: str):
    """"package.module:name" -> the named object; ValueError naming the factory otherwise."""
    factory = import_object(target, where, "factory")
    if not callable(factory):
        raise ValueError(f"{where}: factory {target!r} is not callable")
    return factory


class PythonCodec:
    """Wraps the object a factory built, checking it once and each waveform it returns."""

    def __init__(self, inner, name: str):
        self.inner, self.name = inner, name
        rate = getattr(inner, "sample_rate", None)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
            raise ValueError(f"codec from factory {name!r}: sample_rate must be a positive integer (Hz), got {rate!r}")
        if not callable(getattr(inner, "decode", None)):
            raise ValueError(f"codec from factory {name!r} has no decode(units) method")
        self.sample_rate = int(rate)
        self.can_encode = callable(getattr(inner, "encode", None))
        if callable(getattr(inner, "decode_many", None)):
            self.decode_many = self._decode_many  # only then: make_completions batches through it
        self.stats = getattr(inner, "stats", None)

    def decode(self, units: Sequence[int]) -> torch.Tensor | None:
        """Units -> [S] float32 waveform at sample_rate (None if the codec said so)."""
        return self._waveform(self.inner.decode(list(units)))

    def _decode_many(self, batch):
        waves = list(self.inner.decode_many([list(units) for units in batch]))
        if len(waves) != len(batch):
            raise ValueError(f"codec from factory {self.name!r}: decode_many returned {len(waves)} waveforms "
                             f"for {len(batch)} samples")
        return [self._waveform(w) for w in waves]

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> list[int]:
        if not self.can_encode:
            raise ValueError(f"codec from factory {self.name!r} has no encode(waveform, sample_rate) method, "
                             "so it cannot tokenize audio")
        units = self.inner.encode(waveform, sample_rate)
        array = np.asarray(units.detach().cpu() if isinstance(units, torch.Tensor) else units)
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise ValueError(f"codec from factory {self.name!r}: encode must return a 1-D sequence of integer "
                             f"units, got {array.dtype} shape {list(array.shape)}")
        return [int(u) for u in array.tolist()]

    def _waveform(self, wave) -> torch.Tensor | None:
        if wave is None:  # the user's codec reports its own failure; make_completions counts it
            return None
        wave = wave if isinstance(wave, torch.Tensor) else torch.as_tensor(np.asarray(wave))
        if wave.dim() == 2 and wave.shape[0] == 1:
            wave = wave[0]
        if wave.dim() != 1 or not wave.is_floating_point():
            raise ValueError(f"codec from factory {self.name!r}: decode must return a 1-D float waveform, "
                             f"got {wave.dtype} shape {list(wave.shape)}")
        return wave.detach().to("cpu", torch.float32)
