"""Atomic checkpoints: a Hugging Face model directory plus the trainer's state.

    runs/<name>/checkpoints/step_000050/
        config.json, model.safetensors, tokenizer files, modality.yaml   (save_pretrained)
        trainer_state.pt     optimizer, scheduler, gate, data cursor, step, counters
        rank_0.pt ...        each process's RNG states
    runs/<name>/checkpoints/latest       name of the newest complete checkpoint

A LoRA run (model.lora) writes the adapter instead of config.json + model.safetensors: the
PeftModel's save_pretrained gives adapter_config.json (base_model_name_or_path: the base
directory) + adapter_model.safetensors; `python -m wavalign.train.export` merges it.

Everything is written into a hidden staging directory first and renamed into place, and
`latest` is replaced atomically after that, so a crash (even SIGKILL) mid-save leaves the
previous checkpoint intact and `latest` never points at a partial one. State is loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from wavalign.files import fsync_dir, write_text_atomic  # noqa: F401 (write_text_atomic: re-export)

LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
STAGING_PREFIX = ".staging-"


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, *, model, tokenizer, extra_files: dict[str, str],
                    trainer_state: dict, rank_states: list[dict], keep: int, state_dict: dict | None = None) -> Path:
    """Write checkpoint `step` under root atomically; prune to the newest `keep`. -> its path.
    state_dict: the full weights when the model's own parameters are shards (FSDP2); for a
    PeftModel, its adapter parameters (full tensors) under their parameter names."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = root / name
    staging = root / f"{STAGING_PREFIX}{name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        weights = {} if state_dict is None else {"state_dict": state_dict}
        model.save_pretrained(str(staging), safe_serialization=True, **weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        for filename, text in extra_files.items():
            (staging / filename).write_text(text)
        torch.save(trainer_state, staging / TRAINER_STATE)
        for rank, state in enumerate(rank_states):
            torch.save(state, staging / f"rank_{rank}.pt")
        for file in staging.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException:  # a failed (or interrupted) save leaves nothing half-written behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(root)
    write_text_atomic(root / LATEST, name + "\n")
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_staging(root: Path) -> list[Path]:
    """Staging directories a killed save left behind (never a complete checkpoint: those are
    renamed into place). Removed; -> the removed paths, so the caller can say so."""
    removed = []
    for path in sorted(Path(root).glob(f"{STAGING_PREFIX}*")) if Path(root).is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete or missing")
    return path


def load_trainer_state(path: Path, rank: int) -> tuple[dict, dict]:
    """-> (trainer state, this rank's RNG state). A truncated or corrupted file fails naming it."""
    state = _load_state(path / TRAINER_STATE)
    rank_file = path / f"rank_{rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} is missing: resume with the same number of processes "
                                f"as the run that saved it ({state.get('world_size', '?')})")
    return state, _load_state(rank_file)


def _load_state(file: Path) -> dict:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file missing: {file}") from None
    except Exception as error:  # torch raises RuntimeError / UnpicklingError / EOFError ... for damage
        raise ValueError(f"checkpoint file {file} is truncated or corrupted and cannot be loaded "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint file {file} does not hold a state mapping (got {type(state).__name__})")
    return state


def load_weights(file: Path, device: str) -> dict:
    """model.safetensors -> {name: tensor}; a truncated or corrupted file fails naming it."""
    from safetensors.torch import load_file

    if not Path(file).is_file():
        raise FileNotFoundError(f"checkpoint file missing: {file}")
    try:
        return load_file(str(file), device=device)
    except Exception as error:  # safetensors raises SafetensorError for a bad header or size
        raise ValueError(f"checkpoint file {file} is truncated or corrupted and cannot be loaded "
                         f"({type(error).__name__}: {error})") from None


def check_resumable(path: Path, state: dict, config, world_size: int) -> None:
    """A checkpoint resumes only with the process count and the config (run / eval sections
    aside) that saved it: raises ValueError naming what differs."""
    if state["world_size"] != world_size:
        raise ValueError(f"{path} was saved by {state['world_size']} processes; resume with the same number "
                         f"(this run has {world_size})")
    changed = config.differences_from(state["config"], ignore=("run", "eval"))
    if changed:
        raise ValueError(f"--resume: the config differs from the checkpoint's in {changed}")
