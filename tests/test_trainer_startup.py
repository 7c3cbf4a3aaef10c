"""Trainer start-up and resume: records missing a reward's columns, a run directory in use or
unusable, and a corrupted checkpoint fail early with a message naming what is wrong; a failed
save leaves no staging directory behind, and resume removes stale ones."""

import json
import shutil
import subprocess
import sys

import pytest

from wavalign.train import checkpoint as ckpt
from wavalign.train.config import TrainConfig
from wavalign.train.run_dir import RunDirError

BASE = ["data.world=fast", "optim.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=24",
        "eval.limit=2", "run.progress=false", "run.plots=false", "run.tensorboard=false", "run.save_every=0",
        "optim.warmup_steps=1", "eval.before=false", "eval.after=false"]


def config(tmp_path, *extra):
    return TrainConfig.load(None, BASE + [f"run.output_dir={tmp_path}", *extra])


def trainer(tmp_path, *extra, world, **kw):
    from wavalign.train.trainer import Trainer

    return Trainer(config(tmp_path, *extra), world=world, **kw)


def finished_run(tmp_path, world, name="done"):
    t = trainer(tmp_path, "optim.steps=1", f"run.name={name}", world=world)
    try:
        t.fit()
    finally:
        t.close()
    return tmp_path / name


# ---------------------------------------------------------------------------- reward columns
def test_records_without_the_columns_a_reward_reads_fail_at_start_up_naming_file_line(fast_world, tmp_path):
    data = tmp_path / "prompts.jsonl"
    rows = fast_world.examples("train")[:3]
    lines = [{"prompt_text": r["prompt_text"], "answer": r["answer"], "style": r["style"]} for r in rows]
    del lines[1]["style"]  # the world's judges read answer and style
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=r"prompts\.jsonl:2: reward 'semantic_judge' needs the column 'style'"):
        trainer(tmp_path, "data.source=jsonl", f"data.train_path={data}", "run.name=cols", world=fast_world)


def test_the_evaluator_checks_columns_too(fast_world):
    from wavalign.train.data import TrainExample
    from wavalign.train.evaluator import build_evaluator
    from wavalign.train.rewards import build_reward

    cfg = TrainConfig.load(None, BASE)
    examples = [TrainExample("q", [1, 2], columns={"answer": "four"})]
    with pytest.raises(ValueError, match=r"record 'q': reward 'semantic_judge' needs the column 'style'"):
        build_evaluator(cfg, examples=examples, spec=fast_world.spec, tokenizer=fast_world.tokenizer,
                        format=fast_world.format, world=fast_world, reward_fn=build_reward(cfg.rewards, fast_world))


# ---------------------------------------------------------------------------- staging directories
class _FailingModel:
    def save_pretrained(self, path, **kw):
        (ckpt.Path(path) / "half.bin").write_bytes(b"x" * 10)
        raise OSError(28, "No space left on device")


def test_a_failed_save_removes_its_staging_directory(tmp_path):
    root = tmp_path / "checkpoints"
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(root, 1, model=_FailingModel(), tokenizer=None, extra_files={}, trainer_state={},
                             rank_states=[], keep=1)
    assert list(root.iterdir()) == []


def test_resume_removes_stale_staging_and_says_so(fast_world, tmp_path, capsys):
    run = finished_run(tmp_path, fast_world)
    stale = run / "checkpoints" / ".staging-step_000002-4242"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    t = trainer(tmp_path, "optim.steps=1", "run.name=done", world=fast_world, resume=True)
    t.close()
    assert not stale.exists()
    assert f"removed {stale}" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the run directory
def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_directory_in_use_by_a_live_run_is_refused_and_a_stale_lock_taken_over(fast_world, tmp_path, capsys):
    import socket

    run = tmp_path / "busy"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(RunDirError, match=rf"in use by another live run \(PID {sleeper.pid}\)"):
            trainer(tmp_path, "run.name=busy", world=fast_world)
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = _dead_pid()
    (run / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    t = trainer(tmp_path, "run.name=busy", world=fast_world)
    assert f"stale lock of PID {dead}" in capsys.readouterr().out
    assert json.loads((run / ".lock").read_text())["pid"] != dead
    t.close()
    assert not (run / ".lock").exists()  # released when the run ends


def test_an_unusable_output_directory_fails_before_any_step(fast_world, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="cannot create the run directory"):
        trainer(blocker, "run.name=x", world=fast_world)

    from wavalign.train import run_dir

    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(RunDirError, match="not enough free space"):
        trainer(tmp_path, "run.name=full", world=fast_world)


def test_a_corrupted_checkpoint_fails_resume_naming_the_file(fast_world, tmp_path):
    run = finished_run(tmp_path, fast_world)
    checkpoint = run / "checkpoints" / "step_000001"
    weights = checkpoint / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated or corrupted"):
        trainer(tmp_path, "optim.steps=1", "run.name=done", world=fast_world, resume=True).close()
    weights.write_bytes(good)
    state = checkpoint / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"trainer_state\.pt is truncated or corrupted"):
        trainer(tmp_path, "optim.steps=1", "run.name=done", world=fast_world, resume=True).close()
