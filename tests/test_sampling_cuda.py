"""CUDA sampler: same semantics as the CPU path and the PyTorch twin (skipped without a GPU)."""

import pytest
import torch

from helpers import assert_matches_distribution, make_logits
from wavalign import ops
from wavalign.reference import processed_distribution, reference_sample_tokens

pytestmark = pytest.mark.cuda

CASES = [
    dict(),
    dict(temperature=0.6, top_k=7),
    dict(top_p=0.8),
    dict(min_p=0.1, temperature=1.4),
    dict(temperature=1.3, top_k=40, top_p=0.9, min_p=0.02),
    dict(allowed_ranges=[(10, 60), (200, 230)], top_p=0.95),
    dict(temperature=0.0, allowed_ranges=[(50, 250)]),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_equals_reference(kwargs, dtype):
    logits = make_logits(300, 257, seed=1, dtype=dtype)
    gpu = ops.sample_tokens(logits.cuda(), seed=99, **kwargs)
    ids, logprobs, raw = reference_sample_tokens(logits, seed=99, **kwargs)
    assert gpu.ids.is_cuda
    # Atomic accumulation order may move a top-p boundary by one rounding error, so allow
    # a rare mismatch rather than demanding bit-equal ids.
    assert (gpu.ids.cpu() != ids).float().mean() < 0.01
    same = gpu.ids.cpu() == ids
    torch.testing.assert_close(gpu.logprobs.cpu()[same], logprobs[same], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpu.raw_logprobs.cpu()[same], raw[same], atol=1e-5, rtol=1e-5)


def test_cuda_penalties_match_cpu():
    n, vocab = 64, 500
    logits = make_logits(n, vocab, seed=2)
    history = torch.randint(-1, vocab, (n, 32), generator=torch.Generator().manual_seed(3))
    kwargs = dict(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2, temperature=0.0)
    cpu = ops.sample_tokens(logits, history=history, **kwargs)
    gpu = ops.sample_tokens(logits.cuda(), history=history.cuda(), **kwargs)
    assert torch.equal(cpu.ids, gpu.ids.cpu())


def test_cuda_distribution_large_vocab():
    vocab = 168_072
    logits = make_logits(1, vocab, seed=4, scale=1.0)
    kwargs = dict(allowed_ranges=[(160_000, 160_064)], top_p=0.9, temperature=0.8)
    probs = processed_distribution(logits, **kwargs)[0]
    batch = logits.cuda().expand(20_000, -1).contiguous()
    ids = ops.sample_tokens(batch, seed=3, **kwargs).ids.cpu()
    assert_matches_distribution(ids, probs)


def test_device_mismatch_names_the_argument():
    logits = make_logits(4, 50, seed=5).cuda()
    with pytest.raises(ValueError, match="temperature is on cpu but logits is on cuda:0"):
        ops.sample_tokens(logits, temperature=torch.ones(4))
    with pytest.raises(ValueError, match="history is on cpu but logits is on cuda:0"):
        ops.sample_tokens(logits, history=torch.zeros(4, 2, dtype=torch.int64))


def test_cuda_errors_name_the_row():
    logits = make_logits(4, 50, seed=6)
    logits[2, 3] = float("nan")
    with pytest.raises(ValueError, match="row 2 cannot be sampled: its logits contain NaN"):
        ops.sample_tokens(logits.cuda())
