"""Empirical frequencies of the native sampler against the exact processed distribution."""

import pytest
import torch

from helpers import assert_matches_distribution, make_logits
from wavalign import ops
from wavalign.reference import processed_distribution

DRAWS = 60_000
VOCAB = 48

FILTERS = {
    "plain": dict(),
    "temperature_0.5": dict(temperature=0.5),
    "temperature_2": dict(temperature=2.0),
    "top_k_5": dict(top_k=5),
    "top_p_0.7": dict(top_p=0.7),
    "min_p_0.1": dict(min_p=0.1),
    "top_k_then_top_p": dict(top_k=12, top_p=0.8),
    "all": dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05),
    "speech_mask_top_p": dict(allowed_ranges=[(30, 46), (47, 48)], top_p=0.9),
    "penalties": dict(
        history=torch.tensor([[1, 1, 5, 7, 7, 7, -1, 40]]),
        repetition_penalty=1.5, presence_penalty=0.4, frequency_penalty=0.25,
    ),
}


def _draw(logits_row: torch.Tensor, kwargs: dict, dtype=torch.float32) -> torch.Tensor:
    batch = logits_row.to(dtype).expand(DRAWS, -1).contiguous()
    kwargs = dict(kwargs)
    if "history" in kwargs:
        kwargs["history"] = kwargs["history"].expand(DRAWS, -1).contiguous()
    return ops.sample_tokens(batch, seed=11, offsets=torch.arange(DRAWS) + 10**9, **kwargs).ids


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_frequencies_match_processed_distribution(name):
    logits = make_logits(1, VOCAB, seed=21, scale=1.5)
    kwargs = FILTERS[name]
    probs = processed_distribution(logits, **kwargs)[0]
    assert_matches_distribution(_draw(logits, kwargs), probs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    logits = make_logits(1, VOCAB, seed=22, scale=1.5).to(dtype)
    kwargs = dict(top_p=0.85, temperature=0.9)
    probs = processed_distribution(logits, **kwargs)[0]
    assert_matches_distribution(_draw(logits, kwargs, dtype), probs)


def test_the_check_detects_a_wrong_distribution():
    # Guard against a vacuous test: unfiltered draws must fail against the top-p target.
    logits = make_logits(1, VOCAB, seed=23, scale=1.5)
    target = processed_distribution(logits, top_p=0.7)[0]
    with pytest.raises(AssertionError):
        assert_matches_distribution(_draw(logits, {}), target)
    slightly_off = processed_distribution(logits, temperature=1.1)[0]
    with pytest.raises(AssertionError):
        assert_matches_distribution(_draw(logits, {}), slightly_off)


@pytest.mark.slow
def test_large_vocabulary_speech_phase_distribution():
    # VITA-Audio-sized vocabulary; only a 64-id speech slice is allowed, top-p 0.9.
    vocab, lo, hi = 168_072, 160_000, 160_064
    logits = make_logits(1, vocab, seed=24, scale=1.0)
    kwargs = dict(allowed_ranges=[(lo, hi)], top_p=0.9, temperature=0.8)
    probs = processed_distribution(logits, **kwargs)[0]
    draws = 20_000
    batch = logits.expand(draws, -1).contiguous()
    ids = ops.sample_tokens(batch, seed=3, **kwargs).ids
    assert_matches_distribution(ids, probs)
