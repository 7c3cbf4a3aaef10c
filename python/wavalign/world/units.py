"""Discrete speech units: k-means over per-frame (log-mel, pitch, voicing) features, learned at
build time, and their inverse through the source-filter vocoder.

One unit per 40 ms frame (25 Hz), so a 1.5 s answer is ~38 units against ~6 text tokens:
speech stays dense relative to text, as in real spoken dialogue models. Pitch and voicing
are part of the clustering features (weighted up) because they carry the speaking style;
without them k-means on the envelope alone would merge high and low voices.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wavalign.world import audio

PITCH_WEIGHT = 4.0  # the pitch feature counts as much as 16 standardised mel bands
VOICING_WEIGHT = 4.0


def _raw_features(frames: audio.Frames) -> torch.Tensor:
    """[T, N_MELS + 2]: log-mel, log2 F0 (0 where unvoiced), voicing flag."""
    log_f0 = torch.where(frames.voiced, torch.log2(frames.f0.clamp_min(1.0)), torch.zeros_like(frames.f0))
    return torch.cat([frames.log_mel, log_f0[:, None], frames.voiced.float()[:, None]], dim=1)


class UnitTokenizer:
    """waveform <-> [T] unit ids in [0, n_units)."""

    def __init__(self, mean, scale, centroids, unit_log_mel, unit_f0, unit_voicing):
        self.mean = mean  # [D] feature mean
        self.scale = scale  # [D] divide by this to standardise (weights folded in)
        self.centroids = centroids  # [K, D] in standardised space
        self.unit_log_mel = unit_log_mel  # [K, N_MELS] mean log-mel of the unit's frames
        self.unit_f0 = unit_f0  # [K] median F0 of the unit's voiced frames (0 if none)
        self.unit_voicing = unit_voicing  # [K] fraction of the unit's frames that are voiced

    @property
    def n_units(self) -> int:
        return self.centroids.shape[0]

    # --------------------------------------------------------------- learning
    @classmethod
    def fit(cls, frames: list[audio.Frames], n_units: int, seed: int, iterations: int = 25) -> "UnitTokenizer":
        raw = torch.cat([_raw_features(f) for f in frames])  # [M, D]
        if raw.shape[0] < n_units:
            raise ValueError(f"need at least n_units={n_units} frames to learn units, got {raw.shape[0]}")
        voiced = raw[:, -1] > 0
        mean = raw.mean(dim=0)
        scale = raw.std(dim=0).clamp_min(1e-4)
        if voiced.any():  # standardise pitch over voiced frames only; unvoiced stay at 0
            mean[-2] = raw[voiced, -2].mean()
            scale[-2] = raw[voiced, -2].std().clamp_min(1e-4)
        scale[-2] /= PITCH_WEIGHT
        scale[-1] /= VOICING_WEIGHT
        tokenizer = cls(mean, scale, torch.zeros(0, raw.shape[1]), None, None, None)
        points = tokenizer._standardise(raw)
        generator = torch.Generator().manual_seed(seed)
        centroids = _kmeans_plus_plus(points, n_units, generator)
        for _ in range(iterations):
            assign = torch.cdist(points, centroids).argmin(dim=1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, points)
            counts = torch.bincount(assign, minlength=n_units).float()
            empty = counts == 0
            centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        assign = torch.cdist(points, centroids).argmin(dim=1)
        log_mel = raw[:, : audio.N_MELS]
        counts = torch.bincount(assign, minlength=n_units).float().clamp_min(1)
        unit_log_mel = torch.zeros(n_units, audio.N_MELS).index_add_(0, assign, log_mel) / counts[:, None]
        unit_voicing = torch.zeros(n_units).index_add_(0, assign, voiced.float()) / counts
        unit_f0 = torch.zeros(n_units)
        f0 = torch.exp2(raw[:, -2])
        for unit in range(n_units):
            members = (assign == unit) & voiced
            if members.any():
                unit_f0[unit] = f0[members].median()
        return cls(mean, scale, centroids, unit_log_mel, unit_f0, unit_voicing)

    # --------------------------------------------------------------- use
    def _standardise(self, raw: torch.Tensor) -> torch.Tensor:
        points = (raw - self.mean) / self.scale
        points[:, -2] = torch.where(raw[:, -1] > 0, points[:, -2], torch.zeros_like(points[:, -2]))
        return points

    def encode_frames(self, frames: audio.Frames) -> torch.Tensor:
        """Frames -> [T] int64 unit ids."""
        return torch.cdist(self._standardise(_raw_features(frames)), self.centroids).argmin(dim=1)

    def encode(self, wave) -> torch.Tensor:
        """[S] waveform -> [T] int64 unit ids."""
        return self.encode_frames(audio.analyze(wave))

    def decode(self, units, seed: int = 0) -> torch.Tensor:
        """[T] unit ids -> [S] float32 waveform at audio.SAMPLE_RATE."""
        units = torch.as_tensor(units, dtype=torch.int64)
        if units.dim() != 1:
            raise ValueError(f"units must be 1-D, got shape {list(units.shape)}")
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= self.n_units):
            raise ValueError(f"unit ids must lie in [0, {self.n_units}), found [{int(units.min())}, {int(units.max())}]")
        voicing = (self.unit_voicing[units] > 0.5).float()
        return audio.vocode(self.unit_log_mel[units], self.unit_f0[units], voicing, seed=seed)

    # --------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        tensors = {"mean": self.mean, "scale": self.scale, "centroids": self.centroids,
                   "unit_log_mel": self.unit_log_mel, "unit_f0": self.unit_f0, "unit_voicing": self.unit_voicing}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "UnitTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"unit tokenizer not found: {path}")
        t = load_file(str(path))
        return cls(t["mean"], t["scale"], t["centroids"], t["unit_log_mel"], t["unit_f0"], t["unit_voicing"])


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(points.shape[0], (1,), generator=generator)
    centroids = [points[first[0]]]
    nearest = torch.cdist(points, centroids[0][None]).squeeze(1).pow(2)
    for _ in range(1, k):
        pick = torch.multinomial(nearest / nearest.sum(), 1, generator=generator)[0]
        centroids.append(points[pick])
        nearest = torch.minimum(nearest, torch.cdist(points, points[pick][None]).squeeze(1).pow(2))
    return torch.stack(centroids)
