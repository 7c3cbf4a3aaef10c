"""FSDP2 (torch.distributed.fsdp.fully_shard) for models that do not fit one device.

Each transformer block (the classes the model lists in `_no_split_modules`, the Hugging Face
convention) becomes its own FSDP unit; the ResponseLogprobs wrapper is the root unit and
holds what is left (embeddings, final norm, LM head). Parameters live as shards (DTensors)
between steps; a unit's forward all-gathers it and frees it again afterwards.

Rollouts are the one place this needs care: a rank's decode loop stops when its own
responses end, so ranks make different numbers of forward calls, and per-layer all-gathers
would deadlock. `full_parameters` gathers every unit once before sampling and keeps it
gathered (no collective inside the loop), then reshards.

Checkpoints are written as full tensors (`torch.distributed.checkpoint.state_dict`), so a
checkpoint saved by N sharded processes is an ordinary Hugging Face directory.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist


def shard(root: torch.nn.Module, lm: torch.nn.Module, device: torch.device, *, cpu_offload: bool = False) -> int:
    """fully_shard every block of `lm`, then `root` (which contains lm). -> number of blocks.
    cpu_offload: parameters, gradients and optimizer state live on the CPU between uses
    (CPUOffloadPolicy; pinned memory only with CUDA); the optimizer step runs on the CPU."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    block_names = set(getattr(lm, "_no_split_modules", None) or [])
    if not block_names:
        raise ValueError(f"{type(lm).__name__} lists no _no_split_modules: FSDP2 cannot tell its transformer "
                         "blocks; use distributed.strategy=ddp")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = [m for m in lm.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"none of {sorted(block_names)} occurs in {type(lm).__name__}")
    options = {"offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda")} if cpu_offload else {}
    for block in blocks:
        fully_shard(block, mesh=mesh, **options)
    fully_shard(root, mesh=mesh, **options)
    return len(blocks)


def _units(root: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_parameters(root: torch.nn.Module):
    """Every FSDP unit under root gathered for the duration (no-op when nothing is sharded).
    All ranks must enter together; inside, forward calls need no collectives."""
    units = _units(root)
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(root: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Full weights on rank 0 (CPU), {} on the others; keys without `prefix` (e.g. 'lm.').
    Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(root, options=_options(cpu_offload=True))
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_full_model_state(root: torch.nn.Module, weights: dict[str, torch.Tensor], prefix: str):
    """Load full weights (every rank passes the same dict) into the shards. -> (missing, unexpected)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    result = set_model_state_dict(root, {prefix + k: v for k, v in weights.items()}, options=_options(strict=False))
    strip = (lambda names: [n[len(prefix):] if n.startswith(prefix) else n for n in names])
    return strip(result.missing_keys), strip(result.unexpected_keys)


def full_optimizer_state(root: torch.nn.Module, optimizer) -> dict:
    """Optimizer state keyed by parameter name, full tensors on rank 0. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(root, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(root: torch.nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(root, optimizer, state, options=_options())
