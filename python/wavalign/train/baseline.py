"""The SFT-only baseline the training CLI can train beside a run (eval.baseline: sft), and the
table that compares the two on the same prompts.

The baseline is the run's own config with mode sft: the same base policy, gold-bearing
records, steps, prompts per step, learning rate and evaluator. It lives inside the run
directory (<run>/sft_only/), so one directory holds the whole comparison. Both evaluations
write per-prompt records (<dir>/eval/<label>.jsonl); the table pairs them by prompt.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from wavalign.stats import nanmean, paired_difference_ci
from wavalign.train.config import TrainConfig, apply_override

BASELINE_DIR = "sft_only"
MODE_LABELS = {"hybrid": "WavAlign", "grpo": "GRPO", "dpo": "DPO", "sft": "SFT"}


def baseline_config(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The SFT-only twin of `config`, writing to <run_dir>/sft_only (base evaluation not repeated)."""
    data = config.to_dict()
    for override in ("mode=sft", "eval.before=false", "eval.baseline=null", f"run.output_dir={run_dir}",
                     f"run.name={BASELINE_DIR}"):
        apply_override(data, override)
    return TrainConfig.from_dict(data)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"per-prompt evaluation records not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparison_table(base: list[dict], sft_only: list[dict], trained: list[dict], label: str,
                     *, resamples: int = 2000) -> str:
    """Markdown: metric | base | SFT only | <label> | <label> - SFT only [95% CI, paired over prompts]."""
    from wavalign.train.evaluator import metric_digits, table_label

    for name, records in (("SFT only", sft_only), (label, trained)):
        if [r["id"] for r in records] != [r["id"] for r in base]:
            raise ValueError(f"the {name} evaluation covers other prompts than the base evaluation; cannot pair them")
    names = ["IQ", "EQ", "WER", "reward"] + sorted({k for k in trained[0] if k.startswith("reward/")})
    lines = [f"| metric (test split, greedy) | base | SFT only | {label} | {label} − SFT only [95% CI] |",
             "|---|---|---|---|---|"]
    for key in names:
        if key not in trained[0]:
            continue
        column = {name: [math.nan if r.get(key) is None else float(r[key]) for r in records]
                  for name, records in (("base", base), ("sft", sft_only), ("trained", trained))}
        digits = metric_digits(key)
        means = [nanmean(column[name]) for name in ("base", "sft", "trained")]
        difference = paired_difference_ci(column["sft"], column["trained"], resamples=resamples)
        lines.append(f"| {table_label(key)} | " + " | ".join(f"{m:.{digits}f}" for m in means)
                     + f" | {difference.format(digits, signed=True)}{_verdict(difference)} |")
    return "\n".join(lines)


def _verdict(interval) -> str:
    """' (resolved)' when the interval excludes 0."""
    if math.isnan(interval.low):
        return ""
    return " (resolved)" if interval.low > 0 or interval.high < 0 else ""
