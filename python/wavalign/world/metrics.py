"""Exact, noise-free metrics of the world (what evaluation reports):

- **IQ**: the text channel answers correctly — its last word equals the gold answer (%).
- **EQ**: style score 1-5 of the spoken channel, 1 + 4 * P(requested style) from the style
  meter on the detokenised audio (or on the response's own waveform, see
  WorldScorer.assess_audio); a response with no speech scores 1.
- **consistency**: WER between the text channel and the recognised speech (lower is better;
  1.0 when there is no speech).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from wavalign.rewards.audio import as_waveform
from wavalign.world.audio import HOP, SAMPLE_RATE, analyze
from wavalign.world.recognizer import Recognizer
from wavalign.world.style_meter import StyleMeter, measure
from wavalign.world.units import UnitTokenizer

MIN_SPEECH_UNITS = 3  # fewer units than this is not an utterance
MIN_SPEECH_SAMPLES = (MIN_SPEECH_UNITS - 1) * HOP  # the length MIN_SPEECH_UNITS units decode to


def _listen_workers() -> int:
    """Threads for assess_many: one per core, at most 4 (a response takes a few ms)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@contextmanager
def _one_torch_thread():
    """Listening runs with one torch intra-op thread, always: the small FFTs do not gain from
    more, two pools (ours and torch's) on two cores slow each other down (measured:
    benchmarks/RESULTS.md, "Training step"), and the thread count changes FFT rounding, so a
    fixed count keeps a response's assessment independent of batching and of the machine's
    core count. Restored afterwards; nested uses are no-ops."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def normalize(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words / reference length (hypothesis length if reference is empty)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)


def answer_correct(text: str, answer: str) -> bool:
    words = normalize(text)
    return bool(words) and words[-1] == answer.lower()


@dataclass
class Assessment:
    correct: bool  # IQ term
    eq: float  # 1-5
    wer: float  # text channel vs recognised speech
    recognized: str
    style_probabilities: dict[str, float]

    @property
    def semantic_score(self) -> float:
        """The exact 1-5 quantity the semantic judge estimates: correctness plus agreement."""
        return 1.0 + 2.0 * self.correct + 2.0 * (1.0 - min(self.wer, 1.0))


class WorldScorer:
    """Listens to responses: detokenise units (or take the response's own waveform), recognise,
    measure style."""

    def __init__(self, units: UnitTokenizer, recognizer: Recognizer, meter: StyleMeter, cache_size: int = 4096):
        self.units, self.recognizer, self.meter = units, recognizer, meter
        self._cache: dict[tuple, Assessment] = {}
        self._cache_size = cache_size

    def wave(self, speech_units: Sequence[int]) -> torch.Tensor:
        return self.units.decode(list(speech_units))

    def assess(self, text: str, speech_units: Sequence[int], answer: str, style: str) -> Assessment:
        """A response whose speech is world units, detokenised by the world's vocoder."""
        units = tuple(int(u) for u in speech_units)
        return self._cached((text, units, answer, style), lambda: self._listen_units(text, units, answer, style))

    def assess_many(self, items: Sequence[tuple[str, Sequence[int], str, str]]) -> list[Assessment]:
        """assess() of many (text, speech_units, answer, style) at once, each exactly as assess()
        would: the responses not heard yet are vocoded and analysed on a few threads (torch and
        numpy release the GIL) and recognised in one native call, parallel over responses."""
        keys = [(text, tuple(int(u) for u in units), answer, style) for text, units, answer, style in items]
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        if len(missing) > 1:
            with _one_torch_thread():
                self._listen_many(missing)
        return [self.assess(text, units, answer, style) for text, units, answer, style in keys]

    def _listen_many(self, missing: list[tuple]) -> None:
        """Listen to (text, units, answer, style) keys not in the cache, and cache them."""
        def frames_of(units):
            return analyze(self.wave(units)) if len(units) >= MIN_SPEECH_UNITS else None

        with ThreadPoolExecutor(max_workers=min(len(missing), _listen_workers())) as pool:
            frames = list(pool.map(frames_of, (key[1] for key in missing)))
        speaking = [i for i, f in enumerate(frames) if f is not None]
        heard = self.recognizer.recognize_many([frames[i] for i in speaking],
                                               [" ".join(normalize(missing[i][0])) for i in speaking])
        transcripts = dict(zip(speaking, (r.text for r in heard)))
        for i, (text, _, answer, style) in enumerate(missing):
            assessment = self._judge(text, frames[i], transcripts.get(i), answer, style)
            self._cached(missing[i], lambda assessment=assessment: assessment)

    def _listen_units(self, text: str, units: tuple, answer: str, style: str) -> Assessment:
        return self._listen(text, self.wave(units) if len(units) >= MIN_SPEECH_UNITS else None, answer, style)

    def assess_audio(self, text: str, audio, sample_rate: int | None, answer: str, style: str) -> Assessment:
        """A response whose speech is a waveform — audio: [S] float at sample_rate, e.g. from a
        model's own speech decoder — resampled to the world's SAMPLE_RATE (band-limited, soxr:
        wavalign.audio_io.resample) before listening. Cached by a hash of the waveform."""
        wave = as_waveform(audio, sample_rate, SAMPLE_RATE, "world scorer")  # [S'] float32 at SAMPLE_RATE
        digest = hashlib.sha256(wave.numpy().tobytes()).hexdigest()
        return self._cached((text, ("audio", digest), answer, style), lambda: self._listen(text, wave, answer, style))

    def _cached(self, key: tuple, listen) -> Assessment:
        # Both judges (and evaluation) listen to the same response; listen once.
        if key not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            with _one_torch_thread():  # as assess_many listens, so results never depend on batching
                self._cache[key] = listen()
        return self._cache[key]

    def _listen(self, text: str, wave: torch.Tensor | None, answer: str, style: str) -> Assessment:
        """wave: [S] float32 at SAMPLE_RATE, or None for a response without speech."""
        if wave is None or wave.shape[0] < MIN_SPEECH_SAMPLES:
            return self._judge(text, None, None, answer, style)
        frames = analyze(wave)  # listened to once, for the recognizer and the style meter
        heard = self.recognizer.recognize(frames=frames, hint=" ".join(normalize(text))).text
        return self._judge(text, frames, heard, answer, style)

    def _judge(self, text: str, frames, heard: str | None, answer: str, style: str) -> Assessment:
        """The assessment of a response from its analysed speech (None: no speech) and transcript."""
        if style not in self.meter.styles:
            raise ValueError(f"unknown style {style!r}; the world has {self.meter.styles}")
        correct = answer_correct(text, answer)
        if frames is None:
            return Assessment(correct, 1.0, 1.0, "", {s: math.nan for s in self.meter.styles})
        probabilities = self.meter.probabilities(measure(frames, heard))
        return Assessment(correct, 1.0 + 4.0 * probabilities[style], word_error_rate(text, heard), heard,
                          probabilities)


def summarize(assessments: Sequence[Assessment]) -> dict[str, float]:
    n = len(assessments)
    if n == 0:
        raise ValueError("nothing to summarise")
    return {"IQ": 100.0 * sum(a.correct for a in assessments) / n,
            "EQ": sum(a.eq for a in assessments) / n,
            "WER": sum(a.wer for a in assessments) / n,
            "n": n}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (NaN pairs dropped)."""
    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return torch.tensor(out, dtype=torch.float64)

    rx, ry = ranks([a for a, _ in pairs]), ranks([b for _, b in pairs])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return math.nan if denominator == 0 else float((rx * ry).sum()) / denominator
