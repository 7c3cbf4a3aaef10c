"""Rank helpers: who this process is, which device it uses, and the few collectives a step needs.

Every helper is a no-op (returns its input) in a single-process run, so the training code
reads the same with or without torchrun. The trainer and the gate use these, nothing else
calls torch.distributed directly for reductions.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (from torchrun's environment variables)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(backend: str, device_choice: str, *, cpu_offload: bool = False) -> None:
    """Join the torchrun job once; backend 'auto' is nccl on GPU, gloo on CPU. cpu_offload
    (FSDP2): with nccl, CPU tensors (offloaded shards, their gradient norm) go through gloo."""
    if dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and device_choice != "cpu" else "gloo"
    if cpu_offload and backend == "nccl":
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """run.device ('auto', 'cuda' or 'cpu') -> this process's device; asking for CUDA without one fails clearly."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _buffer_device(device: torch.device | str | None, group=None) -> torch.device | str:
    """nccl reduces on the GPU, gloo on the CPU."""
    return device if dist.get_backend(group) == "nccl" and device is not None else "cpu"


def all_reduce_tensor(values: torch.Tensor, op: str = "sum", device=None, group=None) -> torch.Tensor:
    """values (any shape, float64 recommended) reduced over ranks; returned on the CPU."""
    if not is_initialized():
        return values
    buffer = values.to(_buffer_device(device, group))
    dist.all_reduce(buffer, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                                "max": dist.ReduceOp.MAX}[op], group=group)
    return buffer.cpu()


def all_reduce(values: list[float], op: str = "sum", device=None) -> list[float]:
    """A few Python numbers reduced over ranks (sum, min or max)."""
    if not is_initialized():
        return values
    return all_reduce_tensor(torch.tensor(values, dtype=torch.float64), op, device).tolist()


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the ranks that report it (NaN ignored); shards are equal-sized."""
    if not is_initialized():
        return metrics
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, metrics)
    out = {}
    for key in sorted({k for m in gathered for k in m}):
        values = [m[key] for m in gathered if key in m and not math.isnan(m[key])]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def broadcast_object(value, src: int = 0):
    """rank `src`'s value on every rank."""
    if not is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(value) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank."""
    if not is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
