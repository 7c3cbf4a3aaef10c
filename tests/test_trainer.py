"""The trainer on the fast built-in world: modes, run directory, exact resume, faults, CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wavalign.train.config import TrainConfig
from wavalign.train.run_log import read_metrics

BASE = ["data.world=fast", "optim.prompts_per_step=4", "rollout.group_size=3", "rollout.max_new_tokens=48",
        "eval.limit=6", "run.progress=false", "run.plots=false", "run.tensorboard=false", "run.save_every=0",
        "optim.warmup_steps=1"]


def make_config(tmp_path, *extra):
    return TrainConfig.load(None, BASE + [f"run.output_dir={tmp_path}", *extra])


def train(tmp_path, *extra, name="run", world=None):
    from wavalign.train.trainer import Trainer

    trainer = Trainer(make_config(tmp_path, f"run.name={name}", *extra), world=world)
    try:
        return trainer, trainer.fit()
    finally:
        trainer.close()


def steps_of(run_dir):
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def comparable(record):
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def test_hybrid_run_writes_the_run_directory(fast_world, tmp_path):
    trainer, summary = train(tmp_path, "optim.steps=3", "run.plots=true", "run.tensorboard=true",
                             world=fast_world)
    run = tmp_path / "run"
    assert summary["step"] == 3 and set(summary["evaluations"]) == {"before", "after"}
    for key in ("IQ", "EQ", "WER", "reward", "reward/semantic_judge", "reward/acoustic_judge"):
        assert math.isfinite(summary["evaluations"]["after"][key]), key
    records = steps_of(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("reward/mean", "gate/lambda", "gate/g_info", "gate/g_rew", "loss/total", "loss/rl", "loss/sft",
                "time/rollout", "time/reward", "time/forward_backward", "time/optimizer", "grad_norm", "lr"):
        assert key in records[-1] and records[-1][key] is not None, key
    assert 0.0 <= records[-1]["gate/lambda"] <= 0.8
    assert TrainConfig.load(run / "config.yaml") == trainer.config
    checkpoint = run / "checkpoints" / "step_000003"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modality.yaml", "trainer_state.pt",
                 "rank_0.pt"):
        assert (checkpoint / name).is_file(), name
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000003"
    for name in ("reward.png", "gate.png", "losses.png", "iq_eq.png"):
        assert (run / "plots" / name).stat().st_size > 1000, name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run / "summary.json").read_text())["step"] == 3
    # the checkpoint is a Hugging Face model directory
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    for name, tensor in trainer.policy.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_training_changes_the_policy_and_anchors_with_gold(fast_world, tmp_path):
    from safetensors.torch import load_file

    trainer, _ = train(tmp_path, "optim.steps=2", "optim.lr=1e-3", world=fast_world)
    before = load_file(str(fast_world.policy_path / "model.safetensors"))
    after = trainer.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(r["sft/tokens"] > 0 for r in steps_of(tmp_path / "run"))


@pytest.mark.parametrize("mode, extra, loss_key", [
    ("grpo", ["objective.rl_scope=all"], "loss/rl"),
    ("sft", [], "loss/sft"),
    ("dpo", ["dpo.pairs=rollout", "dpo.min_gap=0.5", "rollout.group_size=4"], "loss/total"),
    ("dpo", ["dpo.pairs=gold"], "loss/dpo"),
    ("hybrid", ["gate.mode=fixed", "objective.kl_beta_text=0.05", "objective.sft_scope=speech"], "loss/total"),
])
def test_every_mode_trains(fast_world, tmp_path, mode, extra, loss_key):
    trainer, summary = train(tmp_path, f"mode={mode}", "optim.steps=2", "eval.before=false", *extra,
                             world=fast_world)
    records = steps_of(tmp_path / "run")
    assert len(records) == 2
    assert all(r[loss_key] is not None and math.isfinite(r[loss_key]) for r in records), records
    assert (trainer.reference is not None) == trainer.config.needs_reference
    if trainer.reference is not None:
        assert not trainer.reference.training
        assert not any(p.requires_grad for p in trainer.reference.parameters())
    if mode == "grpo":
        assert all(r["gate/lambda"] == 1.0 for r in records)
    if mode == "hybrid":
        assert all(r["gate/lambda"] == 0.7 for r in records) and "rl/kl_mean" in records[0]
    if mode == "dpo" and "dpo.pairs=gold" in extra:
        assert all(r["pairs/built"] > 0 for r in records)


def test_judge_failures_stop_the_run_with_a_clear_message(fast_world, tmp_path):
    from wavalign.train.collect import JudgeFailureError
    from wavalign.train.trainer import Trainer

    trainer = Trainer(make_config(tmp_path, "run.name=fail", "optim.steps=2", "eval.before=false"), world=fast_world)
    judge = trainer.reward_fn.components["semantic_judge"][0]
    judge.noise = type(judge.noise)(noise_std=0.0, failure_rate=0.9)
    with pytest.raises(JudgeFailureError, match="max_failure_rate"):
        trainer.fit()
    assert judge.failures > 0


def test_non_finite_loss_skips_the_step(fast_world, tmp_path):
    from wavalign.train.trainer import Trainer

    trainer = Trainer(make_config(tmp_path, "run.name=nan"), world=fast_world)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    parameter = next(trainer.policy.parameters())
    out = trainer._optimize(parameter.sum() * float("nan"), {})
    assert out == {"skipped_nonfinite": 1.0} and trainer.counters["skipped_nonfinite_steps"] == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


def test_jsonl_data_in_both_record_formats(fast_world, tmp_path):
    """Our JSONL format (text + units) and the public release's layout (messages + WAV files)."""
    from wavalign.world.audio import SAMPLE_RATE, write_wav

    records = fast_world.examples("train")[:6]
    ours = tmp_path / "ours.jsonl"
    ours.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt_text", "response_text", "response_units",
                                                          "answer", "style")}) + "\n" for r in records)
                    + "{broken\n")
    public = tmp_path / "public.jsonl"
    lines = []
    for r in records[:3]:
        write_wav(tmp_path / f"{r['id']}.wav", fast_world.scorer.units.decode(r["response_units"]), SAMPLE_RATE)
        lines.append(json.dumps({"messages": [{"role": "user", "content": r["prompt_text"]}], "audios": [],
                                 "sft_target_text": r["response_text"], "sft_target_audio": f"{r['id']}.wav",
                                 "task_type": "qa", "question_text": r["question"], "answer": r["answer"],
                                 "style": r["style"]}))
    public.write_text("\n".join(lines) + "\n")

    with pytest.raises(ValueError, match=r"ours\.jsonl:7: not valid JSON"):
        train(tmp_path, "data.source=jsonl", f"data.train_path={ours}", "optim.steps=1", world=fast_world)
    trainer, summary = train(tmp_path, "data.source=jsonl", f"data.train_path={ours}", "data.skip_bad_lines=true",
                             "optim.steps=1", "eval.before=false", "eval.after=false", "mode=sft", name="ours",
                             world=fast_world)
    assert summary["skipped_lines"] == 1 and len(trainer.train_examples) == 6
    assert trainer.train_examples[0].response_ids == records[0]["response_ids"]
    trainer, _ = train(tmp_path, "data.source=jsonl", f"data.train_path={public}", "optim.steps=1",
                       "eval.before=false", "eval.after=false", name="public", world=fast_world)
    example = trainer.train_examples[0]
    assert example.prompt_ids == records[0]["prompt_ids"]
    assert example.columns["task_type"] == "qa" and example.response_ids is not None


