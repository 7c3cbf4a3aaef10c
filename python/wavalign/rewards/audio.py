"""Waveforms as reward functions receive them: validation and band-limited resampling.

A completion's ``audio`` comes from the policy's own speech decoder at its own rate; audio
judges listen at theirs. :func:`resample` converts with Hann-windowed sinc interpolation —
the algorithm and defaults of ``torchaudio.functional.resample`` (which is not a dependency),
so downsampling is low-passed below the new Nyquist rate instead of aliasing.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int, *, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """[S] float waveform at orig_rate -> [ceil(S * new_rate / orig_rate)] at new_rate.

    Each output sample is a windowed-sinc weighted sum of the input samples within
    `lowpass_filter_width` zero crossings; the sinc's cutoff is `rolloff` times the lower
    of the two Nyquist rates. Equal rates return the input unchanged.
    """
    if wave.dim() != 1 or not wave.is_floating_point():
        raise ValueError(f"resample expects a 1-D float waveform, got {wave.dtype} shape {list(wave.shape)}")
    for name, rate in (("orig_rate", orig_rate), ("new_rate", new_rate)):
        if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
            raise ValueError(f"{name} must be a positive integer (Hz), got {rate!r}")
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return wave
    step = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // step, new_rate // step  # one period: `orig` inputs -> `new` outputs
    cutoff = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / cutoff)  # input samples each side
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # [K] input times
    phases = torch.arange(new, dtype=torch.float64)[:, None] / new  # [new, 1] output times
    t = ((taps[None, :] - phases) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)  # [new, K]
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernels = (sinc * window * cutoff / orig).to(wave.dtype)[:, None, :]  # [new, 1, K]
    padded = torch.nn.functional.pad(wave[None, None], (width, width + orig))  # [1, 1, S + K - 1]
    out = torch.nn.functional.conv1d(padded, kernels.to(wave.device), stride=orig)  # [1, new, periods]
    out = out[0].T.reshape(-1)  # interleave the `new` phases -> [new * periods]
    return out[: math.ceil(new * wave.shape[0] / orig)]


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
