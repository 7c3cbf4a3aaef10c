"""wavalign.train.checkpoint: atomic, pruned checkpoints, the latest one found, RNG state round trip."""

import os

import pytest
import torch

from wavalign.train import checkpoint as ckpt


class _TinyModel:
    def __init__(self, value):
        self.value = value

    def save_pretrained(self, path, safe_serialization=True):
        from safetensors.torch import save_file

        save_file({"w": torch.full((2,), float(self.value))}, os.path.join(path, "model.safetensors"))


def test_checkpoints_are_atomic_pruned_and_found(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root) is None
    for step in (1, 2, 3):
        ckpt.save_checkpoint(root, step, model=_TinyModel(step), tokenizer=None, extra_files={"note.txt": "x"},
                             trainer_state={"step": step}, rank_states=[ckpt.rng_state()], keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000002", "step_000003"]
    latest = ckpt.latest_checkpoint(root)
    assert latest.name == "step_000003"
    state, rank_state = ckpt.load_trainer_state(latest, 0)
    assert state == {"step": 3} and "torch" in rank_state
    # a crash mid-save leaves only a hidden staging directory; latest still names a complete one
    (root / ".staging-step_000004-1").mkdir()
    assert ckpt.latest_checkpoint(root).name == "step_000003"
    with pytest.raises(FileNotFoundError, match="same number of processes"):
        ckpt.load_trainer_state(latest, 1)


def test_rng_state_round_trip():
    import random

    state = ckpt.rng_state()
    a = (random.random(), torch.rand(3))
    ckpt.set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
