"""`python -m wavalign.eval` and the ablation runner on the fast built-in world."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from wavalign.eval.ablation import AblationConfig
from wavalign.train.config import ConfigError

FAST = ["--set", "data.world=fast", "--set", "eval.limit=8", "--set", "rollout.max_new_tokens=48"]


def run(args, cwd, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_eval_scores_the_base_policy_exactly_and_compares_it_with_itself(fast_world, tmp_path):
    first = run(["-m", "wavalign.eval", *FAST, "--out", "base.json", "--resamples", "200"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| IQ (% correct) |" in first.stdout and "95% CI" in first.stdout
    saved = json.loads((tmp_path / "base.json").read_text())
    assert saved["n"] == 8 and len(saved["records"]) == 8

    # The evaluator's IQ / EQ / WER are the world's own exact metrics for the same greedy responses.
    summary, _ = fast_world.evaluate(fast_world.load_policy(), "test", limit=8, max_new_tokens=48)
    records = saved["records"]
    assert sum(r["IQ"] for r in records) / 8 == pytest.approx(summary["IQ"])
    assert sum(r["EQ"] for r in records) / 8 == pytest.approx(summary["EQ"])
    assert sum(r["WER"] for r in records) / 8 == pytest.approx(summary["WER"])
    assert all(1.0 <= r["reward"] <= 5.0 for r in records if r["reward"] is not None)

    # Scoring again gives the same responses and judge noise: zero difference, 50% win rate.
    again = run(["-m", "wavalign.eval", *FAST, "--compare", "base", "base.json", "--resamples", "200",
                 "--out", "cmp.json"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads((tmp_path / "cmp.json").read_text())
    for name, entry in result["metrics"].items():
        assert entry["difference"]["mean"] == 0.0, name
    assert result["win_rate"]["reward"]["mean"] == 50.0
    assert "win rate of B over A" in again.stdout


def test_eval_of_a_trained_checkpoint_differs_from_base(fast_world, tmp_path):
    from wavalign.train.config import TrainConfig
    from wavalign.train.trainer import Trainer

    config = TrainConfig.load(None, ["data.world=fast", "mode=sft", "optim.steps=15", "optim.lr=2e-3",
                                     "optim.prompts_per_step=4", "eval.before=false", "eval.after=false",
                                     "run.progress=false", "run.plots=false", "run.tensorboard=false",
                                     "rollout.max_new_tokens=48", "eval.limit=8", f"run.output_dir={tmp_path}",
                                     "run.name=trained"])
    trainer = Trainer(config, world=fast_world)
    try:
        trainer.fit()
    finally:
        trainer.close()
    proc = run(["-m", "wavalign.eval", "--compare", "base", str(tmp_path / "trained"), "--resamples", "200",
                "--out", "cmp.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert result["n"] == 8  # the run's own config (eval.limit=8) was used for both
    assert result["records_a"] != result["records_b"]
    assert any(entry["difference"]["mean"] != 0.0 for entry in result["metrics"].values())


def test_eval_rejects_missing_and_malformed_targets(tmp_path):
    proc = run(["-m", "wavalign.eval", str(tmp_path / "nowhere")], tmp_path)
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    (tmp_path / "bad.json").write_text("{not json")
    proc = run(["-m", "wavalign.eval", str(tmp_path / "bad.json")], tmp_path)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    (tmp_path / "plain").mkdir()
    proc = run(["-m", "wavalign.eval", str(tmp_path / "plain")], tmp_path)
    assert proc.returncode == 2 and "neither a checkpoint" in proc.stderr


def _ablation_yaml(tmp_path, arms: str) -> str:
    path = tmp_path / "ablation.yaml"
    path.write_text("name: tiny\nseeds: [0, 1]\ncommon: [data.world=fast, optim.steps=2, optim.prompts_per_step=4,"
                    " rollout.group_size=3, rollout.max_new_tokens=48, eval.limit=6, run.progress=false,"
                    " run.tensorboard=false, run.plots=false, run.save_every=0]\n" + arms)
    return str(path)


def test_ablation_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="no arms"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: []\n"))
    with pytest.raises(ConfigError, match=r"arms\[0\] \(x\) has unknown keys \['sett'\]"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: [{name: x, mode: sft, sett: []}]\n"))
    with pytest.raises(ConfigError, match="arm x: .*gate.mode"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: [{name: x, mode: hybrid, set: [gate.mode=nope]}]\n"))
    with pytest.raises(ConfigError, match="unique"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: [{name: x, mode: sft}, {name: x, mode: sft}]\n"))
    with pytest.raises(ConfigError, match=r"comparisons\[0\].against 'y' is not one of the arms"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: [{name: x, mode: sft}]\ncomparisons: [{arm: x, against: y}]\n"))
    with pytest.raises(ConfigError, match="with itself"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: [{name: x, mode: sft}]\ncomparisons: [{arm: x, against: x}]\n"))
    with pytest.raises(ConfigError, match=r"comparisons\[0\] takes arm, against"):
        AblationConfig.load(_ablation_yaml(tmp_path, "arms: [{name: x, mode: sft}]\ncomparisons: [{arm: x}]\n"))


def test_shipped_ablation_profiles_load_with_the_papers_arms():
    from wavalign.eval.ablation import DEFAULT_CONFIG

    for name in ("cpu", "gpu"):
        config = AblationConfig.load(DEFAULT_CONFIG.with_name(f"{name}.yaml"))
        assert len(config.seeds) >= 3
        assert ("wavalign", "wavalign_no_ema") in {(c.arm, c.against) for c in config.comparisons}
        arms = {a.name: a for a in config.arms}
        assert {"sft", "grpo_all_tokens", "dpo_all_tokens", "text_rl_fixed_mix", "wavalign", "wavalign_no_ema",
                "wavalign_speech_anchor"} <= set(arms)
        tmp = Path("unused")
        grpo = config.train_config(arms["grpo_all_tokens"], 0, tmp)
        assert grpo.mode == "grpo" and grpo.objective.rl_scope == "all"
        fixed = config.train_config(arms["text_rl_fixed_mix"], 1, tmp)
        assert fixed.gate.mode == "fixed" and fixed.gate.fixed_lambda == 0.7 and fixed.run.seed == 1
        assert config.train_config(arms["wavalign_speech_anchor"], 0, tmp).objective.sft_scope == "speech"
        assert config.train_config(arms["dpo_all_tokens"], 0, tmp).dpo.scope == "all"
    cpu = AblationConfig.load(DEFAULT_CONFIG)
    assert {(c.arm, c.against) for c in cpu.comparisons} >= {
        ("text_rl_fixed_mix", "grpo_all_tokens"), ("wavalign", "text_rl_fixed_mix"), ("wavalign", "wavalign_no_ema"),
        ("wavalign", "sft"), ("positive_control", "sft")}  # the paper's four directions and the control


def test_ablation_runs_aggregates_and_resumes(fast_world, tmp_path):
    config = _ablation_yaml(tmp_path, "arms:\n  - {name: sft, mode: sft}\n"
                                      "  - {name: wavalign, mode: hybrid, set: [optim.steps=1]}\n"
                                      "comparisons: [{arm: wavalign, against: sft, claim: RL beats SFT}]\n")
    args = ["-m", "wavalign.eval.ablation", "--config", config, "--out", "out", "--resamples", "200"]
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and set(results["arms"]) == {"sft", "wavalign"}
    iq = results["arms"]["wavalign"]["metrics"]["IQ"]
    assert len(iq["per_seed"]) == 2 and iq["value"]["n"] == 12
    assert not math.isnan(iq["change"]["mean"])
    table = (out / "table.md").read_text()
    assert "| base policy |" in table and "| wavalign |" in table and "ΔIQ" in table
    assert {p.name for p in (out / "plots").iterdir()} == {"reward_curves.png", "lambda.png", "entropy.png",
                                                           "iq_eq.png"}
    # training dynamics from each run's metrics: SFT samples nothing, WavAlign logs λ and both entropies
    assert results["arms"]["sft"]["dynamics"] == {}
    dynamics = results["arms"]["wavalign"]["dynamics"]
    assert set(dynamics) == {"gate/lambda", "rollout/text_entropy", "rollout/speech_entropy"}
    lambdas = [r["gate/lambda"] for seed in (0, 1) for r in map(json.loads, (out / "wavalign" / f"seed_{seed}"
               / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "train"]
    assert dynamics["gate/lambda"]["mean"] == pytest.approx(sum(lambdas) / len(lambdas))
    assert 0 < dynamics["rollout/speech_entropy"]["end"] and "Training dynamics" in table
    # a configured comparison: seed k of one arm against seed k of the other, paired by prompt
    (comparison,) = results["comparisons"]
    by_seed = {arm: [[r["IQ"] for r in json.loads((out / arm / f"seed_{s}" / "eval.json").read_text())["records"]]
                     for s in (0, 1)] for arm in ("sft", "wavalign")}
    differences = [a - b for s in (0, 1) for a, b in zip(by_seed["wavalign"][s], by_seed["sft"][s])]
    assert comparison["difference"]["IQ"]["mean"] == pytest.approx(sum(differences) / len(differences))
    assert "| RL beats SFT | wavalign − sft |" in table
    # the fast world supervises every question with clean gold: one category, every scored prompt
    assert set(results["by_supervision"]) == {"gold"} and results["by_supervision"]["gold"]["n"] == 6
    assert results["by_supervision"]["gold"]["arms"]["wavalign"]["IQ"] == pytest.approx(iq["value"]["mean"])
    assert "| clean gold (6) |" in table
    weights = (out / "wavalign" / "seed_1" / "eval.json").stat().st_mtime_ns

    again = run(args, tmp_path)  # every (arm, seed) is done: nothing is trained again
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, kept") == 4
    assert (out / "wavalign" / "seed_1" / "eval.json").stat().st_mtime_ns == weights
    assert json.loads((out / "results.json").read_text())["arms"]["sft"]["metrics"]["IQ"]["per_seed"] == \
        results["arms"]["sft"]["metrics"]["IQ"]["per_seed"]

    # a changed setting is a different experiment: that run is trained again
    changed = run(args + ["--arms", "sft", "--seeds", "0", "--set", "optim.lr=1e-4", "--report-only"], tmp_path)
    assert changed.returncode == 0 and "seed 0" not in changed.stdout  # --report-only trains nothing
    changed = run(args + ["--arms", "sft", "--seeds", "0", "--set", "optim.lr=1e-4"], tmp_path)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "done before" not in changed.stdout and "1/1 sft seed 0" in changed.stdout


def test_lr_selection_config_is_validated_and_never_uses_test(tmp_path):
    arms = "arms: [{name: x, mode: hybrid}]\n"
    good = AblationConfig.load(_ablation_yaml(tmp_path, arms + "lr_selection: {grid: [2e-4, 5e-5], steps: 3}\n"))
    assert good.lr_selection.grid == (5e-5, 2e-4) and good.lr_selection.split == "dev"
    trial = good.selection_config(good.arms[0], 5e-5, Path("o"))
    assert trial.optim.lr == 5e-5 and trial.optim.steps == 3 and trial.eval.split == "dev"
    assert trial.run.output_dir == str(Path("o") / "lr_selection" / "x")
    assert good.train_config(good.arms[0], 1, Path("o"), lr=5e-5).optim.lr == 5e-5
    for bad, message in (("{grid: [], steps: 3}", "grid"), ("{grid: [1e-4], steps: 0}", "steps"),
                         ("{grid: [1e-4], steps: 3, split: test}", "never test"),
                         ("{grid: [1e-4], steps: 3, metric: WER}", "metric"), ("{grid: [1e-4], step: 3}", "takes")):
        with pytest.raises(ConfigError, match=message):
            AblationConfig.load(_ablation_yaml(tmp_path, arms + f"lr_selection: {bad}\n"))


@pytest.mark.slow
def test_ablation_selects_each_arms_learning_rate_on_dev(fast_world, tmp_path):
    config = _ablation_yaml(tmp_path, "arms:\n  - {name: sft, mode: sft}\n"
                                      "lr_selection: {grid: [1e-5, 3e-3], steps: 2, metric: IQ}\n")
    args = ["-m", "wavalign.eval.ablation", "--config", config, "--out", "out", "--resamples", "100", "--seeds", "0"]
    first = run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    selection = json.loads((out / "lr_selection" / "sft" / "selection.json").read_text())
    trials = {float(k): v for k, v in selection["trials"].items()}
    assert set(trials) == {1e-5, 3e-3} and selection["lr"] == max(trials, key=lambda lr: (trials[lr], -lr))
    for lr in ("1e-05", "0.003"):
        trial = json.loads((out / "lr_selection" / "sft" / f"lr_{lr}" / "eval.json").read_text())
        assert trial["config"]["eval"]["split"] == "dev" and trial["config"]["optim"]["steps"] == 2
    final = json.loads((out / "sft" / "seed_0" / "eval.json").read_text())
    assert final["config"]["optim"]["lr"] == selection["lr"] and final["config"]["eval"]["split"] == "test"
    assert "Learning rates, chosen per arm on the dev split by IQ" in (out / "table.md").read_text()
    again = run(args, tmp_path)  # trials and runs are reused
    assert again.returncode == 0 and "learning-rate trial" not in again.stdout and "done before, kept" in again.stdout


def test_ablation_report_splits_test_prompts_by_their_questions_supervision():
    from wavalign.eval.ablation_report import _by_supervision, question_supervision

    class World:  # the two splits question_supervision reads
        def examples(self, split):
            return {"train": [{"id": "a1", "question": "qa", "supervision": "gold"},
                              {"id": "b1", "question": "qb", "supervision": "prompt_only"}],
                    "test": [{"id": "a2", "question": "qa"}, {"id": "b2", "question": "qb"},
                             {"id": "c2", "question": "never asked in train"}]}[split]

    supervision = question_supervision(World())
    assert supervision == {"a2": "gold", "b2": "prompt_only"}
    base = [{"id": "a2", "IQ": 0.0, "EQ": 3.0}, {"id": "b2", "IQ": 100.0, "EQ": 4.0}, {"id": "c2", "IQ": 0.0, "EQ": 1.0}]
    seed = [{"id": "a2", "IQ": 100.0, "EQ": 5.0}, {"id": "b2", "IQ": 0.0, "EQ": math.nan}, {"id": "c2", "IQ": 0.0, "EQ": 1.0}]
    table = _by_supervision(base, {"sft": {0: seed, 1: base}}, supervision)
    assert list(table) == ["gold", "prompt_only"] and table["gold"]["n"] == 1
    assert table["gold"]["arms"]["sft"] == {"IQ": 50.0, "EQ": 4.0}  # seeds pooled
    assert table["prompt_only"]["arms"]["sft"]["EQ"] == 4.0  # an unscored EQ is skipped, not counted as 0
    assert table["prompt_only"]["base"] == {"IQ": 100.0, "EQ": 4.0}


def test_training_dynamics_averages_each_runs_first_and_last_tenth(tmp_path):
    from wavalign.eval.ablation_report import training_dynamics

    def write_run(name, lambdas, entropy):
        run = tmp_path / name
        run.mkdir()
        lines = [{"kind": "train", "step": i + 1, "gate/lambda": lam, "rollout/text_entropy": entropy}
                 for i, lam in enumerate(lambdas)]
        lines.insert(3, {"kind": "eval", "step": 3, "gate/lambda": 99.0})  # not a training step
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        return run

    # seed 0: 20 steps, λ = 0..19 (window 2: start 0.5, end 18.5); seed 1: 10 steps of 1.0 and one NaN
    runs = [write_run("s0", [float(i) for i in range(20)], 0.5),
            write_run("s1", [1.0] * 9 + [math.nan] + [1.0], 0.7)]
    dynamics = training_dynamics(runs)
    assert set(dynamics) == {"gate/lambda", "rollout/text_entropy"}  # no speech entropy logged
    assert dynamics["gate/lambda"]["start"] == pytest.approx((0.5 + 1.0) / 2)  # each seed weighs the same
    assert dynamics["gate/lambda"]["end"] == pytest.approx((18.5 + 1.0) / 2)
    assert dynamics["gate/lambda"]["mean"] == pytest.approx((9.5 + 1.0) / 2)  # the NaN step is skipped
    assert dynamics["rollout/text_entropy"]["mean"] == pytest.approx(0.6)
