"""The reward-function convention (TRL-like) and composed rewards that never invent values.

A reward function is any callable

    fn(prompts, completions, **columns) -> list[float | None]

with one entry per completion. ``None`` (or NaN) means "no score": a failed judge call, an
unparseable answer. It becomes NaN downstream and is excluded from group statistics and
counted; it is never replaced by a neutral score. ``completions`` are :class:`Completion`
objects (text channel, speech units, audio when available); dataset columns arrive as
keyword arguments, one list per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch


@dataclass
class Completion:
    """One sampled response, as reward functions see it."""

    text: str = ""  # the text channel
    speech_units: list[int] = field(default_factory=list)
    audio: Any = None  # waveform (e.g. a 1-D float tensor) when available
    sample_rate: int | None = None
    ids: list[int] = field(default_factory=list)


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Completion], **columns) -> list[float | None]: ...


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def score_batch(fn: Callable, prompts: Sequence[Any], completions: Sequence[Completion], **columns) -> torch.Tensor:
    """Call one reward function and check what it returned. -> [len(completions)] float32, NaN = no score.

    Raises TypeError / ValueError (naming the function and the position) for a wrong length,
    a non-numeric entry or an infinite score — those are bugs, not missing rewards.
    """
    scores = fn(prompts, completions, **columns)
    try:
        values = list(scores)
    except TypeError:
        raise TypeError(f"reward {_name(fn)} must return a list, got {type(scores).__name__}") from None
    if len(values) != len(completions):
        raise ValueError(f"reward {_name(fn)} returned {len(values)} scores for {len(completions)} completions")
    out = []
    for index, value in enumerate(values):
        if value is None:
            out.append(float("nan"))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"reward {_name(fn)} returned {value!r} at position {index}; expected a number or None")
        if math.isinf(value):
            raise ValueError(f"reward {_name(fn)} returned {value} at position {index}; use None for 'no score'")
        out.append(float(value))
    return torch.tensor(out, dtype=torch.float32)


MISSING_POLICIES = ("drop", "renormalize")


class CompositeReward:
    """Weighted sum of named rewards, keeping every component for logging.

    missing="drop": a completion lacking any component gets None (no reward at all).
    missing="renormalize": the present components' weights are rescaled to the full weight
    sum; a completion with no component at all still gets None. Never invents a value.
    """

    def __init__(self, components: dict[str, tuple[Callable, float]], missing: str = "drop"):
        if not components:
            raise ValueError("CompositeReward needs at least one component")
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        for name, (fn, weight) in components.items():
            if not callable(fn):
                raise TypeError(f"component {name!r} is not callable")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"component {name!r} needs a finite weight > 0, got {weight!r}")
        self.components = dict(components)
        self.missing = missing
        self.__name__ = "composite(" + ",".join(self.components) + ")"
        self.last_components: dict[str, torch.Tensor] = {}
        self.last_stats: dict[str, float] = {}

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        scores = {name: score_batch(fn, prompts, completions, **columns)
                  for name, (fn, _) in self.components.items()}
        weights = torch.tensor([w for _, w in self.components.values()], dtype=torch.float64)
        table = torch.stack([scores[name].double() for name in self.components], dim=1)  # [N, K]
        present = ~torch.isnan(table)
        weighted = torch.where(present, table, torch.zeros_like(table)) * weights
        if self.missing == "drop":
            total = weighted.sum(dim=1)
            valid = present.all(dim=1)
        else:
            present_weight = (present.double() * weights).sum(dim=1)
            total = weighted.sum(dim=1) * weights.sum() / present_weight.clamp(min=1e-300)
            valid = present.any(dim=1)
        self.last_components = scores
        self.last_stats = {f"reward/{name}_missing": float(torch.isnan(s).sum()) for name, s in scores.items()}
        self.last_stats["reward/composite_missing"] = float((~valid).sum())
        return [float(t) if ok else None for t, ok in zip(total.tolist(), valid.tolist())]
