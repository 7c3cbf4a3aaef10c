"""Bad input raises a clear Python exception naming the problem, never a crash."""

import pytest
import torch

from helpers import make_logits
from wavalign import ops

N, V = 4, 50


@pytest.fixture
def logits():
    return make_logits(N, V, seed=31)


def test_wrong_logits_dtype(logits):
    with pytest.raises(TypeError, match="logits must have dtype float32 or bfloat16 or float16, got int64"):
        ops.sample_tokens(logits.long())
    with pytest.raises(TypeError, match="logits .*float64"):
        ops.sample_tokens(logits.double())


def test_wrong_logits_rank_and_type(logits):
    with pytest.raises(ValueError, match=r"logits must have shape \[N, V\]"):
        ops.sample_tokens(logits[0])
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        ops.sample_tokens(logits.tolist())


def test_non_contiguous_logits(logits):
    wide = make_logits(N, 2 * V, seed=32)
    with pytest.raises(ValueError, match="logits must be contiguous"):
        ops.sample_tokens(wide[:, ::2])
    with pytest.raises(ValueError, match="logits must be contiguous"):
        ops.sample_tokens(make_logits(V, N, seed=33).t())


@pytest.mark.parametrize(
    "name, bad, error, pattern",
    [
        ("temperature", torch.ones(N, dtype=torch.float64), TypeError, "temperature must have dtype float32, got float64"),
        ("temperature", torch.ones(N + 1), ValueError, r"temperature must have shape \[4\], got \[5\]"),
        ("top_k", torch.ones(N, dtype=torch.int32), TypeError, "top_k must have dtype int64, got int32"),
        ("top_p", torch.ones(N)[::1].expand(2, N)[0], None, None),  # a view that is contiguous: accepted
        ("min_p", torch.zeros(2 * N)[::2], ValueError, "min_p must be contiguous"),
        ("offsets", torch.zeros(N, dtype=torch.float32), TypeError, "offsets must have dtype int64"),
        ("top_k", 2.5, TypeError, "top_k must be an integer"),
        ("temperature", "hot", TypeError, "temperature must be a number"),
    ],
)
def test_parameter_tensors_are_validated(logits, name, bad, error, pattern):
    if error is None:
        ops.sample_tokens(logits, **{name: bad})
        return
    with pytest.raises(error, match=pattern):
        ops.sample_tokens(logits, **{name: bad})


def test_history_and_ranges_shapes(logits):
    with pytest.raises(ValueError, match=r"history must have shape \[4, H\]"):
        ops.sample_tokens(logits, history=torch.zeros(N + 1, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="history must have dtype int64"):
        ops.sample_tokens(logits, history=torch.zeros(N, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"allowed_ranges must have shape \[4, R, 2\]"):
        ops.sample_tokens(logits, allowed_ranges=torch.zeros(N, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="between 1 and 64 ranges"):
        ops.sample_tokens(logits, allowed_ranges=torch.zeros(N, 65, 2, dtype=torch.int64))


@pytest.mark.parametrize("value, what", [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
def test_non_finite_logits_name_the_row(logits, value, what):
    logits[2, 7] = value
    with pytest.raises(ValueError, match=rf"row 2 cannot be sampled: its logits contain NaN or \+inf"):
        ops.sample_tokens(logits)
    assert what  # both NaN and +inf take the same message


def test_row_of_all_negative_infinity(logits):
    logits[1] = float("-inf")
    with pytest.raises(ValueError, match="row 1 cannot be sampled: every logit is -inf"):
        ops.sample_tokens(logits)


def test_negative_infinity_entries_are_legal_and_never_drawn(logits):
    logits[:, :40] = float("-inf")
    out = ops.sample_tokens(logits.expand(4, -1).contiguous().repeat(250, 1), seed=1)
    assert int(out.ids.min()) >= 40


def test_empty_allowed_set(logits):
    with pytest.raises(ValueError, match="row 0 cannot be sampled: allowed_ranges cover no token id"):
        ops.sample_tokens(logits, allowed_ranges=[(5, 5)])


def test_allowed_set_without_finite_logit(logits):
    logits[3, 10:20] = float("-inf")
    ranges = torch.tensor([[(0, 50)], [(0, 50)], [(0, 50)], [(10, 20)]])
    with pytest.raises(ValueError, match="row 3 cannot be sampled: every allowed id has logit -inf"):
        ops.sample_tokens(logits, allowed_ranges=ranges)
    with pytest.raises(ValueError, match="row 3 .*every allowed id has logit -inf"):
        ops.sample_tokens(logits, allowed_ranges=ranges, temperature=0.0)


@pytest.mark.parametrize("bad_range", [(-1, 5), (10, V + 1), (9, 3)])
def test_out_of_range_allowed_ids(logits, bad_range):
    with pytest.raises(ValueError, match=r"allowed_ranges holds a range outside \[0, V\]"):
        ops.sample_tokens(logits, allowed_ranges=[bad_range])


@pytest.mark.parametrize("bad_id", [V, -2, 10**12])
def test_out_of_range_history_ids(logits, bad_id):
    history = torch.zeros(N, 3, dtype=torch.int64)
    history[1, 2] = bad_id
    with pytest.raises(ValueError, match=r"row 1 cannot be sampled: history holds an id outside \[0, V\)"):
        ops.sample_tokens(logits, history=history, repetition_penalty=1.2)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=1.5), dict(min_p=-0.1),
     dict(top_k=-1), dict(repetition_penalty=0.0), dict(temperature=float("nan")),
     dict(presence_penalty=float("inf"))],
)
def test_invalid_parameter_values(logits, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"row 0 cannot be sampled: a sampling parameter is invalid.*{name}="):
        ops.sample_tokens(logits, **kwargs)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_bad_seed(logits, seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        ops.sample_tokens(logits, seed=seed)


def test_empty_batch_and_single_column():
    empty = ops.sample_tokens(torch.zeros(0, 10))
    assert empty.ids.shape == (0,)
    single = ops.sample_tokens(torch.zeros(3, 1))
    assert single.ids.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="at least one column"):
        ops.sample_tokens(torch.zeros(3, 0))


def test_logits_requiring_grad_are_accepted(logits):
    logits.requires_grad_(True)
    assert ops.sample_tokens(logits).ids.shape == (N,)
