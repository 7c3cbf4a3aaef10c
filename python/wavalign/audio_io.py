"""Audio files and sample rates: reading, writing and resampling through well-kept libraries.

    wave, rate = read_audio("question.flac")          # [S] float32 mono in [-1, 1], Hz
    wave16k = resample(wave, rate, 16_000)            # soxr (libsoxr, "HQ")
    write_audio("answer.wav", wave16k, 16_000)        # 16-bit PCM WAV (FLAC / OGG by suffix)
    payload = wav_bytes(wave16k, 16_000)              # the same WAV as bytes (judge requests)

soundfile (libsndfile) reads WAV, FLAC and OGG/Vorbis at any sample width (8/16/24/32-bit
PCM, float); soxr does band-limited resampling. Both wheels bundle their C libraries, so
nothing needs a system install.
"""

from __future__ import annotations

import io
import numbers
from pathlib import Path

import numpy as np
import torch

#: file suffix -> (soundfile format, subtype) used by write_audio
WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def _check_rate(rate, name: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
        raise ValueError(f"{name} must be a positive integer (Hz), got {rate!r}")
    return int(rate)


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """An audio file -> (mono float32 waveform [S] in [-1, 1], sample rate in Hz).

    Multi-channel files are averaged to mono. Raises ValueError naming the file when it is
    missing, unreadable, or holds no samples.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio file not found: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    except (RuntimeError, soundfile.LibsndfileError, TypeError) as error:
        raise ValueError(f"{path}: cannot read audio ({error})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the audio file holds no samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise ValueError(f"{path}: the audio holds NaN or inf samples")
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), int(rate)


def _as_numpy(wave) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"a waveform must be 1-D (mono), got shape {list(samples.shape)}")
    return samples


def write_audio(path: str | Path, wave, sample_rate: int) -> None:
    """[S] float waveform in [-1, 1] -> an audio file; the format follows the suffix
    (.wav 16-bit PCM, .flac, .ogg Vorbis). Samples outside [-1, 1] are clipped."""
    import soundfile

    path = Path(path)
    kind = WRITE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: cannot tell the audio format from the suffix; use one of {sorted(WRITE_FORMATS)}")
    samples = np.clip(_as_numpy(wave), -1.0, 1.0)
    soundfile.write(str(path), samples, _check_rate(sample_rate, "sample_rate"), format=kind[0], subtype=kind[1])


def wav_bytes(wave, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV of a 1-D float waveform in [-1, 1] (tensor, array or list)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(_as_numpy(wave), -1.0, 1.0), _check_rate(sample_rate, "sample_rate"),
                    format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def read_wav_bytes(data: bytes) -> tuple[torch.Tensor, int]:
    """Audio file bytes (WAV, FLAC or OGG) -> (mono float32 waveform [S], sample rate).
    Raises ValueError when the bytes are not a readable audio file."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, TypeError) as error:
        raise ValueError(f"not a readable audio file ({error})") from None
    wave = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), int(rate)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """[S] float waveform at orig_rate -> [round(S * new_rate / orig_rate)] float at new_rate,
    band-limited by soxr ("HQ" quality), so downsampling never aliases. Equal rates return
    the input unchanged."""
    if not isinstance(wave, torch.Tensor) or wave.dim() != 1 or not wave.is_floating_point():
        shape = list(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
        raise ValueError(f"resample expects a 1-D float waveform tensor, got {shape}")
    orig_rate, new_rate = _check_rate(orig_rate, "orig_rate"), _check_rate(new_rate, "new_rate")
    if orig_rate == new_rate:
        return wave
    import soxr

    out = soxr.resample(wave.detach().to("cpu", torch.float32).numpy(), orig_rate, new_rate, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(device=wave.device, dtype=wave.dtype)
