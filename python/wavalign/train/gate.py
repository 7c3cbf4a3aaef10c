"""The dynamic gate of WavAlign: how much of the step is RL, how much SFT anchoring.

Per group g of rewards r on the declared scale [reward_min, reward_max] (PAPER.md §7):

    g_info = clip(Var_pop(r) / V_max, 0, 1),   V_max = ((reward_max - reward_min) / 2) ** 2
    g_rew  = sigmoid(sharpness * (max(r) - reliability_threshold))
    lambda_raw_g = lambda_max * g_rew * g_info

``adaptive``: lambda_t = mean_g clamp(ema * lambda_{t-1} + (1 - ema) * lambda_raw_g, 0, lambda_max),
and lambda_1 = mean_g lambda_raw_g on the first step. ``adaptive_no_ema``: lambda_t =
mean_g lambda_raw_g. ``fixed``: lambda_t = fixed_lambda. The loss is
lambda_t * L_RL + (1 - lambda_t) * L_SFT.

Missing rewards (NaN) are excluded; a group with none left is skipped and counted. Under
torch.distributed the per-group sums are all-reduced, so every rank gets the same lambda
(the public code computes it per process; we do not).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from wavalign import ops

GATE_MODES = ("adaptive", "adaptive_no_ema", "fixed")


@dataclass(frozen=True)
class GateConfig:
    mode: str = "adaptive"
    lambda_max: float = 0.8
    sharpness: float = 5.0  # k
    reliability_threshold: float = 3.0  # tau, on the reward scale
    ema: float = 0.9  # alpha
    reward_min: float = 1.0
    reward_max: float = 5.0
    fixed_lambda: float = 0.7  # RL weight in "fixed" mode (SFT weight is 1 - it)

    def __post_init__(self):
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate.mode must be one of {GATE_MODES}, got {self.mode!r}")
        for name in ("lambda_max", "fixed_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"gate.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"gate.ema must be in [0, 1), got {self.ema}")
        if self.sharpness <= 0:
            raise ValueError(f"gate.sharpness must be > 0, got {self.sharpness}")
        if not self.reward_max > self.reward_min:
            raise ValueError(
                f"gate.reward_max ({self.reward_max}) must be greater than gate.reward_min "
                f"({self.reward_min})"
            )

    @property
    def variance_scale(self) -> float:
        """Largest population variance on the reward scale (4 for 1-5 rewards)."""
        return ((self.reward_max - self.reward_min) / 2.0) ** 2


@dataclass(frozen=True)
class GateStep:
    """What one step decided, for logging. Per-group tensors are this rank's groups."""

    lam: float  # the weight of the RL loss this step
    g_info: torch.Tensor  # [B] float32 (NaN for skipped groups)
    g_rew: torch.Tensor  # [B]
    lambda_raw: torch.Tensor  # [B]
    groups_used: int  # across all ranks
    groups_skipped: int  # across all ranks: every reward missing

    def log_dict(self) -> dict[str, float]:
        used = ~torch.isnan(self.lambda_raw)
        mean = (lambda x: float(x[used].mean()) if used.any() else float("nan"))
        return {
            "gate/lambda": self.lam,
            "gate/g_info": mean(self.g_info),
            "gate/g_rew": mean(self.g_rew),
            "gate/lambda_raw": mean(self.lambda_raw),
            "gate/groups_used": float(self.groups_used),
            "gate/groups_skipped": float(self.groups_skipped),
        }


class AdaptiveGate:
    """Stateful gate: call :meth:`step` once per optimizer step with that step's rewards."""

    def __init__(self, config: GateConfig | None = None, process_group=None):
        self.config = config or GateConfig()
        self.process_group = process_group
        self.lam: float | None = None  # lambda_{t-1}; None before the first informative step
        self.steps = 0

    def terms(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rewards [B, G] -> (g_info, g_rew, lambda_raw), each [B]; NaN for all-missing groups."""
        c = self.config
        stats = ops.group_stats(rewards.detach().float().cpu().contiguous(), std="population")
        g_info = (stats.variance / c.variance_scale).clamp(0.0, 1.0)
        g_rew = torch.sigmoid(c.sharpness * (stats.max - c.reliability_threshold))
        lambda_raw = c.lambda_max * g_rew * g_info  # NaN stays NaN for skipped groups
        return g_info, g_rew, lambda_raw

    def step(self, rewards: torch.Tensor) -> GateStep:
        """rewards: [B, G] for this rank's groups, NaN = no reward."""
        if rewards.dim() != 2:
            raise ValueError(f"rewards must have shape [B, G], got {list(rewards.shape)}")
        c = self.config
        g_info, g_rew, lambda_raw = self.terms(rewards)
        used = ~torch.isnan(lambda_raw)
        if c.mode == "adaptive" and self.lam is not None:
            per_group = (c.ema * self.lam + (1.0 - c.ema) * lambda_raw).clamp(0.0, c.lambda_max)
        else:
            per_group = lambda_raw
        totals = torch.tensor(
            [float(per_group[used].sum()), float(used.sum()), float((~used).sum())], dtype=torch.float64
        )
        totals = self._all_reduce(totals, rewards.device)
        value_sum, n_used, n_skipped = float(totals[0]), int(totals[1]), int(totals[2])

        if c.mode == "fixed":
            lam = c.fixed_lambda
        elif n_used > 0:
            lam = value_sum / n_used
        else:  # no group carried any reward: keep the previous weight, RL off before any
            lam = self.lam if self.lam is not None else 0.0
        if c.mode != "fixed" and n_used > 0:
            self.lam = lam
        self.steps += 1
        return GateStep(lam, g_info, g_rew, lambda_raw, n_used, n_skipped)

    def _all_reduce(self, totals: torch.Tensor, device: torch.device) -> torch.Tensor:
        if not (dist.is_available() and dist.is_initialized()):
            return totals
        backend = dist.get_backend(self.process_group)
        buffer = totals.to(device if backend == "nccl" else "cpu")
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.process_group)
        return buffer.cpu()

    def state_dict(self) -> dict:
        return {"lam": self.lam, "steps": self.steps, "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("config") and state["config"] != asdict(self.config):
            raise ValueError(
                f"gate state was saved with config {state['config']}, this gate has "
                f"{asdict(self.config)}; resume with the same gate settings"
            )
        self.lam = state["lam"]
        self.steps = int(state["steps"])
