"""Frame-level audio features and a small source-filter vocoder for the world's speech.

Everything runs on frames at FRAME_RATE (25 Hz: hop 882 samples at 22,050 Hz), the rate of
the speech units. Features: log-mel energies (the spectral envelope), F0 and voicing from a
normalised autocorrelation, and frame energy. The vocoder turns (log-mel, F0, voicing) frames
back into a waveform: a pulse train (voiced) or noise (unvoiced) shaped to the mel envelope,
so pitch and voicing, which carry the speaking style, survive the round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 22_050  # the world's audio rate: eSpeak NG's native output rate (checked in espeak.py)
HOP = 882  # 25 frames per second
WINDOW = 2 * HOP
N_FFT = 2048
N_MELS = 40
F_MIN, F_MAX = 60.0, 8000.0
F0_MIN, F0_MAX = 60.0, 400.0
FRAME_RATE = SAMPLE_RATE / HOP
_LOG_FLOOR = 1e-7


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank() -> torch.Tensor:
    """[N_MELS, N_FFT//2+1] triangular HTK-mel filters, each row normalised to sum 1, so a
    mel value is the average power in its band."""
    freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    bank = np.clip(np.minimum(rising, falling), 0.0, None)
    bank /= bank.sum(axis=1, keepdims=True)
    return torch.tensor(bank, dtype=torch.float32)


_BANK = mel_filterbank()
# Back-projection from mel bands to linear bins: each bin takes the band averages weighted by
# how much that bin belongs to each band (bins outside [F_MIN, F_MAX] take the nearest band).
_coverage = _BANK / _BANK.sum(dim=0, keepdim=True).clamp_min(1e-12)
_uncovered = _BANK.sum(dim=0) == 0
_nearest = torch.where(torch.arange(N_FFT // 2 + 1) < N_FFT // 4, 0, N_MELS - 1)
_coverage[:, _uncovered] = torch.nn.functional.one_hot(_nearest[_uncovered], N_MELS).T.float()
_BACK = _coverage.T.contiguous()  # [F, N_MELS]


def _as_wave(wave) -> torch.Tensor:
    wave = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
    if wave.dim() != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {list(wave.shape)}")
    if not wave.is_floating_point():
        raise TypeError(f"expected a float waveform in [-1, 1], got {wave.dtype}")
    if not torch.isfinite(wave).all():
        raise ValueError("waveform contains NaN or inf")
    return wave.float()


def _stft(wave: torch.Tensor) -> torch.Tensor:
    return torch.stft(wave, N_FFT, HOP, WINDOW, torch.hann_window(WINDOW), center=True, return_complex=True)


@dataclass
class Frames:
    """Per-frame features of one waveform; all tensors are [T]-leading."""

    log_mel: torch.Tensor  # [T, N_MELS] natural log of the band-average power
    f0: torch.Tensor  # [T] Hz, 0 where unvoiced
    voiced: torch.Tensor  # [T] bool
    energy_db: torch.Tensor  # [T] frame power in dB

    def __len__(self) -> int:
        return self.log_mel.shape[0]


def analyze(wave) -> Frames:
    """[S] float waveform at SAMPLE_RATE -> Frames with T = S // HOP + 1."""
    wave = _as_wave(wave)
    spectrum = _stft(wave).abs().pow(2).T  # [T, F]
    mel = spectrum @ _BANK.T  # [T, N_MELS]
    log_mel = torch.log(mel + _LOG_FLOOR)
    energy_db = 10.0 * torch.log10(mel.mean(dim=1) + _LOG_FLOOR)
    f0, voiced = pitch(wave, frames=log_mel.shape[0], energy_db=energy_db)
    return Frames(log_mel, f0, voiced, energy_db)


def pitch(wave: torch.Tensor, frames: int, energy_db: torch.Tensor, threshold: float = 0.5):
    """F0 by normalised autocorrelation over WINDOW-sample frames centred like the STFT.
    -> (f0 [T] Hz (0 unvoiced), voiced [T] bool). A frame is voiced when its best peak in
    [F0_MIN, F0_MAX] exceeds `threshold` and it is within 35 dB of the loudest frame."""
    padded = torch.nn.functional.pad(wave, (WINDOW // 2, WINDOW // 2 + HOP))
    chunks = padded.unfold(0, WINDOW, HOP)[:frames]  # [T, WINDOW]
    chunks = chunks - chunks.mean(dim=1, keepdim=True)
    spectrum = torch.fft.rfft(chunks, n=2 * WINDOW)
    acf = torch.fft.irfft(spectrum.abs().pow(2), n=2 * WINDOW)[:, :WINDOW]  # [T, lags]
    # Unbias for the shrinking overlap, then normalise by lag 0.
    overlap = (WINDOW - torch.arange(WINDOW)).float() / WINDOW
    acf = acf / overlap / acf[:, :1].clamp_min(1e-9)
    lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    window = acf[:, lo - 1: hi + 1]  # one lag of margin each side for the local-maximum test
    inner = window[:, 1:-1]
    peak = inner.max(dim=1).values
    # The shortest-lag local maximum within 10% of the best: multiples of the period score
    # about as high as the period itself, and picking them would halve F0 (octave errors).
    local_max = (inner >= window[:, :-2]) & (inner >= window[:, 2:]) & (inner >= 0.9 * peak[:, None])
    lag = local_max.int().argmax(dim=1)
    loud = energy_db > energy_db.max() - 35.0
    voiced = (peak > threshold) & loud
    f0 = torch.where(voiced, SAMPLE_RATE / (lag + lo).float(), torch.zeros_like(peak))
    return f0, voiced


def vocode(log_mel: torch.Tensor, f0: torch.Tensor, voicing: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Source-filter synthesis. log_mel [T, N_MELS], f0 [T] Hz, voicing [T] in [0, 1]
    -> [S] float32 waveform with S = (T - 1) * HOP."""
    frames = log_mel.shape[0]
    if frames < 2:
        return torch.zeros(0)
    samples = (frames - 1) * HOP
    generator = torch.Generator().manual_seed(seed)
    position = torch.arange(samples, dtype=torch.float64) / HOP  # frame coordinate of each sample
    f0_fill = torch.where(f0 > 0, f0, f0[f0 > 0].median() if bool((f0 > 0).any()) else torch.tensor(120.0))
    f0_track = torch.from_numpy(np.interp(position.numpy(), np.arange(frames), f0_fill.double().numpy()))
    voicing_track = torch.from_numpy(np.interp(position.numpy(), np.arange(frames), voicing.double().numpy()))
    cycles = torch.cumsum(f0_track / SAMPLE_RATE, dim=0)
    pulses = torch.diff(torch.floor(cycles), prepend=torch.zeros(1)).float()  # 1 at each period start
    pulses = pulses * torch.sqrt(SAMPLE_RATE / f0_track).float()  # equal power per second across F0
    noise = torch.randn(samples, generator=generator)
    source = voicing_track.float() * pulses + (1 - voicing_track.float()) * noise
    spectrum = _stft(source)  # [F, T]
    source_power = (spectrum.abs().pow(2).T @ _BANK.T) @ _BACK.T  # [T, F] smoothed source envelope
    target_power = torch.exp(log_mel) @ _BACK.T  # [T, F]
    gain = torch.sqrt(target_power / source_power.clamp_min(1e-10)).T  # [F, T]
    wave = torch.istft(spectrum * gain, N_FFT, HOP, WINDOW, torch.hann_window(WINDOW), center=True, length=samples)
    return wave.clamp(-1.0, 1.0)


def write_wav(path, wave, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit mono PCM with the standard library (no audio backend needed)."""
    import wave as wavefile

    pcm = (np.asarray(wave, dtype=np.float32).clip(-1, 1) * 32767).astype("<i2")
    with wavefile.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
