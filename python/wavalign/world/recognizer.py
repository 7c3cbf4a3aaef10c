"""The world's recognizer: closed-vocabulary ASR by dynamic time warping.

Every response the world can say is a known sentence, so recognition picks the sentence
whose spoken templates (one per style, synthesised once and passed through the unit
tokenizer, like any policy output) lie nearest under DTW on cepstral features (the native
wavalign.ops.dtw_nearest, exact, with early abandoning; twin: reference.dtw). A policy that
mumbles still gets *a* transcript — the nearest sentence — and the distance is returned so
callers can reject audio that resembles nothing (see `max_distance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from wavalign.ops import dtw_nearest
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


@dataclass
class Recognition:
    text: str
    distance: float  # mean per-frame DTW cost to the chosen template (inf for silence)


class Recognizer:
    def __init__(self, sentences: list[str], owners: torch.Tensor, templates: torch.Tensor, lengths: torch.Tensor):
        self.sentences = sentences  # the closed vocabulary
        self.owners = owners.long().contiguous()  # [K] index into sentences of each template
        self.templates = templates.float().contiguous()  # [K, Tmax, N_CEPSTRA]
        self.lengths = lengths.long().contiguous()  # [K]
        self._index = {sentence: i for i, sentence in enumerate(sentences)}

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

    def recognize(self, wave=None, *, frames: audio.Frames | None = None, hint: str | None = None) -> Recognition:
        """The closest sentence to a waveform (or to its already analysed frames). hint: a
        sentence the audio probably says (e.g. the response's text channel), tried first so
        the search ends sooner; the answer does not depend on it."""
        return self.recognize_many([frames if frames is not None else audio.analyze(wave)], [hint])[0]

    def recognize_many(self, frames: Sequence[audio.Frames], hints: Sequence[str | None] | None = None
                       ) -> list[Recognition]:
        """recognize() of many analysed utterances in one native call (parallel over them)."""
        hints = list(hints) if hints is not None else [None] * len(frames)
        if len(hints) != len(frames):
            raise ValueError(f"{len(frames)} utterances but {len(hints)} hints")
        queries = [cepstra(f) for f in frames]  # [T_q, N_CEPSTRA] each
        usable = [q for q, query in enumerate(queries) if query.shape[0] >= 2]
        out = [Recognition("", math.inf)] * len(frames)
        if not usable:
            return out
        longest = max(queries[q].shape[0] for q in usable)
        batch = torch.zeros(len(usable), longest, N_CEPSTRA)  # [Q, T_max, N_CEPSTRA], zero padded
        for row, q in enumerate(usable):
            batch[row, : queries[q].shape[0]] = queries[q]
        nearest = dtw_nearest(batch, torch.tensor([queries[q].shape[0] for q in usable]), self.templates,
                              self.lengths, template_groups=self.owners,
                              hint_groups=torch.tensor([self._index.get(hints[q], -1) for q in usable]))
        for row, q in enumerate(usable):
            best = int(nearest.index[row])
            out[q] = Recognition(self.sentences[int(self.owners[best])], float(nearest.distance[row]))
        return out

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
