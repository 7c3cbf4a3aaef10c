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

from wavalign import ops
from wavalign.train import distributed

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
    """Stateful gate: call :meth:`step` once per optimizer step with that step's GroupStats."""

    def __init__(self, config: GateConfig | None = None, process_group=None, device: torch.device | None = None):
        """device: where nccl reduces the gate's sums (the trainer's device); gloo reduces on the CPU."""
        self.config = config or GateConfig()
        self.process_group = process_group
        self.device = device
        self.lam: float | None = None  # lambda_{t-1}; None before the first informative step
        self.steps = 0

    def terms(self, stats: ops.GroupStats | torch.Tensor, *, sample_variance: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group statistics of this step's rewards -> (g_info, g_rew, lambda_raw), each [B];
        NaN for all-missing groups.

        stats: the step's GroupStats (computed once by the collector), or rewards [B, G]
        (statistics are then computed here). The information term uses the population
        variance; sample_variance=True says the stats carry the n-1 variance (advantage_std
        'sample'), which is converted back.
        """
        c = self.config
        if isinstance(stats, torch.Tensor):
            stats = ops.group_stats(stats.detach().float().cpu().contiguous(), std="population")
            sample_variance = False
        variance = stats.variance.cpu()
        if sample_variance:  # sum of squares / (n - 1) -> / n
            n = stats.valid_count.cpu().float()
            variance = variance * (n - 1).clamp(min=0) / n.clamp(min=1)
        g_info = (variance / c.variance_scale).clamp(0.0, 1.0)
        g_rew = torch.sigmoid(c.sharpness * (stats.max.cpu() - c.reliability_threshold))
        lambda_raw = c.lambda_max * g_rew * g_info  # NaN stays NaN for skipped groups
        return g_info, g_rew, lambda_raw

    def step(self, stats: ops.GroupStats | torch.Tensor, *, sample_variance: bool = False) -> GateStep:
        """stats: this rank's GroupStats (B groups), or its rewards [B, G] with NaN = no reward."""
        if isinstance(stats, torch.Tensor) and stats.dim() != 2:
            raise ValueError(f"rewards must have shape [B, G], got {list(stats.shape)}")
        c = self.config
        g_info, g_rew, lambda_raw = self.terms(stats, sample_variance=sample_variance)
        used = ~torch.isnan(lambda_raw)
        if c.mode == "adaptive" and self.lam is not None:
            per_group = (c.ema * self.lam + (1.0 - c.ema) * lambda_raw).clamp(0.0, c.lambda_max)
        else:
            per_group = lambda_raw
        totals = torch.tensor(
            [float(per_group[used].sum()), float(used.sum()), float((~used).sum())], dtype=torch.float64
        )
        totals = distributed.all_reduce_tensor(totals, "sum", self.device, group=self.process_group)
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
