"""Bootstrap confidence intervals for evaluation metrics.

All intervals are percentile bootstrap 95% intervals over prompts (the unit that varies
between evaluations). Paired statistics resample the same prompt indices for both policies,
which is what makes a difference between two policies on one test set resolvable. With
several training seeds, `seeded_mean_ci` resamples seeds and prompts (two levels), so the
interval also carries the run-to-run variation of training.

NaN values (no judge score) are ignored, and the count of valid values is reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self, digits: int = 2, signed: bool = False) -> str:
        if math.isnan(self.mean):
            return "n/a"
        sign = "+" if signed else ""
        return f"{self.mean:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def _as_array(values: Sequence[float], name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if np.isinf(array).any():
        raise ValueError(f"{name} contains an infinite value")
    return array


def _interval(point: float, resampled: np.ndarray, n: int, confidence: float) -> Interval:
    resampled = resampled[~np.isnan(resampled)]
    if resampled.size == 0:
        return Interval(point, math.nan, math.nan, n)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return Interval(float(point), float(low), float(high), n)


def _nanmean_rows(matrix: np.ndarray) -> np.ndarray:
    """Mean of each row ignoring NaN; NaN for an all-NaN row (no warning)."""
    valid = ~np.isnan(matrix)
    counts = valid.sum(axis=-1)
    sums = np.where(valid, matrix, 0.0).sum(axis=-1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def nanmean(values: Sequence[float]) -> float:
    """Mean of the entries with NaN (no score) skipped; NaN when every entry is NaN (or there are none)."""
    return float(_nanmean_rows(np.asarray(values, dtype=np.float64).reshape(1, -1))[0])


def _bootstrap_mean(values: np.ndarray, resamples: int, confidence: float, seed: int) -> Interval:
    """Mean of a 1-D array without NaN, with a percentile bootstrap interval over its entries."""
    if values.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.size, size=(resamples, values.size))
    return _interval(float(values.mean()), values[index].mean(axis=1), int(values.size), confidence)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The prompts both a and b have a value for -> (a', b')."""
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length, got {a.size} and {b.size}")
    both = ~(np.isnan(a) | np.isnan(b))
    return a[both], b[both]


def mean_ci(values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
            seed: int = 0) -> Interval:
    """Mean of the non-NaN values with a bootstrap interval."""
    array = _as_array(values)
    return _bootstrap_mean(array[~np.isnan(array)], resamples, confidence, seed)


def paired_difference_ci(a: Sequence[float], b: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                         confidence: float = 0.95, seed: int = 0) -> Interval:
    """mean(b) - mean(a) over the prompts both have a value for, prompts resampled jointly."""
    a, b = _paired(a, b)
    return _bootstrap_mean(b - a, resamples, confidence, seed)


def win_rate_ci(a: Sequence[float], b: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                confidence: float = 0.95, seed: int = 0) -> Interval:
    """Fraction of prompts where b scores above a (ties count one half), in percent."""
    a, b = _paired(a, b)
    wins = 100.0 * np.where(b > a, 1.0, np.where(b == a, 0.5, 0.0))
    return _bootstrap_mean(wins, resamples, confidence, seed)


def seeded_mean_ci(matrix: Sequence[Sequence[float]], *, baseline: Sequence[float] | None = None,
                   resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean over seeds and prompts of matrix[seed][prompt], resampling seeds and prompts.

    With `baseline` (one value per prompt, e.g. the base policy), the statistic is the mean
    difference matrix - baseline, with the same prompt resample applied to both (paired).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"matrix must be [seeds, prompts], got shape {m.shape}")
    if np.isinf(m).any():
        raise ValueError("matrix contains an infinite value")
    if baseline is not None:
        base = _as_array(baseline, "baseline")
        if base.size != m.shape[1]:
            raise ValueError(f"baseline has {base.size} prompts, matrix has {m.shape[1]}")
        m = m - base[None, :]
    if np.isnan(m).all():
        return Interval(math.nan, math.nan, math.nan, 0)
    seeds, prompts = m.shape
    rng = np.random.default_rng(seed)
    point = float(np.nanmean(m))
    estimates = np.empty(resamples)
    for i in range(resamples):  # [seeds', prompts'] resample, then the mean of the valid cells
        rows = rng.integers(0, seeds, size=seeds)
        cols = rng.integers(0, prompts, size=prompts)
        cells = m[np.ix_(rows, cols)]
        estimates[i] = _nanmean_rows(cells.reshape(1, -1))[0]
    return _interval(point, estimates, int((~np.isnan(m)).sum()), confidence)
