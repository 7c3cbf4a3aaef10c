"""Turn per-prompt records into summaries with confidence intervals, comparisons and tables."""

from __future__ import annotations

import math
from typing import Sequence

from wavalign.eval.core import METRICS, metric_digits, metric_label, metric_names
from wavalign.eval.stats import DEFAULT_RESAMPLES, Interval, mean_ci, paired_difference_ci, win_rate_ci

def label(name: str) -> str:
    return metric_label(name)  # the one label table: wavalign.train.evaluator.METRIC_LABELS


def digits(name: str) -> int:
    return metric_digits(name)


def summarize(records: Sequence[dict], resamples: int = DEFAULT_RESAMPLES) -> dict[str, Interval]:
    return {name: mean_ci([r[name] for r in records], resamples=resamples) for name in metric_names(records)}


def _aligned(a: Sequence[dict], b: Sequence[dict]) -> None:
    ids_a, ids_b = [r["id"] for r in a], [r["id"] for r in b]
    if ids_a != ids_b:
        raise ValueError(f"the two evaluations cover different prompts ({len(ids_a)} vs {len(ids_b)}, or another "
                         "order); compare results from the same split and limit")


def compare(a: Sequence[dict], b: Sequence[dict], resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Per-metric means of a and b, the paired difference b - a, and judge win rates of b over a."""
    _aligned(a, b)
    names = [n for n in metric_names(a) if n in b[0]] if a and b else []
    metrics = {}
    for name in names:
        xa, xb = [r[name] for r in a], [r[name] for r in b]
        metrics[name] = {"a": mean_ci(xa, resamples=resamples), "b": mean_ci(xb, resamples=resamples),
                         "difference": paired_difference_ci(xa, xb, resamples=resamples)}
    wins = {name: win_rate_ci([r[name] for r in a], [r[name] for r in b], resamples=resamples)
            for name in names if name == "reward" or name.startswith("reward/")}
    return {"metrics": metrics, "win_rate": wins}


def summary_table(summary: dict[str, Interval]) -> str:
    lines = ["| metric | mean | 95% CI | n |", "|---|---|---|---|"]
    for name, interval in summary.items():
        d = digits(name)
        ci = "n/a" if math.isnan(interval.low) else f"[{interval.low:.{d}f}, {interval.high:.{d}f}]"
        lines.append(f"| {label(name)} | {interval.mean:.{d}f} | {ci} | {interval.n} |")
    return "\n".join(lines)


def verdict(interval_low: float, interval_high: float, higher_is_better: bool | None) -> str:
    """The verdict on a change (new - old) from its confidence interval: 'better' or 'worse' when
    the interval excludes 0 (in the metric's direction), 'unresolved' when it holds 0, and ''
    for a metric without a direction (higher_is_better None) or an interval without bounds (NaN)."""
    if higher_is_better is None or math.isnan(interval_low):
        return ""
    if interval_low > 0:
        return "better" if higher_is_better else "worse"
    if interval_high < 0:
        return "worse" if higher_is_better else "better"
    return "unresolved"


def comparison_table(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"| metric | A: {name_a} | B: {name_b} | B - A [95% CI] | better |", "|---|---|---|---|---|"]
    for name, entry in result["metrics"].items():
        d = digits(name)
        diff: Interval = entry["difference"]
        outcome = verdict(diff.low, diff.high, METRICS.get(name, True))  # of B against A
        better = {"better": "B", "worse": "A"}.get(outcome, outcome)  # or 'unresolved', or ''
        lines.append(f"| {label(name)} | {entry['a'].mean:.{d}f} | {entry['b'].mean:.{d}f} | "
                     f"{diff.format(d, signed=True)} | {better} |")
    for name, interval in result["win_rate"].items():
        judge = "composite judge" if name == "reward" else f"judge {name.split('/', 1)[1]}"
        lines.append(f"\nwin rate of B over A by {judge} (ties count half): {interval.format(1)} % of "
                     f"{interval.n} prompts")
    return "\n".join(lines)


def jsonable(value):
    """Intervals -> dicts, NaN -> None, recursively (for json.dumps)."""
    if isinstance(value, Interval):
        return jsonable(value.to_dict())
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def records_from_json(records: Sequence[dict]) -> list[dict]:
    """Saved records have None for NaN; restore NaN so statistics skip them."""
    return [{k: (math.nan if v is None else v) for k, v in r.items()} for r in records]
