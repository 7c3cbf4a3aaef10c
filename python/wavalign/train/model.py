"""The policy a run trains: loaded from a local directory, wrapped for DDP / FSDP2, with its
ModalitySpec, response format and (for DPO or a KL penalty) a frozen reference. With
`model.lora` the policy is a PeftModel (only the adapters train) and the reference is the
same module with its adapters disabled (train/lora.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from wavalign.adapters import ModelAdapter, load_adapter
from wavalign.formats import GenericFormat
from wavalign.modality import ModalitySpec, resolve_spec
from wavalign.train import fsdp, lora
from wavalign.train.distributed import Ranks
from wavalign.logprobs import ResponseLogprobs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedPolicy:
    path: Path
    policy: torch.nn.Module  # the Hugging Face causal LM, or a PeftModel over it (LoRA); maybe FSDP2 shards
    tokenizer: object
    spec: ModalitySpec
    pad_id: int
    format: object  # the model's ResponseFormat
    logprob_module: ResponseLogprobs  # policy -> response log-probs
    trainable: torch.nn.Module  # what forward/backward runs through: logprob_module or its DDP wrapper
    # frozen, eval mode; None unless DPO or a KL penalty. LoRA: the policy with adapters disabled
    reference: ResponseLogprobs | lora.AdapterDisabledReference | None
    sharded: bool  # FSDP2
    lora: bool = False  # the policy is a PeftModel: only its adapters are trainable
    adapter: ModelAdapter | None = None  # how the model is loaded and fed (wavalign.adapters)


def load_policy(config, world, device: torch.device, ranks: Ranks) -> LoadedPolicy:
    c = config.model
    path = world.policy_path if c.path == "world" else Path(c.path)
    if not path.is_dir():
        raise FileNotFoundError(f"model.path: no such model directory: {path}")
    adapter = load_adapter(c.adapter)
    tokenizer = adapter.load_tokenizer(path, trust_remote_code=c.trust_remote_code)
    spec = resolve_spec(path, tokenizer, modality=c.modality, schedule=c.schedule)
    dtype = DTYPES[c.dtype]

    def load():
        return adapter.load_model(path, dtype=dtype, trust_remote_code=c.trust_remote_code,
                                  attn_implementation=c.attn_implementation)

    policy = load().to(device)
    head_size = adapter.output_embeddings(policy).weight.shape[0]
    if spec.vocab_size > head_size:
        raise ValueError(f"the ModalitySpec's vocab_size {spec.vocab_size} exceeds the model's output size {head_size}")
    if c.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if c.lora is not None:  # before DDP / FSDP2: the optimizer sees only the adapters
        if c.gradient_checkpointing:  # frozen embeddings: checkpointed blocks still need an input with grad
            policy.enable_input_require_grads()
        policy = lora.wrap(policy, c.lora, path, seed=config.run.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (spec.pad or 0)
    logprob_module = ResponseLogprobs(policy, adapter)
    trainable = logprob_module
    sharded = ranks.distributed and config.distributed.strategy == "fsdp2"
    if sharded:  # parameters become shards; the optimizer (built later) holds only this rank's
        fsdp.shard(logprob_module, policy, device, cpu_offload=config.distributed.cpu_offload)
        _touch(logprob_module, device)
    elif ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trainable = DistributedDataParallel(logprob_module,
                                            device_ids=[device.index] if device.type == "cuda" else None)
    reference = None
    if config.needs_reference and c.lora is not None:  # the base = the policy with its adapters disabled
        reference = lora.AdapterDisabledReference(logprob_module)
    elif config.needs_reference:  # frozen, eval mode, never in the optimizer
        frozen = load().to(device).eval()
        frozen.requires_grad_(False)
        reference = ResponseLogprobs(frozen, adapter).eval()
        if sharded:
            fsdp.shard(reference, frozen, device, cpu_offload=config.distributed.cpu_offload)
            _touch(reference, device)
    format = world.format if world is not None and c.path == "world" else GenericFormat(tokenizer, spec)
    return LoadedPolicy(path, policy, tokenizer, spec, pad_id, format, logprob_module, trainable, reference, sharded,
                        lora=c.lora is not None, adapter=adapter)


def load_codec(config, world):
    """The run's SpeechCodec: speech.codec built by wavalign.codecs.build_codec, or with
    speech.codec unset the built-in world's when a world is loaded (else None)."""
    from wavalign.codecs import build_codec

    if config.speech.codec is None:
        return world.codec if world is not None else None
    return build_codec(config.speech.codec, config.speech.options, world=world)


