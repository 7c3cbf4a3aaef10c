"""The world's style meter: prosodic measurements of audio -> a probability per style.

Four measurements per utterance: median pitch (log2 Hz over voiced frames), voiced fraction,
loudness (mean dB over active frames) and speaking rate (active seconds per character of the
transcript). A diagonal Gaussian per style is fitted at build time on gold speech that went
through the unit tokenizer; the style score of EQ is 1 + 4 * P(requested style).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from wavalign.world import audio

MEASURES = ("pitch_log2_hz", "voiced_fraction", "loudness_db", "seconds_per_char")
_UNVOICED_PITCH = 6.5  # log2 Hz (~90 Hz) stands in for the pitch of audio with no voiced frame


def measure(wave, transcript: str) -> torch.Tensor:
    """wave (or its audio.Frames) -> [4] float32 (see MEASURES). Active frames: within 30 dB
    of the loudest."""
    frames = wave if isinstance(wave, audio.Frames) else audio.analyze(wave)
    active = frames.energy_db > frames.energy_db.max() - 30.0
    voiced = frames.voiced & active
    n_active = max(int(active.sum()), 1)
    pitch = float(torch.log2(frames.f0[voiced]).median()) if int(voiced.sum()) >= 3 else _UNVOICED_PITCH
    chars = max(len(transcript.replace(" ", "")), 1)
    return torch.tensor([pitch, int(voiced.sum()) / n_active, float(frames.energy_db[active].mean()),
                         n_active / audio.FRAME_RATE / chars])


@dataclass
class StyleMeter:
    styles: list[str]
    mean: torch.Tensor  # [S, 4]
    std: torch.Tensor  # [S, 4]

    @classmethod
    def fit(cls, measurements: torch.Tensor, labels: list[str]) -> "StyleMeter":
        """measurements [M, 4], labels [M] style names."""
        styles = sorted(set(labels))
        mean, std = [], []
        for style in styles:
            rows = measurements[[label == style for label in labels]]
            mean.append(rows.mean(dim=0))
            # Floor the spread so one very consistent style does not dominate the likelihood.
            std.append(rows.std(dim=0).clamp_min(1e-3) if rows.shape[0] > 1 else torch.ones(4))
        std = torch.stack(std)
        std = torch.maximum(std, 0.1 * measurements.std(dim=0).clamp_min(1e-3))
        return cls(styles, torch.stack(mean), std)

    def probabilities(self, measurement: torch.Tensor) -> dict[str, float]:
        z = (measurement[None] - self.mean) / self.std
        log_likelihood = -0.5 * z.pow(2).sum(dim=1) - self.std.log().sum(dim=1)
        probs = torch.softmax(log_likelihood, dim=0)
        return {s: float(p) for s, p in zip(self.styles, probs)}

    def score(self, wave, transcript: str, style: str) -> float:
        """EQ of one utterance: 1 + 4 * P(style | audio), in [1, 5]."""
        if style not in self.styles:
            raise ValueError(f"unknown style {style!r}; the meter knows {self.styles}")
        return 1.0 + 4.0 * self.probabilities(measure(wave, transcript))[style]

    def classify(self, wave, transcript: str) -> str:
        probs = self.probabilities(measure(wave, transcript))
        return max(probs, key=probs.get)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"measures": list(MEASURES), "styles": self.styles,
                                          "mean": self.mean.tolist(), "std": self.std.tolist()}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "StyleMeter":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"style meter not found: {path}")
        data = json.loads(path.read_text())
        return cls(data["styles"], torch.tensor(data["mean"]), torch.tensor(data["std"]))
