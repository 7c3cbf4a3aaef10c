"""Preference pairs for DPO built from rollouts (PAPER.md §8).

- ``best_vs_worst``: per prompt, the best and the worst sample by a pair score, kept only when
  the score gap is at least ``min_gap``; groups without two scored samples or without the gap
  are skipped and counted.
- ``gold_vs_sampled``: the gold response is chosen, every sampled response that differs from it
  is a reject.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def pair_scores(components: dict[str, torch.Tensor], composite: torch.Tensor, how: str) -> torch.Tensor:
    """The score pairs are ranked by. components: name -> [N] (NaN = missing); composite: [N].

    how: "sum" (sum of every component), "weighted" (the run's reward), or a component name.
    """
    if how == "weighted":
        return composite
    if how == "sum":
        return torch.stack(list(components.values())).sum(dim=0)  # NaN if any component is missing
    if how not in components:
        raise ValueError(f"dpo.pair_score {how!r} is neither 'sum', 'weighted' nor a reward component "
                         f"({sorted(components)})")
    return components[how]


def best_vs_worst(scores: torch.Tensor, min_gap: float) -> tuple[list[tuple[int, int, int]], dict[str, float]]:
    """scores [B, G] (NaN = unscored) -> ([(prompt, chosen sample, rejected sample)], stats)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, G], got {list(scores.shape)}")
    pairs, too_few, no_gap = [], 0, 0
    for prompt, row in enumerate(scores.tolist()):
        scored = [(value, sample) for sample, value in enumerate(row) if not math.isnan(value)]
        if len(scored) < 2:
            too_few += 1
            continue
        # Ties broken by sample index, so the choice is deterministic.
        best = max(scored, key=lambda item: (item[0], -item[1]))
        worst = min(scored, key=lambda item: (item[0], item[1]))
        if best[0] - worst[0] < min_gap or best[1] == worst[1]:
            no_gap += 1
            continue
        pairs.append((prompt, best[1], worst[1]))
    return pairs, {"pairs/built": float(len(pairs)), "pairs/too_few_scores": float(too_few),
                   "pairs/below_gap": float(no_gap)}


def gold_vs_sampled(gold: Sequence[Sequence[int] | None], samples: Sequence[Sequence[Sequence[int]]]
                    ) -> tuple[list[tuple[int, int]], dict[str, float]]:
    """gold[b]: gold response ids (None = no target); samples[b][g]: sampled ids.
    -> ([(prompt, rejected sample)], stats). A sample identical to the gold is not a reject."""
    pairs, no_gold, identical = [], 0, 0
    for prompt, (target, group) in enumerate(zip(gold, samples)):
        if target is None:
            no_gold += 1
            continue
        for sample, ids in enumerate(group):
            if list(ids) == list(target):
                identical += 1
            else:
                pairs.append((prompt, sample))
    return pairs, {"pairs/built": float(len(pairs)), "pairs/no_gold": float(no_gold),
                   "pairs/identical_to_gold": float(identical)}
