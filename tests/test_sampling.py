"""Native sampler vs its PyTorch twin: exact ids, logprobs, greedy, determinism."""

import numpy as np
import pytest
import torch

from helpers import make_logits
from wavalign import ops
from wavalign.reference import processed_distribution, reference_sample_tokens

CASES = {
    "plain": dict(),
    "temperature": dict(temperature=0.6),
    "top_k": dict(top_k=7),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.1),
    "all_filters": dict(temperature=1.3, top_k=40, top_p=0.9, min_p=0.02),
    "mask": dict(allowed_ranges=[(10, 60), (200, 230)], top_p=0.95),
    "penalties": dict(repetition_penalty=1.4, presence_penalty=0.5, frequency_penalty=0.3),
    "greedy": dict(temperature=0.0, allowed_ranges=[(50, 250)]),
}


def _with_history(kwargs, n, vocab, seed):
    if "repetition_penalty" in kwargs:
        generator = torch.Generator().manual_seed(seed)
        kwargs = dict(kwargs, history=torch.randint(-1, vocab, (n, 16), generator=generator))
    return kwargs


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_native_equals_reference(name, dtype):
    n, vocab = 300, 257
    logits = make_logits(n, vocab, seed=1, dtype=dtype)
    kwargs = _with_history(CASES[name], n, vocab, seed=2)
    native = ops.sample_tokens(logits, seed=99, **kwargs)
    ids, logprobs, raw = reference_sample_tokens(logits, seed=99, **kwargs)
    assert torch.equal(native.ids, ids)
    torch.testing.assert_close(native.logprobs, logprobs, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(native.raw_logprobs, raw, atol=2e-6, rtol=1e-6)


def test_logprobs_are_log_of_processed_and_raw_distributions():
    n, vocab = 64, 500
    logits = make_logits(n, vocab, seed=3)
    kwargs = dict(temperature=0.8, top_p=0.9, allowed_ranges=[(100, 400)])
    out = ops.sample_tokens(logits, seed=5, **kwargs)
    probs = processed_distribution(logits, **kwargs)
    rows = torch.arange(n)
    expected = probs[rows, out.ids].log().float()
    torch.testing.assert_close(out.logprobs, expected, atol=1e-5, rtol=1e-5)
    raw = torch.log_softmax(logits.double(), dim=-1)[rows, out.ids].float()
    torch.testing.assert_close(out.raw_logprobs, raw, atol=1e-5, rtol=1e-5)


def test_greedy_is_argmax_of_masked_logits():
    n, vocab = 128, 1000
    logits = make_logits(n, vocab, seed=4)
    # ties: lowest id wins, like torch.argmax
    logits[0, 10] = logits[0, 20] = logits[0].max() + 1.0
    ranges = torch.tensor([(0, 300), (700, 1000)])
    out = ops.sample_tokens(logits, temperature=0.0, allowed_ranges=ranges)
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[0:300] = True
    mask[700:1000] = True
    expected = logits.masked_fill(~mask, float("-inf")).argmax(dim=-1)
    assert torch.equal(out.ids, expected)
    assert int(out.ids[0]) == 10
    assert torch.all(out.logprobs == 0)


def test_per_row_parameters_and_ranges():
    n, vocab = 6, 400
    logits = make_logits(n, vocab, seed=5)
    temperature = torch.tensor([0.0, 0.5, 1.0, 1.5, 0.0, 0.9])
    top_k = torch.tensor([0, 5, 0, 50, 0, 1])
    ranges = torch.tensor(
        [[(0, 100), (0, 0)], [(100, 200), (0, 0)], [(300, 400), (0, 0)],
         [(0, 400), (0, 0)], [(5, 6), (0, 0)], [(0, 10), (390, 400)]]
    )
    out = ops.sample_tokens(logits, temperature=temperature, top_k=top_k, allowed_ranges=ranges)
    ref = reference_sample_tokens(logits, temperature=temperature, top_k=top_k, allowed_ranges=ranges)
    assert torch.equal(out.ids, ref[0])
    assert int(out.ids[4]) == 5
    for row in range(n):
        lo_hi = [tuple(r) for r in ranges[row].tolist() if r[0] < r[1]]
        assert any(lo <= int(out.ids[row]) < hi for lo, hi in lo_hi)


def test_same_seed_same_ids_and_different_seed_differs():
    logits = make_logits(256, 300, seed=6)
    a = ops.sample_tokens(logits, seed=7)
    b = ops.sample_tokens(logits, seed=7)
    c = ops.sample_tokens(logits, seed=8)
    assert torch.equal(a.ids, b.ids)
    assert not torch.equal(a.ids, c.ids)


def test_rows_do_not_depend_on_batch_composition():
    logits = make_logits(64, 300, seed=9)
    offsets = torch.arange(1000, 1064)
    full = ops.sample_tokens(logits, top_p=0.9, seed=3, offsets=offsets)
    picked = torch.tensor([5, 17, 40, 63])
    alone = ops.sample_tokens(
        logits[picked].contiguous(), top_p=0.9, seed=3, offsets=offsets[picked].contiguous()
    )
    assert torch.equal(full.ids[picked], alone.ids)


def test_seeded_golden_output():
    # Logits from a closed form (no RNG), so the golden ids survive torch upgrades.
    n, vocab = 8, 64
    grid = torch.arange(n * vocab, dtype=torch.float64).reshape(n, vocab)
    logits = (3.0 * torch.sin(grid * 0.37) + torch.cos(grid * 0.011)).float()
    kwargs = dict(temperature=0.9, top_k=20, top_p=0.9, seed=2026, offsets=torch.arange(n) * 7)
    golden = [21, 43, 46, 16, 18, 57, 26, 51]
    assert ops.sample_tokens(logits, **kwargs).ids.tolist() == golden
    assert reference_sample_tokens(logits, **kwargs)[0].tolist() == golden


def test_top_k_keeps_ties_at_the_boundary():
    logits = torch.zeros(1, 10)
    logits[0, :3] = 1.0  # three ties at the top, seven ties below
    probs = processed_distribution(logits, top_k=2)
    assert torch.all(probs[0, :3] > 0) and torch.all(probs[0, 3:] == 0)
    ids = ops.sample_tokens(logits.expand(3000, -1).contiguous(), top_k=2).ids
    assert set(ids.tolist()) == {0, 1, 2}


def test_wide_spread_logits_use_the_tail_bucket():
    # Most logits lie far (> 32 nats) below the max: thresholds fall in the histogram's
    # catch-all bucket and must still be exact.
    n, vocab = 16, 4000
    logits = -torch.linspace(0, 2000, vocab).repeat(n, 1) + make_logits(n, vocab, seed=10, scale=0.01)
    for kwargs in (dict(top_k=500), dict(top_p=0.999999999), dict(temperature=50.0, top_p=0.99)):
        native = ops.sample_tokens(logits, seed=1, **kwargs)
        ref = reference_sample_tokens(logits, seed=1, **kwargs)
        assert torch.equal(native.ids, ref[0]), kwargs
        torch.testing.assert_close(native.logprobs, ref[1], atol=1e-5, rtol=1e-5)


def test_large_vocabulary_and_many_rows():
    vocab = 168_072  # VITA-Audio's vocabulary
    logits = make_logits(4, vocab, seed=11, scale=3.0)
    speech = [(151_000, vocab)]
    # top_k=50 takes the small-candidate path; top_k=20000 the histogram path.
    for kwargs in (dict(top_p=0.9), dict(top_k=50), dict(top_k=20_000, top_p=0.95),
                   dict(top_k=50, top_p=0.8, temperature=0.5), dict(min_p=0.05, allowed_ranges=speech),
                   dict(temperature=0.7, top_p=0.9, allowed_ranges=speech)):
        native = ops.sample_tokens(logits, seed=4, **kwargs)
        ref = reference_sample_tokens(logits, seed=4, **kwargs)
        assert torch.equal(native.ids, ref[0]), kwargs
    many = make_logits(4096, 600, seed=12)
    native = ops.sample_tokens(many, top_p=0.9, top_k=100, seed=5)
    assert torch.equal(native.ids, reference_sample_tokens(many, top_p=0.9, top_k=100, seed=5)[0])


def test_numpy_inputs_are_accepted_without_copy_semantics_changes():
    logits = make_logits(32, 100, seed=13)
    out_np = ops.sample_tokens(logits.numpy(), top_p=0.9, seed=3)
    out_t = ops.sample_tokens(logits, top_p=0.9, seed=3)
    assert isinstance(out_np.ids, torch.Tensor)
    assert torch.equal(out_np.ids, out_t.ids)
    assert isinstance(logits.numpy(), np.ndarray)


def test_does_not_modify_logits_and_threads_setting():
    logits = make_logits(16, 200, seed=14)
    before = logits.clone()
    history = torch.randint(0, 200, (16, 8))
    ops.sample_tokens(logits, repetition_penalty=2.0, history=history, temperature=0.5, top_k=5)
    assert torch.equal(logits, before)
    threads = ops.get_num_threads()
    ops.set_num_threads(1)
    one = ops.sample_tokens(logits, seed=1).ids
    ops.set_num_threads(threads)
    assert torch.equal(one, ops.sample_tokens(logits, seed=1).ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paired_raw_statistics_equal_one_row_at_a_time(dtype):
    # Batches of >= 4 rows per thread take the raw statistics two rows per pass; every row's
    # result must be bit-identical to sampling it alone (one row: the single-row pass).
    n, vocab = 17, 3001  # odd: an unpaired last row and a partial last block
    logits = make_logits(n, vocab, seed=21, scale=4.0).to(dtype)
    logits[3, :2048] = float("-inf")  # whole blocks of -inf in one row of a pair
    logits[8, 1500:] = float("-inf")
    kwargs = dict(temperature=0.8, top_p=0.9, seed=5, offsets=torch.arange(n) * 3)
    batch = ops.sample_tokens(logits, **kwargs)
    for row in range(n):
        alone = ops.sample_tokens(logits[row:row + 1].contiguous(), temperature=0.8, top_p=0.9, seed=5,
                                  offsets=kwargs["offsets"][row:row + 1].contiguous())
        assert batch.ids[row] == alone.ids[0]
        assert torch.equal(batch.raw_logprobs[row:row + 1], alone.raw_logprobs), row
        assert torch.equal(batch.logprobs[row:row + 1], alone.logprobs), row


def test_a_bad_row_in_a_pair_is_named():
    logits = make_logits(16, 2000, seed=22)
    logits[9, 1234] = float("nan")
    with pytest.raises(ValueError, match="row 9"):
        ops.sample_tokens(logits)
