"""Shared test utilities: deterministic logits and a goodness-of-fit check."""

from __future__ import annotations

import math

import torch


def make_logits(n: int, vocab: int, seed: int, scale: float = 2.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocab, generator=generator) * scale).to(dtype)


def empirical_frequencies(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(ids, minlength=vocab).double() / ids.numel()


def assert_matches_distribution(ids: torch.Tensor, probs: torch.Tensor) -> None:
    """ids: [M] draws; probs: [V] exact distribution (float64).

    Zero-probability ids must never be drawn; on the support a chi-square statistic must
    stay under a bound that a correct sampler exceeds with probability far below 1e-6
    (mean df, spread sqrt(2 df)); total variation must be small for the number of draws.
    """
    vocab = probs.numel()
    counts = torch.bincount(ids, minlength=vocab).double()
    draws = ids.numel()
    assert counts[probs == 0].sum() == 0, "drew an id whose probability is zero"
    support = probs > 0
    expected = probs[support] * draws
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = max(int(support.sum()) - 1, 1)
    bound = dof + 7.0 * math.sqrt(2.0 * dof) + 10.0
    assert chi2 < bound, f"chi-square {chi2:.1f} exceeds {bound:.1f} (dof {dof})"
    # E[TV] <= 0.5 * sqrt(2 / pi) * sqrt(k / draws); this bound sits ~2.5x above it.
    tv = 0.5 * float((counts / draws - probs).abs().sum())
    tv_bound = math.sqrt(int(support.sum()) / draws)
    assert tv < tv_bound, f"total variation {tv:.4f} exceeds {tv_bound:.4f}"


def assert_group_stats_match(native, expected: dict) -> None:
    """Every field of a GroupStats equals its reference twin's: floats to 1e-5 (NaN = NaN),
    counts and flags exactly."""
    for name, want in expected.items():
        got = getattr(native, name)
        if got.dtype.is_floating_point:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
        else:
            assert torch.equal(got, want), name
