"""Waveforms as reward functions receive them: validation and band-limited resampling.

A completion's ``audio`` comes from the policy's own speech decoder at its own rate; audio
judges listen at theirs. :func:`resample` is wavalign.audio_io.resample (soxr, "HQ"), kept
here under its old name, so downsampling is low-passed below the new Nyquist rate instead
of aliasing.
"""

from __future__ import annotations

import numpy as np
import torch

from wavalign.audio_io import resample

__all__ = ["as_waveform", "resample"]


def as_waveform(audio, sample_rate: int | None, target_rate: int, what: str) -> torch.Tensor:
    """A completion's audio -> [S] float32 CPU waveform at target_rate.

    `what` names the caller and the completion in error messages. Raises ValueError for a
    waveform that is not 1-D (mono), not finite, or comes without a sample rate — a bug in
    the caller, not a missing score.
    """
    wave = audio if isinstance(audio, torch.Tensor) else torch.as_tensor(np.asarray(audio))
    if wave.dim() != 1:
        raise ValueError(f"{what}: audio must be a 1-D mono waveform, got shape {list(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"{what}: audio must be a float waveform in [-1, 1], got {wave.dtype}")
    if sample_rate is None:
        raise ValueError(f"{what}: audio given without a sample_rate")
    wave = wave.detach().to("cpu", torch.float32)
    if not torch.isfinite(wave).all():
        raise ValueError(f"{what}: audio contains NaN or inf")
    return resample(wave, sample_rate, target_rate)
