"""Chunked selected-token log-probs equal the naive full-logits computation; so do the response
log-probs of a packed batch."""

import pytest
import torch

from wavalign.logprobs import naive_selected_logprobs, selected_logprobs
from wavalign.modality import ModalitySpec, Schedule


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


# ---------------------------------------------------------------------------- packed batches
SPEC = ModalitySpec(vocab_size=100, text_ranges=((0, 40),), speech_ranges=((50, 100),), eos=0, pad=1,
                    begin_audio=40, end_audio=41, schedule=Schedule.sequential())


def test_packed_response_logprobs_equal_the_full_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    from wavalign.logprobs import ResponseLogprobs, ResponseRows, pack

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    responses = [[12, 40, 55, 41, 0], [20, 40, 60, 61, 62, 41, 0], [40, 51, 41, 0]]
    rows = ResponseRows.from_lists(prompts, responses, SPEC, pad_id=1)
    batch = pack(rows, pad_id=1, device="cpu")
    logp = ResponseLogprobs(model)(batch.ids, batch.mask, batch.starts, batch.width)
    assert logp.shape == (3, 7)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        full = torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0].float(), dim=-1)
        expected = full[len(p) - 1:len(p) + len(r) - 1].gather(1, torch.tensor(r)[:, None]).squeeze(1)
        torch.testing.assert_close(logp[row, :len(r)], expected, rtol=1e-4, atol=1e-5)
        assert (rows.types[row, len(r):] == -1).all() and (rows.types[row, :len(r)] >= 0).all()
    logp.sum().backward()  # the LM head (untied) gets a gradient
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
