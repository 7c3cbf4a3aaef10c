"""Property tests: a sampled id always lies in the row's allowed set and kept set."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_logits
from wavalign import ops
from wavalign.reference import processed_distribution, reference_sample_tokens


@st.composite
def sampling_problems(draw):
    n = draw(st.integers(1, 6))
    vocab = draw(st.integers(1, 300))
    n_ranges = draw(st.integers(1, 4))
    ranges = []
    for _ in range(n):
        row = []
        for _ in range(n_ranges):
            lo = draw(st.integers(0, vocab))
            hi = draw(st.integers(lo, vocab))
            row.append((lo, hi))
        if all(lo == hi for lo, hi in row):  # keep every row non-empty
            row[0] = (0, vocab)
        ranges.append(row)
    params = dict(
        temperature=torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.3, 1.0, 2.5]), min_size=n, max_size=n))),
        top_k=torch.tensor(draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), dtype=torch.int64),
        top_p=torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=n, max_size=n)), dtype=torch.float32),
        min_p=torch.tensor(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)), dtype=torch.float32),
    )
    scale = draw(st.sampled_from([0.01, 1.0, 10.0, 300.0]))
    logits = make_logits(n, vocab, seed=draw(st.integers(0, 10**6)), scale=scale)
    ties = draw(st.booleans())
    if ties:
        logits = logits.round()
    return logits, torch.tensor(ranges, dtype=torch.int64), params, draw(st.integers(0, 2**64 - 1))


# derandomize: the same 150 examples every run, so CI is reproducible.
@settings(max_examples=150, deadline=None, derandomize=True)
@given(sampling_problems())
def test_sampled_ids_respect_allowed_and_kept_sets(problem):
    logits, ranges, params, seed = problem
    out = ops.sample_tokens(logits, allowed_ranges=ranges, seed=seed, **params)
    probs = processed_distribution(logits, allowed_ranges=ranges, **params)
    for row, token in enumerate(out.ids.tolist()):
        assert any(lo <= token < hi for lo, hi in ranges[row].tolist()), (row, token)
        assert probs[row, token] > 0, (row, token)
    ref_ids, ref_logprobs, _ = reference_sample_tokens(logits, allowed_ranges=ranges, seed=seed, **params)
    assert torch.equal(out.ids, ref_ids)
    torch.testing.assert_close(out.logprobs, ref_logprobs, atol=1e-5, rtol=1e-5)
