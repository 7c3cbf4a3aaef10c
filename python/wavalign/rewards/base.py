"""The reward-function convention (TRL-like) and composed rewards that never invent values.

A reward function is any callable

    fn(prompts, completions, **columns) -> list[float | None]

that may declare `required_columns = ("answer", ...)` (checked against the data at start-up)
and `needs_audio = True` (its completions then carry decoded audio).

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


@dataclass(frozen=True)
class RewardResult:
    """What a composed reward says about N completions: values, not side attributes.

    total:      [N] float64, NaN = no reward (see the missing policy); float64 because the
                weighted sum is formed in float64 and the TRL-style list returns it unrounded
    components: [N, K] float32, one column per component in `names`, NaN = that component
                gave no score
    missing:    per component name (and "composite") the number of completions without a score
    """

    total: torch.Tensor
    components: torch.Tensor
    names: tuple[str, ...]
    missing: dict[str, int]

    def component(self, name: str) -> torch.Tensor:
        """[N] float32 column of one component."""
        return self.components[:, self.names.index(name)]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: self.components[:, k] for k, name in enumerate(self.names)}

    def to_list(self) -> list[float | None]:
        """The TRL-style list: a float per completion, None where there is no reward."""
        return [None if math.isnan(v) else v for v in self.total.tolist()]


class CompositeReward:
    """Weighted sum of named rewards, keeping every component for logging.

    missing="drop": a completion lacking any component gets None (no reward at all).
    missing="renormalize": the present components' weights are rescaled to the full weight
    sum; a completion with no component at all still gets None. Never invents a value.

    ``score(...)`` returns a :class:`RewardResult`; calling the object returns the TRL-style
    list, so a composite is itself a reward function. ``needs_audio`` is True when any
    component listens to the waveform (declared by the component's class).
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

    @property
    def needs_audio(self) -> bool:
        return any(needs_audio(fn) for fn, _ in self.components.values())

    def column_needs(self) -> dict[str, tuple[str, ...]]:
        """Component name -> the dataset columns it reads (declared as `required_columns`)."""
        return {name: required_columns(fn) for name, (fn, _) in self.components.items() if required_columns(fn)}

    def score(self, prompts, completions, **columns) -> RewardResult:
        scores = [score_batch(fn, prompts, completions, **columns) for fn, _ in self.components.values()]
        weights = torch.tensor([w for _, w in self.components.values()], dtype=torch.float64)
        table = torch.stack([s.double() for s in scores], dim=1)  # [N, K]
        present = ~torch.isnan(table)
        weighted = torch.where(present, table, torch.zeros_like(table)) * weights
        if self.missing == "drop":
            total = weighted.sum(dim=1)
            valid = present.all(dim=1)
        else:
            present_weight = (present.double() * weights).sum(dim=1)
            total = weighted.sum(dim=1) * weights.sum() / present_weight.clamp(min=1e-300)
            valid = present.any(dim=1)
        total = torch.where(valid, total, torch.full_like(total, math.nan))
        names = tuple(self.components)
        missing = {name: int(torch.isnan(s).sum()) for name, s in zip(names, scores)}
        missing["composite"] = int((~valid).sum())
        return RewardResult(total=total, components=torch.stack(scores, dim=1), names=names, missing=missing)

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return self.score(prompts, completions, **columns).to_list()


def needs_audio(fn) -> bool:
    """Does this reward listen to Completion.audio? Declared by the reward (attribute or property)."""
    return bool(getattr(fn, "needs_audio", False))


def required_columns(fn) -> tuple[str, ...]:
    """The dataset columns a reward reads (its `required_columns`; none when undeclared), so
    data lacking them fails at start-up instead of at the first step."""
    return tuple(getattr(fn, "required_columns", ()) or ())
