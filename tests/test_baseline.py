"""The SFT-only baseline beside a run (eval.baseline: sft) and its paired comparison table."""

from __future__ import annotations

import json

import pytest

from wavalign.train.baseline import baseline_config, comparison_table
from wavalign.train.config import ConfigError, TrainConfig


def _records(values, key="IQ", ids=None):
    ids = ids or [f"p{i}" for i in range(len(values))]
    return [{"id": i, key: v, "EQ": 3.0, "WER": 0.1, "reward": 3.0} for i, v in zip(ids, values)]


def test_comparison_pairs_prompts_and_marks_resolved_differences():
    base = _records([0.0] * 40)
    sft = _records([0.0, 100.0] * 20)
    better = _records([100.0] * 40)  # +50 over SFT only on every prompt pair
    table = comparison_table(base, sft, better, "WavAlign", resamples=400)
    row = next(line for line in table.splitlines() if line.startswith("| IQ"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["0.0", "50.0", "100.0"]
    assert cells[4].startswith("+50.0 [") and cells[4].endswith("(resolved)")
    same = comparison_table(base, sft, sft, "WavAlign", resamples=400)
    assert "(resolved)" not in next(line for line in same.splitlines() if line.startswith("| IQ"))
    with pytest.raises(ValueError, match="other prompts"):
        comparison_table(base, sft, _records([1.0] * 40, ids=[f"q{i}" for i in range(40)]), "WavAlign")


def test_baseline_config_is_the_run_in_sft_mode_inside_its_directory(tmp_path):
    config = TrainConfig.load(None, ["eval.baseline=sft", "optim.steps=7", "optim.lr=3e-4"])
    twin = baseline_config(config, tmp_path / "run")
    assert twin.mode == "sft" and twin.eval.baseline is None and not twin.eval.before
    assert (twin.optim.steps, twin.optim.lr, twin.optim.prompts_per_step) == (7, 3e-4, config.optim.prompts_per_step)
    assert twin.run.output_dir == str(tmp_path / "run") and twin.run.name == "sft_only"
    with pytest.raises(ConfigError, match="eval.baseline"):
        TrainConfig.load(None, ["eval.baseline=grpo"])


@pytest.mark.slow
def test_cli_trains_the_baseline_and_prints_three_columns(fast_world, tmp_path, capsys):
    from wavalign.train.__main__ import main

    code = main(["--fast", "--name", "cmp", "--set", f"run.output_dir={tmp_path}", "--set", "optim.steps=2",
                 "--set", "eval.limit=6", "--set", "eval.baseline=sft", "--set", "run.progress=false"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| metric (test split, greedy) | base | SFT only | WavAlign | WavAlign − SFT only [95% CI] |" in out
    run = tmp_path / "cmp"
    for path in (run / "eval" / "before.jsonl", run / "eval" / "after.jsonl", run / "sft_only" / "eval" / "after.jsonl",
                 run / "table.md"):
        assert path.is_file(), path
    sft_config = (run / "sft_only" / "config.yaml").read_text()
    assert "mode: sft" in sft_config
    assert (run / "table.md").read_text().startswith("| metric (test split, greedy) | base | SFT only |")
    records = [json.loads(line) for line in (run / "sft_only" / "eval" / "after.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all("IQ" in r for r in records)