@torch.no_grad()
def _touch(module: ResponseLogprobs, device: torch.device) -> None:
    """One tiny forward through a freshly sharded root. FSDP2 decides which unit is the root
    on the first forward; rollouts call the blocks directly, so the root must go first."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    module(ids, torch.ones_like(ids), torch.ones(1, dtype=torch.long, device=device), 1)
    module.reshard()  # the root keeps its gathered weights after forward; the optimizer must see the shards


# ---------------------------------------------------------------------------- checkpoint states
def full_states(loaded: LoadedPolicy, optimizer) -> tuple[dict | None, dict | None]:
    """(weights, optimizer state) to save, as full tensors; (None, None) when the model saves
    itself (one process, no shards). Every rank must call it under FSDP2 (it gathers)."""
    from wavalign.train import lora

    if loaded.lora:  # the adapter only (PeftModel.save_pretrained); FSDP2: its shards gathered first
        if not loaded.sharded:
            return None, None
        return lora.full_adapter_state(loaded.policy), fsdp.full_optimizer_state(loaded.logprob_module, optimizer)
    if not loaded.sharded:
        return None, None
    weights = fsdp.full_model_state(loaded.logprob_module, prefix="lm.")
    policy = loaded.policy
    if getattr(policy.config, "tie_word_embeddings", False):  # saved once, as the input embedding
        head = next(name for name, module in policy.named_modules() if module is policy.get_output_embeddings())
        weights.pop(f"{head}.weight", None)
    return weights, fsdp.full_optimizer_state(loaded.logprob_module, optimizer)


def load_states(loaded: LoadedPolicy, optimizer, path: Path, optimizer_state: dict, device) -> None:
    """A checkpoint's weights (or adapter) and optimizer state back into the policy, its shards
    under FSDP2; mismatching or damaged files fail naming the file."""
    from wavalign.train import checkpoint as ckpt
    from wavalign.train import lora

    if loaded.lora:  # the adapter weights back into the PeftModel (or its shards)
        file = path / lora.ADAPTER_WEIGHTS
        weights = lora.check_adapter_weights(loaded.policy, ckpt.load_weights(file, device=str(device)), file)
        if loaded.sharded:
            fsdp.load_full_model_state(loaded.logprob_module, weights, prefix="lm.")
        else:
            loaded.policy.load_state_dict(weights, strict=False)
    else:
        weights = ckpt.load_weights(path / "model.safetensors", device=str(device))
        if loaded.sharded:
            missing, unexpected = fsdp.load_full_model_state(loaded.logprob_module, weights, prefix="lm.")
        else:
            missing, unexpected = loaded.policy.load_state_dict(weights, strict=False)
        tied = loaded.policy.config.tie_word_embeddings
        missing = [m for m in missing if not (tied and m == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint weights do not match the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    if loaded.sharded:
        fsdp.load_full_optimizer_state(loaded.logprob_module, optimizer, optimizer_state)
    else:
        optimizer.load_state_dict(optimizer_state)


# ---------------------------------------------------------------------------- optimizer
def build_optimizer(policy, config):
    """AdamW over what trains (every weight, or with model.lora the adapters alone) and the
    LR schedule (warmup, then cosine / linear / constant down to optim.min_lr_ratio)."""
    o = config.optim
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=o.lr,
                                  betas=tuple(o.betas), weight_decay=o.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))


def lr_lambda(config):
    optim = config.optim

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1.0 - progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape

    return factor


