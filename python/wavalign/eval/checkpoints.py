"""Resolve what to evaluate (base policy, run directory, checkpoint, saved result) and build
the evaluator: on the built-in world, or on a config's own data (JSONL / HF dataset) for a
real model with its judges and speech codec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from wavalign.adapters import load_adapter
from wavalign.eval.core import PolicyEvaluator, build_evaluator
from wavalign.modality import ModalitySpec, resolve_spec
from wavalign.train import checkpoint as ckpt
from wavalign.train import lora
from wavalign.train.config import TrainConfig


@dataclass
class Target:
    """One thing to score: a model directory, or the records of an earlier evaluation."""

    label: str
    model_dir: Path | None = None
    run_config: Path | None = None  # the training run's config.yaml, when there is one
    saved: dict | None = None  # a result JSON written by `python -m wavalign.eval --out`


def resolve_target(name: str, world=None, config: TrainConfig | None = None) -> Target:
    """'base' (the world's policy, or with a config whose model.path is a directory, that
    model), a run directory (its latest checkpoint), a checkpoint
    directory (config.json + weights, or a LoRA adapter: adapter_config.json) or a result JSON
    from an earlier evaluation."""
    if name == "base":
        if config is not None and config.model.path != "world":
            return Target("base", model_dir=Path(config.model.path))
        if world is None:
            raise ValueError("'base' is the built-in world's policy; it needs the world")
        return Target("base", model_dir=world.policy_path)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint, run directory or result file: {path}")
    if path.is_file():
        if path.suffix != ".json":
            raise ValueError(f"{path}: expected a result .json from `python -m wavalign.eval --out`")
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(saved, dict) or "records" not in saved:
            raise ValueError(f"{path}: has no per-prompt 'records'; write it with `python -m wavalign.eval --out`")
        return Target(saved.get("target", path.stem), saved=saved)
    if (path / "config.json").is_file() or lora.is_adapter_dir(path):  # a checkpoint: runs/<name>/checkpoints/step_N
        run_config = path.parent.parent / "config.yaml"
        return Target(str(path), model_dir=path, run_config=run_config if run_config.is_file() else None)
    if (path / "checkpoints").is_dir():  # a run directory
        latest = ckpt.latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{path}/checkpoints has no complete checkpoint")
        run_config = path / "config.yaml"
        return Target(str(path), model_dir=latest, run_config=run_config if run_config.is_file() else None)
    raise ValueError(f"{path} is neither a checkpoint (no config.json or adapter_config.json) nor a run directory "
                     f"(no checkpoints/)")


def load_world_for(config: TrainConfig):
    from wavalign.world import load_world
    from wavalign.world.config import WorldConfig

    return load_world(WorldConfig.named(config.data.world))


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype = torch.float32,
               config: TrainConfig | None = None):
    """-> (policy in eval mode, its ModalitySpec, resolved as the trainer resolves a model directory).
    A LoRA adapter directory (adapter_config.json) loads its base (base_model_name_or_path)
    with the adapter on top, as it was trained. config: its model section's adapter,
    trust_remote_code, attn_implementation, modality and schedule apply."""
    m = (config or TrainConfig()).model
    if lora.is_adapter_dir(model_dir):
        return lora.load_adapter_model(model_dir, device, dtype).eval(), resolve_spec(model_dir)
    adapter = load_adapter(m.adapter)
    policy = adapter.load_model(model_dir, dtype=dtype, trust_remote_code=m.trust_remote_code,
                                attn_implementation=m.attn_implementation).to(device).eval()
    if config is None:
        return policy, resolve_spec(model_dir)
    tokenizer = adapter.load_tokenizer(model_dir, trust_remote_code=m.trust_remote_code)
    return policy, resolve_spec(model_dir, tokenizer, modality=m.modality, schedule=m.schedule)


def world_evaluator(config: TrainConfig, world, spec: ModalitySpec | None = None) -> PolicyEvaluator:
    """The evaluator the trainer uses for `config` on the world, built without a trainer:
    same split, limit, greedy decoding, response budget, and judges (seed + 10_000)."""
    from wavalign.train.rewards import EVAL_JUDGE_SEED_OFFSET, build_reward

    return build_evaluator(config, examples=world.train_examples(config.eval.split),
                           spec=spec or world.spec, tokenizer=world.tokenizer, format=world.format, world=world,
                           reward_fn=build_reward(config.rewards, world, EVAL_JUDGE_SEED_OFFSET),
                           exact=world.exact_metrics)


def data_evaluator(config: TrainConfig, world=None) -> PolicyEvaluator:
    """The evaluator for a real model on the config's own data (data.source jsonl or
    hf_dataset): the eval split's records, read with model.path's tokenizer and layout, the
    config's judges (seed + 10_000, as the trainer) and speech codec (speech.codec)."""
    from wavalign.formats import GenericFormat
    from wavalign.train.data import check_columns, load_examples
    from wavalign.train.model import load_codec
    from wavalign.train.rewards import EVAL_JUDGE_SEED_OFFSET, build_reward

    m = config.model
    path = Path(m.path)
    if not path.is_dir():
        raise FileNotFoundError(f"model.path: no such model directory: {path}")
    adapter = load_adapter(m.adapter)
    tokenizer = adapter.load_tokenizer(path, trust_remote_code=m.trust_remote_code)
    spec = resolve_spec(path, tokenizer, modality=m.modality, schedule=m.schedule)
    codec = load_codec(config, world)
    fmt = GenericFormat(tokenizer, spec)
    _, examples, _ = load_examples(config, world, fmt, spec.vocab_size, codec)
    if not examples:
        raise ValueError("evaluating on your own data needs eval records: set data.eval_path (jsonl) or "
                         "data.eval_split (hf_dataset)")
    reward = build_reward(config.rewards, world, EVAL_JUDGE_SEED_OFFSET, codec=codec)
    check_columns(examples, reward)
    return build_evaluator(config, examples=examples, spec=spec, tokenizer=tokenizer, format=fmt, world=world,
                           reward_fn=reward, exact=None, codec=codec, adapter=adapter)
