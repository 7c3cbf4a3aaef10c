"""The world's recognizer: closed-vocabulary ASR by dynamic time warping.

Every response the world can say is a known sentence, so recognition picks the sentence
whose spoken templates (one per style, synthesised once and passed through the unit
tokenizer, like any policy output) lie nearest under DTW on cepstral features. A policy that
mumbles still gets *a* transcript — the nearest sentence — and the distance is returned so
callers can reject audio that resembles nothing (see `max_distance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wavalign.world import audio

N_CEPSTRA = 12


def _dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    k = torch.arange(n_out, dtype=torch.float64)[:, None] + 1  # skip c0 (loudness)
    n = torch.arange(n_in, dtype=torch.float64)[None]
    return torch.cos(math.pi / n_in * (n + 0.5) * k).float().T  # [n_in, n_out]


_DCT = _dct_matrix(audio.N_MELS, N_CEPSTRA)


def cepstra(frames: audio.Frames, trim_db: float = 30.0) -> torch.Tensor:
    """Frames -> [T', N_CEPSTRA] mean/variance-normalised cepstra of the active span (frames
    within trim_db of the loudest), so loudness and channel colour do not count."""
    active = torch.nonzero(frames.energy_db > frames.energy_db.max() - trim_db).flatten()
    if active.numel() == 0:
        return torch.zeros(0, N_CEPSTRA)
    span = frames.log_mel[int(active[0]): int(active[-1]) + 1]
    c = span @ _DCT
    return (c - c.mean(dim=0)) / c.std(dim=0, unbiased=False).clamp_min(1e-3) if c.shape[0] > 1 else c - c.mean(0)


def dtw_distances(query: torch.Tensor, templates: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """query [Tq, C], templates [K, Tmax, C] (zero padded), lengths [K] -> [K] path cost / Tq.

    Steps (i-1, j), (i-1, j-1), (i-1, j-2): the query may be slower than a template by any
    factor or up to twice as fast; the path runs from both first frames to both last frames.
    One row of the cost matrix per step, vectorised over templates and template frames.
    """
    tq = query.shape[0]
    if tq == 0:
        return torch.full((templates.shape[0],), math.inf)
    k, tmax = templates.shape[:2]
    cost = torch.cdist(query[None].expand(k, -1, -1), templates)  # [K, Tq, Tmax]
    # padded[:, j + 2] = total[:, j]; the two leading columns stay inf (no step from before j = 0)
    padded = torch.full((k, tmax + 2), math.inf)
    total = padded[:, 2:]
    total[:, 0] = cost[:, 0, 0]
    for i in range(1, tq):
        best = torch.minimum(torch.minimum(padded[:, 2:], padded[:, 1:-1]), padded[:, :-2])
        torch.add(cost[:, i], best, out=total)
    final = total.gather(1, (lengths - 1).clamp_min(0)[:, None]).squeeze(1)
    return final / tq


@dataclass
class Recognition:
    text: str
    distance: float  # mean per-frame DTW cost to the chosen template (inf for silence)


class Recognizer:
    def __init__(self, sentences: list[str], owners: torch.Tensor, templates: torch.Tensor, lengths: torch.Tensor):
        self.sentences = sentences  # the closed vocabulary
        self.owners = owners  # [K] index into sentences of each template
        self.templates = templates  # [K, Tmax, N_CEPSTRA]
        self.lengths = lengths  # [K]

    @classmethod
    def from_waves(cls, sentences: list[str], waves: list[list]) -> "Recognizer":
        """waves[s] = the template waveforms of sentences[s] (e.g. one per style)."""
        feats, owners = [], []
        for index, group in enumerate(waves):
            for wave in group:
                feats.append(cepstra(audio.analyze(wave)))
                owners.append(index)
        lengths = torch.tensor([f.shape[0] for f in feats])
        templates = torch.zeros(len(feats), int(lengths.max()), N_CEPSTRA)
        for k, f in enumerate(feats):
            templates[k, : f.shape[0]] = f
        return cls(list(sentences), torch.tensor(owners), templates, lengths)

    def recognize(self, wave=None, *, frames: audio.Frames | None = None) -> Recognition:
        """The closest sentence to a waveform (or to its already analysed frames)."""
        query = cepstra(frames if frames is not None else audio.analyze(wave))
        if query.shape[0] < 2:
            return Recognition("", math.inf)
        distances = dtw_distances(query, self.templates, self.lengths)
        best = int(distances.argmin())
        return Recognition(self.sentences[int(self.owners[best])], float(distances[best]))

    def save(self, path: str | Path) -> None:
        save_file({"owners": self.owners, "templates": self.templates.contiguous(), "lengths": self.lengths},
                  str(path), metadata={"sentences": "\n".join(self.sentences)})

    @classmethod
    def load(cls, path: str | Path) -> "Recognizer":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recognizer not found: {path}")
        with safe_open(str(path), "pt") as handle:
            sentences = handle.metadata()["sentences"].split("\n")
        t = load_file(str(path))
        return cls(sentences, t["owners"], t["templates"], t["lengths"])
