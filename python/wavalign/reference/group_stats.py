"""Pure-PyTorch twin of the native group statistics."""

from __future__ import annotations

import torch


def reference_group_stats(
    rewards: torch.Tensor, *, mode: str = "grpo", std: str = "population", eps: float = 1e-4
) -> dict[str, torch.Tensor]:
    """rewards: [B, G] (NaN = no reward). Same fields as wavalign.ops.GroupStats."""
    r = rewards.detach().cpu().double()
    valid = ~torch.isnan(r)
    n = valid.sum(dim=1)  # [B]
    filled = torch.where(valid, r, torch.zeros_like(r))
    total = filled.sum(dim=1)
    mean = total / n.clamp(min=1)
    squares = torch.where(valid, (r - mean[:, None]) ** 2, torch.zeros_like(r)).sum(dim=1)
    divisor = (n - 1 if std == "sample" else n).double()
    variance = torch.where(divisor > 0, squares / divisor.clamp(min=1), torch.zeros_like(squares))
    std_dev = variance.sqrt()
    high = torch.where(valid, r, torch.full_like(r, float("-inf"))).max(dim=1).values
    low = torch.where(valid, r, torch.full_like(r, float("inf"))).min(dim=1).values
    all_missing = n == 0
    zero_variance = (n > 0) & (high == low)

    if mode == "grpo":
        adv = (r - mean[:, None]) / (std_dev[:, None] + eps)
    elif mode == "dr_grpo":
        adv = r - mean[:, None]
    elif mode == "rloo":
        others = (total[:, None] - r) / (n[:, None] - 1).clamp(min=1)
        adv = torch.where(n[:, None] > 1, r - others, torch.zeros_like(r))
    else:
        raise ValueError(f"unknown advantage mode {mode!r}")
    keep = valid & ~zero_variance[:, None]
    adv = torch.where(keep, adv, torch.zeros_like(adv))

    nan = torch.full_like(mean, float("nan"))

    def stat(x):
        return torch.where(all_missing, nan, x).float()

    return {
        "advantages": adv.float(),
        "valid_count": n.int(),
        "mean": stat(mean),
        "std": stat(std_dev),
        "variance": stat(variance),
        "max": stat(high),
        "min": stat(low),
        "zero_variance": zero_variance,
        "all_missing": all_missing,
    }