# ---------------------------------------------------------------------------- subprocess runs (as users run them)
def cli(args, cwd, env_extra=None, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "wavalign.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(fast_world, tmp_path):
    common = sets(*BASE, "optim.steps=8", "run.save_every=2", "eval.before=false", "eval.after=false",
                  f"run.output_dir={tmp_path}")
    reference = cli([*common, "--name", "straight"], tmp_path)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out

    victim = cli([*common, "--name", "killed"], tmp_path)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = cli(["--resume", str(tmp_path / "killed")], tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from" in out

    straight, killed = steps_of(tmp_path / "straight"), steps_of(tmp_path / "killed")
    assert [r["step"] for r in killed] == list(range(1, 9))
    for a, b in zip(straight, killed):
        assert comparable(a) == comparable(b), (a["step"], comparable(a), comparable(b))
    from safetensors.torch import load_file

    final_a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_000008" / "model.safetensors"))
    final_b = load_file(str(tmp_path / "killed" / "checkpoints" / "step_000008" / "model.safetensors"))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(fast_world, tmp_path):
    proc = cli([*sets(*BASE, "optim.steps=200", "eval.before=false", f"run.output_dir={tmp_path}"), "--name", "int"],
               tmp_path)
    metrics = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "continue with --resume" in out
    step = len(steps_of(tmp_path / "int"))
    assert (tmp_path / "int" / "checkpoints" / "latest").read_text().strip() == f"step_{step:06d}"


def torchrun(args, cwd, nproc=2):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--standalone", "-m", "wavalign.train", *args], cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(fast_world, tmp_path):
    common = sets(*BASE, "optim.steps=3", "eval.before=false", "eval.after=false", "run.device=cpu",
                  f"run.output_dir={tmp_path}", "objective.sft_normalization=sequence_mean")
    single = cli([*common, "--name", "one"], tmp_path)
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out
    double = torchrun([*common, "--name", "two"], tmp_path)
    assert double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    one, two = steps_of(tmp_path / "one"), steps_of(tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("reward/mean", "gate/lambda", "loss/rl", "loss/sft", "loss/total", "rollout/length"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["step"], key, a[key], b[key])
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step_000003").glob("rank_*.pt")) == \
        ["rank_0.pt", "rank_1.pt"]


@pytest.mark.slow
def test_fsdp2_matches_one_process_and_resumes_exactly(fast_world, tmp_path):
    from safetensors.torch import load_file

    common = sets(*BASE, "optim.steps=3", "eval.before=false", "eval.after=false", "run.device=cpu",
                  "run.save_every=1", "run.keep_checkpoints=5", f"run.output_dir={tmp_path}",
                  "objective.sft_normalization=sequence_mean")
    single = cli([*common, "--name", "one"], tmp_path)
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out
    sharded = torchrun([*common, *sets("distributed.strategy=fsdp2"), "--name", "fsdp"], tmp_path)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    one, two = steps_of(tmp_path / "one"), steps_of(tmp_path / "fsdp")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("reward/mean", "gate/lambda", "loss/rl", "loss/sft", "loss/total", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["step"], key, a[key], b[key])

    # The checkpoint written from shards is an ordinary HF directory with the same weights.
    final = "checkpoints/step_000003/model.safetensors"
    w_one, w_two = load_file(str(tmp_path / "one" / final)), load_file(str(tmp_path / "fsdp" / final))
    assert sorted(w_one) == sorted(w_two)
    for name in w_one:
        torch.testing.assert_close(w_one[name], w_two[name], rtol=1e-4, atol=1e-5)

    # Resume from step 2 (weights and optimizer state loaded into the shards): step 3 again, exactly.
    uninterrupted = [comparable(r) for r in read_metrics(tmp_path / "fsdp")]
    kept = load_file(str(tmp_path / "fsdp" / final))
    import shutil

    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step_000003")
    (tmp_path / "fsdp" / "checkpoints" / "latest").write_text("step_000002\n")
    resumed = torchrun(["--resume", str(tmp_path / "fsdp")], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    assert [comparable(r) for r in read_metrics(tmp_path / "fsdp")] == uninterrupted
    again = load_file(str(tmp_path / "fsdp" / final))
    assert all(torch.equal(kept[name], again[name]) for name in kept)


def test_cli_rejects_bad_config_before_any_work(tmp_path):
    proc = cli(sets("optim.lr=-1"), tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "optim.lr must be" in out
    proc = cli(["--config", str(tmp_path / "missing.yaml")], tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "config file not found" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_fast_run_prints_the_before_after_table(fast_world, tmp_path):
    proc = cli(["--fast", "--name", "smoke", *sets(f"run.output_dir={tmp_path}", "optim.steps=3")], tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "| IQ (% correct) |" in out and "| EQ (style, 1-5) |" in out and "mean judge reward" in out
    assert (tmp_path / "smoke" / "table.md").is_file()
