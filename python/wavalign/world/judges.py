"""The world's judges, as reward functions (wavalign.rewards convention).

Both score 1-5 and estimate an exact quantity of metrics.py with an error model
(config.JudgeNoise): the **semantic judge** estimates correctness + text/speech agreement and
is fairly reliable; the **acoustic judge** estimates the style score (EQ) and is much less
reliable, as the paper reports for real audio judges. A failed call returns None and is
counted in `failures` and logged; it is never replaced by a made-up score.

Noise comes from the judge's own seeded stream, or, when the caller passes a `sample_key`
column (the trainer passes "step:global_row"), from a stream keyed by (seed, key): then a
sample's score does not depend on call order, so a resumed run or a batch split across
processes gets exactly the scores of one uninterrupted process.
Their Spearman correlation with the exact quantities is measured at build time (report.json).

A completion is heard through its `audio` waveform when it has one (at its `sample_rate`,
resampled to the world's rate; a real model ships its own speech decoder), and through its
world `speech_units` otherwise; `audio` without `sample_rate` raises ValueError.
"""

from __future__ import annotations

import logging
import random
from typing import Sequence

from wavalign.rewards.base import Completion
from wavalign.world.config import JudgeNoise
from wavalign.world.metrics import Assessment, WorldScorer

log = logging.getLogger(__name__)


def prefetch(scorer: WorldScorer, completions: Sequence[Completion], answer: Sequence[str], style: Sequence[str]) -> None:
    """Listen to a batch's unit-speech completions at once (WorldScorer.assess_many), so the
    per-completion assess() calls that follow hit the scorer's cache."""
    assess_many = getattr(scorer, "assess_many", None)  # a stand-in scorer may only assess one at a time
    items = [(c.text, c.speech_units, a, s) for c, a, s in zip(completions, answer, style) if c.audio is None]
    if assess_many is not None and len(items) > 1:
        assess_many(items)


def assess(scorer: WorldScorer, completion: Completion, answer: str, style: str) -> Assessment:
    """Listen to the completion's waveform when it has one, else to its world speech units."""
    if completion.audio is not None:
        return scorer.assess_audio(completion.text, completion.audio, completion.sample_rate, answer, style)
    return scorer.assess(completion.text, completion.speech_units, answer, style)


class _WorldJudge:
    name = "judge"

    required_columns = ("answer", "style")  # what the world's exact assessment needs

    def __init__(self, scorer: WorldScorer, noise: JudgeNoise, seed: int = 0):
        self.scorer = scorer
        self.noise = noise
        self.seed = seed
        self.rng = random.Random(f"{self.name}:{seed}")
        self.calls = 0
        self.failures = 0

    @property
    def __name__(self) -> str:
        return self.name

    def exact(self, assessment: Assessment) -> float:
        raise NotImplementedError

    def judge(self, assessment: Assessment, key: str | None = None) -> float | None:
        rng = self.rng if key is None else random.Random(f"{self.name}:{self.seed}:{key}")
        self.calls += 1
        if self.noise.failure_rate and rng.random() < self.noise.failure_rate:
            self.failures += 1
            log.warning("%s: call failed (%d of %d so far); no score", self.name, self.failures, self.calls)
            return None
        value = self.exact(assessment) + self.noise.bias + rng.gauss(0.0, self.noise.noise_std)
        return float(min(5, max(1, round(value))))

    def __call__(self, prompts: Sequence, completions: Sequence[Completion], *, answer: Sequence[str],
                 style: Sequence[str], sample_key: Sequence[str] | None = None, **_columns) -> list[float | None]:
        """1-5 or None per completion, hearing its `audio` when given, else its `speech_units`."""
        keys = [None] * len(completions) if sample_key is None else list(sample_key)
        if not (len(completions) == len(answer) == len(style) == len(keys)):
            raise ValueError(f"{self.name}: {len(completions)} completions but {len(answer)} answers, "
                             f"{len(style)} styles and {len(keys)} sample keys")
        prefetch(self.scorer, completions, answer, style)
        return [self.judge(assess(self.scorer, c, a, s), k)
                for c, a, s, k in zip(completions, answer, style, keys)]


class SemanticJudge(_WorldJudge):
    name = "semantic_judge"

    def exact(self, assessment: Assessment) -> float:
        return assessment.semantic_score


class AcousticJudge(_WorldJudge):
    name = "acoustic_judge"

    def exact(self, assessment: Assessment) -> float:
        return assessment.eq


class ExactScore:
    """The exact quantity a world judge estimates (semantic: correctness + agreement; acoustic:
    EQ), with no noise, rounding or failures. An oracle reward for diagnostics: it shows what
    an algorithm does when the reward is right, separately from what judge noise does to it.
    Like the judges, it hears a completion's `audio` when given, else its `speech_units`."""

    required_columns = ("answer", "style")

    def __init__(self, scorer: WorldScorer, quantity: str):
        if quantity not in ("semantic", "acoustic"):
            raise ValueError(f"quantity must be 'semantic' or 'acoustic', got {quantity!r}")
        self.scorer, self.quantity = scorer, quantity
        self.__name__ = f"{quantity}_exact"

    def __call__(self, prompts: Sequence, completions: Sequence[Completion], *, answer: Sequence[str],
                 style: Sequence[str], **_columns) -> list[float]:
        if not (len(completions) == len(answer) == len(style)):
            raise ValueError(f"{self.__name__}: {len(completions)} completions but {len(answer)} answers and "
                             f"{len(style)} styles")
        prefetch(self.scorer, completions, answer, style)
        out = []
        for c, a, s in zip(completions, answer, style):
            assessment = assess(self.scorer, c, a, s)
            out.append(float(assessment.semantic_score if self.quantity == "semantic" else assessment.eq))
        return out
