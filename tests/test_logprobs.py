"""Chunked selected-token log-probs equal the naive full-logits computation."""

import pytest
import torch

from wavalign.logprobs import naive_selected_logprobs, selected_logprobs


def _problem(n=3, t=7, h=16, v=50, seed=0, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True) if bias else None
    targets = torch.randint(0, v, (n, t), generator=g)
    return hidden, weight, b, targets


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_naive(chunk, temperature):
    hidden, weight, bias, targets = _problem()
    upstream = torch.randn(3, 7, generator=torch.Generator().manual_seed(5))
    lean, lean_entropy = selected_logprobs(hidden, weight, targets, bias=bias, temperature=temperature,
                                           chunk_tokens=chunk, return_entropy=True)
    ((lean * upstream).sum() + (lean_entropy * upstream.flip(0)).sum()).backward()
    lean_grads = [x.grad.clone() for x in (hidden, weight, bias)]
    for x in (hidden, weight, bias):
        x.grad = None
    naive, naive_entropy = naive_selected_logprobs(hidden, weight, targets, bias=bias,
                                                   temperature=temperature, return_entropy=True)
    ((naive * upstream).sum() + (naive_entropy * upstream.flip(0)).sum()).backward()
    torch.testing.assert_close(lean, naive.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean_entropy, naive_entropy.float(), rtol=1e-5, atol=1e-5)
    # logits are taken in float32 on both paths, so gradients agree to float32 rounding
    for got, x in zip(lean_grads, (hidden, weight, bias)):
        torch.testing.assert_close(got, x.grad, rtol=1e-4, atol=1e-4)


def test_float32_and_no_bias_and_frozen_weight():
    hidden, weight, _, targets = _problem(dtype=torch.float32, bias=False, v=300)
    weight.requires_grad_(False)
    lean = selected_logprobs(hidden, weight, targets, chunk_tokens=5)
    lean.sum().backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    naive = naive_selected_logprobs(hidden, weight, targets)
    naive.sum().backward()
    torch.testing.assert_close(lean, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, hidden.grad, rtol=1e-4, atol=1e-5)
    assert weight.grad is None


def test_logprobs_are_normalised():
    hidden, weight, bias, _ = _problem(n=1, t=1, v=20)
    every = torch.arange(20).reshape(1, 20)
    lp = selected_logprobs(hidden.expand(1, 20, 16), weight, every, bias=bias)
    assert float(lp.detach().exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_bad_input():
    hidden, weight, _, targets = _problem()
    with pytest.raises(ValueError, match="targets must have the leading shape of hidden"):
        selected_logprobs(hidden, weight, targets[:, :3])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 50\)"):
        selected_logprobs(hidden, weight, targets + 50)
    with pytest.raises(TypeError, match="targets must have dtype int64"):
        selected_logprobs(hidden, weight, targets.int())
    with pytest.raises(ValueError, match=r"weight must have shape \[V, 16\]"):
        selected_logprobs(hidden, weight.t(), targets)
    with pytest.raises(ValueError, match="chunk_tokens must be a positive int"):
        selected_logprobs(hidden, weight, targets, chunk_tokens=0)
