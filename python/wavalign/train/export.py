"""`python -m wavalign.train.export CHECKPOINT_DIR --out DIR [--merge]` — a checkpoint as a
model directory of its own, without the trainer's state.

    python -m wavalign.train.export runs/my-run/checkpoints/step_000080 --out my-model --merge
    python -m wavalign.train.export runs/my-run --out my-adapter       # the run's latest checkpoint

A LoRA checkpoint (adapter_config.json): --merge loads the base model it names
(base_model_name_or_path), folds the adapter in (peft's merge_and_unload) and writes a full
Hugging Face directory (config.json, model.safetensors) with the tokenizer and modality.yaml;
without --merge the adapter directory is copied (adapter files, tokenizer, modality.yaml). A
full-weight checkpoint is copied either way. trainer_state.pt and rank_*.pt are left out.
DIR must not exist (or be empty); it is written in a staging directory and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from wavalign.train import checkpoint as ckpt
from wavalign.train import lora

MODALITY = "modality.yaml"


def _trainer_file(path: Path) -> bool:
    return path.name == ckpt.TRAINER_STATE or (path.name.startswith("rank_") and path.suffix == ".pt")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory (-> its latest checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such checkpoint or run directory: {path}")
    if (path / "checkpoints").is_dir() and not (lora.is_adapter_dir(path) or (path / "config.json").is_file()):
        latest = ckpt.latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{path}/checkpoints has no complete checkpoint")
        return latest
    if not (lora.is_adapter_dir(path) or (path / "config.json").is_file()):
        raise ValueError(f"{path} is not a checkpoint (no adapter_config.json or config.json)")
    return path


def export(checkpoint: str | Path, out: str | Path, *, merge: bool = False) -> Path:
    """Write the model directory `out` from `checkpoint` (see the module docstring). -> out."""
    checkpoint, out = resolve_checkpoint(Path(checkpoint)), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} already exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f"{ckpt.STAGING_PREFIX}{out.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if merge and lora.is_adapter_dir(checkpoint):
            _write_merged(checkpoint, staging)
        else:
            for file in sorted(checkpoint.iterdir()):
                if file.is_file() and not _trainer_file(file):
                    shutil.copy2(file, staging / file.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(staging, out)
    return out


def _write_merged(checkpoint: Path, staging: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    model = lora.load_adapter_model(checkpoint, torch.device("cpu"), "auto")
    merged = model.merge_and_unload()
    merged.save_pretrained(str(staging), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(checkpoint)).save_pretrained(str(staging))
    if (checkpoint / MODALITY).is_file():
        shutil.copy2(checkpoint / MODALITY, staging / MODALITY)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wavalign.train.export",
                                     description="Export a training checkpoint as a model directory (LoRA: "
                                                 "the adapter, or merged into the base with --merge).")
    parser.add_argument("checkpoint", help="a checkpoint directory (or a run directory: its latest checkpoint)")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist or be empty)")
    parser.add_argument("--merge", action="store_true",
                        help="LoRA: fold the adapter into the base weights and write a full model directory")
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out, merge=args.merge)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"[export] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
