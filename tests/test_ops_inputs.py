"""No value changes on its way into the native ops.

Every public native entry point either computes on exactly the values the caller passed
(and then equals the reference twin on those values) or raises TypeError / ValueError
naming the argument; finite sampling parameters whose float32 arithmetic overflows are
reported as a bad parameter of the row (status 8), never sampled.

The property tests model each argument's contract (which containers and dtypes are taken,
what each value means once stored) and check: an input the contract rejects raises
TypeError / ValueError; an input it accepts gives the twin's result, or the twin's error.
"""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_group_stats_match
from wavalign import ops
from wavalign.modality import ModalitySpec, Schedule
from wavalign.reference import reference_group_stats, reference_sample_tokens
from wavalign.reference.interleave import RowState, allowed_mask, reference_step
from wavalign.rollout import InterleaveState
from wavalign.rollout.engine import ModalitySampling, SamplingParams
from wavalign.sampling_params import float32_problem

NAN, INF = math.nan, math.inf
INT32_MAX, INT64_MIN, INT64_MAX = 2**31 - 1, -(2**63), 2**63 - 1
OVERFLOW = "its sampling parameters overflow float32"


def make_spec(schedule):
    # ids: 0 pad, 1 eos, 2 end_text, 3..19 text, 20 begin_audio, 21 end_audio, 22..37 speech
    return ModalitySpec(vocab_size=40, text_ranges=[(0, 20)], speech_ranges=[(22, 38)], eos=1, pad=0,
                        end_text=2, begin_audio=20, end_audio=21, schedule=schedule)


SPECS = [make_spec(Schedule.sequential()), make_spec(Schedule.chunked(text=3, speech=2)), make_spec(Schedule.free())]
SPEC = SPECS[0]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _without_op(error: Exception) -> str:
    """The message after its 'op: ' prefix, so native and twin errors compare word for word."""
    return str(error).split(": ", 1)[1]


# ---------------------------------------------------------------- hand-picked inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value, shown", [(2**40, "1099511627776"), (2**32 + 3, "4294967299"),
                                          (2.7, "2.700000047683716"), (NAN, "nan")])
def test_budget_tensors_are_checked_before_the_int32_conversion(device, value, shown):
    """Checked as given: converted to int32 first, they would read 0, 3, 2 and -2147483648 (= unlimited)."""
    budget = torch.full((4,), value, device=device)
    with pytest.raises(ValueError, match=rf"max_speech\[0\] is {re.escape(shown)}: budgets must be integers "
                                         r"in \[-1, 2147483647\] \(int32; -1 = unlimited\)"):
        InterleaveState(SPEC, 4, max_speech=budget, device=device)
    with pytest.raises(ValueError, match="max_speech must be an int >= 0"):  # the same value as a number
        InterleaveState(SPEC, 4, max_speech=value, device=device)


def test_budgets_keep_their_values():
    exact = [0, 7, INT32_MAX, -1]
    for budget in (torch.tensor(exact), torch.tensor(exact, dtype=torch.float64), np.array(exact), exact):
        state = InterleaveState(SPEC, 4, max_text=budget)
        assert state.state["max_text"].dtype == torch.int32 and state.state["max_text"].tolist() == exact
    with pytest.raises(TypeError, match=r"max_text\[1\] must be an integer, got 7.0"):
        InterleaveState(SPEC, 4, max_text=[0, 7.0, 1, 1])
    with pytest.raises(TypeError, match="max_text must have an integer or float dtype, got torch.bool"):
        InterleaveState(SPEC, 4, max_text=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"max_text\[2\] is -5: budgets must be integers in \[-1, "):
        InterleaveState(SPEC, 4, max_text=torch.tensor([0, 1, -5, 2]))
    with pytest.raises(ValueError, match=r"max_text must be a number or a \[4\] tensor, got shape \[3\]"):
        InterleaveState(SPEC, 4, max_text=torch.tensor([0, 1, 2]))


def test_advance_takes_lists_and_int64_arrays_and_rejects_the_rest_with_type_error():
    """A list, tuple or int64 numpy array is advanced like the tensor; None, an int32 array, a float
    or a string raise TypeError naming `sampled` (not an AttributeError from inside the op)."""
    ids = [5, 20, 6]
    expected = InterleaveState(SPEC, 3)
    expected.advance(torch.tensor(ids))
    for given_ids in (ids, tuple(ids), np.array(ids)):
        state = InterleaveState(SPEC, 3)
        state.advance(given_ids)
        assert all(torch.equal(state.state[k], expected.state[k]) for k in expected.state)
        assert torch.equal(state.allowed_set, expected.allowed_set)
    state = InterleaveState(SPEC, 3)
    with pytest.raises(TypeError, match="sampled must be a .*int64 tensor, numpy array or list of ints, got NoneType"):
        state.advance(None)
    with pytest.raises(TypeError, match="sampled must have dtype int64, got int32"):
        state.advance(np.array(ids, dtype=np.int32))
    with pytest.raises(TypeError, match=r"sampled\[1\] must be an integer, got 20.0"):
        state.advance([5, 20.0, 6])
    with pytest.raises(ValueError, match=r"sampled\[2\] must lie in \[-9223372036854775808, 9223372036854775807\]"):
        state.advance([5, 20, 2**64])
    with pytest.raises(TypeError, match="sampled must be a .* got str"):
        state.advance("5")
    assert state.state["text_count"].tolist() == [0, 0, 0]  # nothing advanced


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs, shown", [
    (dict(temperature=1e-38), "temperature=1e-38"),
    (dict(frequency_penalty=-3e38, history=torch.tensor([[0, 0]])), "frequency_penalty=-3e+38"),
])
def test_overflowing_parameters_are_reported_not_sampled(device, kwargs, shown):
    """Sampled, z = +inf would make the log-prob NaN and draw the id among the +inf entries."""
    logits = torch.tensor([[5.0, 1.0, 0.0]])
    pattern = rf"row 0 cannot be sampled: {OVERFLOW} .*; row 0 has .*{re.escape(shown)}.* \(1 of 1 rows failed\)"
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match="^sample_tokens: " + pattern) as native:
        ops.sample_tokens(logits.to(device), **moved)
    with pytest.raises(ValueError, match="^reference_sample_tokens: " + pattern) as twin:
        reference_sample_tokens(logits, **kwargs)
    assert _without_op(native.value) == _without_op(twin.value)


OVERFLOW_CASES = {
    # a finite logit over a tiny temperature: z = +inf
    "temperature_plus_inf": (dict(temperature=1e-38), [[5.0, 1.0, 0.0]]),
    # every allowed z -inf although the logits are finite: the log-normaliser is -inf
    "temperature_all_minus_inf": (dict(temperature=1e-38), [[-5.0, -6.0, -7.0]]),
    # repetition 1e-38 divides a positive logit to +inf (greedy reads it too)
    "repetition_greedy": (dict(temperature=0.0, repetition_penalty=1e-38, history=[[1, -1]]), [[1.0, 5.0, 0.0]]),
    # a -inf logit minus an overflowing -inf frequency term: NaN
    "frequency_nan": (dict(frequency_penalty=-3e38, history=[[0, 0]]), [[-INF, 5.0, 0.0]]),
    # presence pushes the only allowed (finite) logit to -inf
    "presence_all_minus_inf": (dict(presence_penalty=3e38, history=[[2]], allowed_ranges=[(2, 3)]),
                               [[0.0, 0.0, -1e38]]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(OVERFLOW_CASES))
def test_every_overflow_path_is_status_8_on_native_and_twin(device, name):
    kwargs, rows = OVERFLOW_CASES[name]
    kwargs = {k: torch.tensor(v) if k == "history" else v for k, v in kwargs.items()}
    logits = torch.tensor(rows + [[0.5, 0.25, 0.0]])  # row 1 is fine
    if "history" in kwargs:
        kwargs["history"] = torch.cat([kwargs["history"], torch.full_like(kwargs["history"], -1)])
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=rf"row 0 cannot be sampled: {OVERFLOW}.*\(1 of 2 rows failed\)") as native:
        ops.sample_tokens(logits.to(device), **moved)
    with pytest.raises(ValueError, match=rf"row 0 cannot be sampled: {OVERFLOW}") as twin:
        reference_sample_tokens(logits, **kwargs)
    assert _without_op(native.value) == _without_op(twin.value)


@pytest.mark.parametrize("device", DEVICES)
def test_finite_parameters_that_stay_finite_still_sample(device):
    # -5 / 1e-38 overflows to -inf, but the max (-1 / 1e-38 = -1e38) is finite: legal, and
    # the -inf id has zero mass in exact arithmetic too. Genuine -inf logits stay status 4.
    logits = torch.tensor([[-5.0, -1.0, -2.0]])
    native = ops.sample_tokens(logits.to(device), temperature=1e-38)
    ids, logprobs, _ = reference_sample_tokens(logits, temperature=1e-38)
    assert native.ids.tolist() == ids.tolist() == [1] and native.logprobs.tolist() == logprobs.tolist() == [0.0]
    with pytest.raises(ValueError, match="row 0 cannot be sampled: every allowed id has logit -inf"):
        ops.sample_tokens(torch.tensor([[-INF, -INF, 1.0]]).to(device), temperature=1e-38, allowed_ranges=[(0, 2)])


def test_sampler_numbers_and_lists_are_checked_before_narrowing():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"temperature must fit float32 \(magnitude at most 3.402823e\+38\), got 1e\+39"):
        ops.sample_tokens(logits, temperature=1e39)  # float32 would hold inf
    with pytest.raises(ValueError, match="presence_penalty must not be so small that float32 rounds it to 0, got 1e-50"):
        ops.sample_tokens(logits, presence_penalty=1e-50)  # float32 would hold 0 (penalty off)
    with pytest.raises(ValueError, match="top_k must lie in .*, got 1180591620717411303424"):
        ops.sample_tokens(logits, top_k=2**70)  # not a RuntimeError from torch.full
    with pytest.raises(TypeError, match=r"allowed_ranges\[0, 1\] must be an integer, got 2.7"):
        ops.sample_tokens(logits, allowed_ranges=[(0, 2.7)])  # not truncated to the range (0, 2)
    with pytest.raises(ValueError, match=r"allowed_ranges\[0, 1\] is 2.5: range bounds must be integers"):
        ops.sample_tokens(logits, allowed_ranges=np.array([[0.0, 2.5]]))  # not truncated to (0, 2)
    with pytest.raises(TypeError, match=r"temperature\[1\] must be a number, got True"):
        ops.sample_tokens(logits, temperature=[1.0, True])
    with pytest.raises(TypeError, match="temperature must have dtype float32, got float64"):
        ops.sample_tokens(logits, temperature=np.ones(2))
    # exact forms are taken: lists, numpy arrays, integral-float and widened integer ranges
    reference = ops.sample_tokens(logits, temperature=torch.tensor([0.5, 2.0]), top_k=torch.tensor([2, 3]),
                                  allowed_ranges=torch.tensor([[[1, 4]], [[1, 4]]]), seed=3)
    for kwargs in (dict(temperature=[0.5, 2.0], top_k=[2, 3.0], allowed_ranges=[(1.0, 4)]),
                   dict(temperature=np.array([0.5, 2.0], dtype=np.float32), top_k=np.array([2, 3]),
                        allowed_ranges=np.array([[1, 4]], dtype=np.int32))):
        out = ops.sample_tokens(logits, seed=3, **kwargs)
        assert torch.equal(out.ids, reference.ids) and torch.equal(out.logprobs, reference.logprobs)


def test_group_stats_eps_is_checked_before_narrowing():
    rewards = torch.tensor([[1.0, 2.0, 4.0]])
    for eps, what in [(1e39, "1e\\+39"), (1e-50, "1e-50"), (True, "True")]:  # 1e39 as float32 is inf: advantages all 0
        with pytest.raises(ValueError, match=f"eps must be a finite number >= 0 that float32 can hold, got {what}"):
            ops.group_stats(rewards, eps=eps)
    from wavalign import _ops

    with pytest.raises(ValueError, match="eps must be a finite number >= 0 that float32 can hold"):
        _ops.group_stats_native(rewards, 0, False, 1e39)  # the binding checks too


def test_rollout_budgets_and_parameters_are_checked_when_configured():
    # The engine hands these to the int32 interleave state and float32 / int64 tensors.
    for name, value in [("max_speech_tokens", 2**40), ("max_text_tokens", -2), ("max_new_tokens", 2**31),
                        ("max_text_tokens", 2.0), ("max_new_tokens", True)]:
        with pytest.raises(ValueError, match=f"SamplingParams.{name} must be"):
            SamplingParams(**{name: value})
    assert SamplingParams(max_text_tokens=INT32_MAX, max_speech_tokens=-1, max_new_tokens=INT32_MAX)
    with pytest.raises(ValueError, match=r"ModalitySampling.temperature must fit float32 .*got 1e\+39"):
        ModalitySampling(temperature=1e39)
    with pytest.raises(ValueError, match="ModalitySampling.frequency_penalty must not be so small"):
        ModalitySampling(frequency_penalty=-1e-46)
    with pytest.raises(ValueError, match=r"ModalitySampling.top_k must be <= 9223372036854775807 \(int64\)"):
        ModalitySampling(top_k=2**63)


# ---------------------------------------------------------------- property: sample_tokens

FLOAT_TYPICAL = {
    "temperature": [0.0, 0.5, 1.0, 2.5],
    "top_p": [1.0, 0.9, 0.5],
    "min_p": [0.0, 0.1],
    "repetition_penalty": [1.0, 1.3, 0.7],
    "presence_penalty": [0.0, 0.5, -0.5],
    "frequency_penalty": [0.0, 0.3],
}
# Specials a float32 / int64 parameter stores exactly (the sampler may still reject the row:
# status 7 for a bad value, 8 for an overflow), then those the contract rejects up front.
FLOAT_SPECIAL = [NAN, INF, -INF, 2.0**40, 0.3, 2.7, -1.0, 7] + [1e-38, 1e-30, -3e38, 3e38, 1e-38] * 3
FLOAT_REJECTED = [1e-50, 1e39, -1e39, 10**400, True]
TOP_K_TYPICAL = [0, 1, 3]
TOP_K_SPECIAL = [-1, 2**40, INT64_MAX, INT64_MIN, 2.0]
TOP_K_REJECTED = [2**63, 2**70, 2.5, NAN, INF, True]
TENSOR_DTYPES = [torch.float32, torch.int64, torch.float64, torch.float16, torch.int32, torch.bool]


def _stored_float32(value):
    """What a float32 parameter means once stored, or None where the contract rejects it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float32_problem(value):
        return None
    return torch.tensor(float(value), dtype=torch.float32).item()


def _stored_int64(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _dtype_values(draw, dtype, n, typical, spicy):
    """n values the given tensor dtype holds (the test's own cast decides what they are)."""
    if dtype == torch.bool:
        return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if dtype.is_floating_point:
        pool = [float(v) for v in typical] + ([NAN, INF, 1e-38, 3e38, -3e38, 2.7] if spicy else [])
        return torch.tensor(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=torch.float64).to(dtype)
    info = torch.iinfo(dtype)
    pool = [int(v) for v in typical] + ([-1, info.max, info.min, 2**40 if info.max > 2**40 else 5] if spicy else [])
    return torch.tensor(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=dtype)


@st.composite
def row_parameter(draw, name, n, spicy, wild):
    """(what the caller passes, the [n] tensor it means for the twin or None if rejected).
    Only a spicy parameter takes special values, only a wild one values or dtypes the
    contract rejects."""
    is_top_k = name == "top_k"
    native = torch.int64 if is_top_k else torch.float32
    typical = TOP_K_TYPICAL if is_top_k else FLOAT_TYPICAL[name]
    special = (TOP_K_SPECIAL if is_top_k else FLOAT_SPECIAL) * 2
    if wild:
        special = special + (TOP_K_REJECTED if is_top_k else FLOAT_REJECTED) * 4
    stored = _stored_int64 if is_top_k else _stored_float32
    value = st.sampled_from(typical)
    if spicy or wild:
        value = st.one_of(value, st.sampled_from(special), st.sampled_from(special))
    form = draw(st.sampled_from(["scalar", "scalar", "scalar", "tensor", "numpy", "list"]))
    if form == "scalar":
        given_value = draw(value)
        meaning = stored(given_value)
        return given_value, None if meaning is None else torch.full((n,), meaning, dtype=native)
    if form == "list":
        given_value = [draw(value) for _ in range(n)]
        meaning = [stored(v) for v in given_value]
        return given_value, None if None in meaning else torch.tensor(meaning, dtype=native)
    dtype = draw(st.sampled_from([native, native] + TENSOR_DTYPES)) if wild else native
    tensor = _dtype_values(draw, dtype, n, typical, spicy or wild)
    meaning = tensor if dtype == native else None  # the binding takes exactly the native dtype
    return (tensor.numpy() if form == "numpy" else tensor), meaning


@st.composite
def sampler_inputs(draw):
    n, vocab = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    kwargs, twin, valid = {}, {}, True
    # At most one argument is wild (may be given a value or dtype the contract rejects), so
    # about half the examples reach the sampler and the twin.
    names = ["logits", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
             "frequency_penalty", "history", "allowed_ranges", "offsets"]
    wild = draw(st.sampled_from(names + [None] * 11))
    # one argument takes special values; the penalties and the temperature most often, with
    # the tiny / huge values whose arithmetic overflows (status 8)
    spicy = draw(st.sampled_from(names[:10] + ["temperature", "presence_penalty", "frequency_penalty",
                                                "repetition_penalty"] * 2 + [None] * 3))

    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16]
                                 + ([torch.float64] * 4 if wild == "logits" else [])))
    values = torch.randn(n, vocab, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    values = values * draw(st.sampled_from([0.1, 3.0, 3.0, 1e30]))
    for _ in range(draw(st.integers(0, 3 if spicy == "logits" else 1))):  # a few special logits
        values[draw(st.integers(0, n - 1)), draw(st.integers(0, vocab - 1))] = draw(st.sampled_from(
            [-INF, -INF, 3e38, -3e38] + ([NAN, INF] if spicy == "logits" else [])))
    logits = values.to(dtype)
    valid &= dtype != torch.float64
    given_logits = logits.numpy() if dtype == torch.float32 and draw(st.booleans()) else logits

    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty"):
        kwargs[name], meaning = draw(row_parameter(name, n, spicy == name, wild == name))
        valid &= meaning is not None
        twin[name] = meaning

    history_form = draw(st.sampled_from(["tensor", "tensor", "numpy"] + ([] if "penalty" in str(spicy) else [None])
                                        + (["int32", "list"] * 2 if wild == "history" else [])))
    if history_form is not None:
        width = draw(st.integers(0, 4))
        ids = st.integers(-1, vocab - 1)
        if spicy == "history":
            ids = st.one_of(ids, st.sampled_from([vocab, -2, 2**40]))
        rows = [[draw(ids) for _ in range(width)] for _ in range(n)]
        history = torch.tensor(rows, dtype=torch.int64).reshape(n, width)
        kwargs["history"] = {"tensor": history, "numpy": history.numpy(), "int32": history.int(),
                             "list": rows}[history_form]
        valid &= history_form in ("tensor", "numpy")
        twin["history"] = history

    ranges_form = draw(st.sampled_from([None, "list", "list", "tensor", "numpy", "numpy_float"]
                                       + (["int32_tensor"] * 2 if wild == "allowed_ranges" else [])))
    if ranges_form is not None:
        count = draw(st.integers(1, 3))
        bound = st.integers(0, vocab)
        if spicy == "allowed_ranges":
            bound = st.one_of(bound, st.sampled_from([-1, vocab + 1]))
        pairs = [sorted([draw(bound), draw(bound)]) for _ in range(count)]
        exact = torch.tensor(pairs, dtype=torch.int64)
        twin["allowed_ranges"] = exact
        if ranges_form == "list":
            oddity = draw(st.sampled_from([None, None, "integral_float"]
                                          + ([2.7, 2**70, True] if wild == "allowed_ranges" else [])))
            listed = [list(p) for p in pairs]
            if oddity == "integral_float":
                listed[0][1] = float(listed[0][1])
            elif oddity is not None:
                listed[0][1] = oddity
                valid = False
            kwargs["allowed_ranges"] = listed
        elif ranges_form == "tensor":
            kwargs["allowed_ranges"] = exact.unsqueeze(0).expand(n, -1, -1).contiguous()
        elif ranges_form == "int32_tensor":  # tensors must be int64 (the binding's check)
            kwargs["allowed_ranges"], valid = exact.int(), False
        elif ranges_form == "numpy":  # integer arrays are widened to int64 exactly
            kwargs["allowed_ranges"] = exact.numpy().astype(draw(st.sampled_from([np.int64, np.int32, np.int16])))
        else:
            array = exact.numpy().astype(np.float64)
            if wild == "allowed_ranges" and draw(st.booleans()):
                array[0, 0] += 0.5
                valid = False
            kwargs["allowed_ranges"] = array

    offsets_form = draw(st.sampled_from([None, None, "tensor"] + (["int32", "list"] if wild == "offsets" else [])))
    if offsets_form is not None:
        offsets = draw(st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=n, max_size=n))
        kwargs["offsets"] = {"tensor": torch.tensor(offsets), "int32": torch.zeros(n, dtype=torch.int32),
                             "list": offsets}[offsets_form]
        valid &= offsets_form == "tensor"
        twin["offsets"] = torch.tensor(offsets)
    seed = draw(st.integers(0, 2**64 - 1))
    kwargs["seed"] = twin["seed"] = seed
    return given_logits, logits, kwargs, twin, valid


def _compare_with_twin(run_native, run_twin, valid, compare_results):
    """The property shared by the op tests below."""
    native_error = None
    try:
        native = run_native()
    except (TypeError, ValueError) as error:  # anything else (a crash, RuntimeError) fails the test
        native_error = error
    if not valid:
        assert native_error is not None, "an input whose value would change was accepted"
        return
    try:
        expected = run_twin()
    except ValueError as twin_error:
        assert native_error is not None, f"native sampled a row the twin rejects: {twin_error}"
        assert _without_op(native_error) == _without_op(twin_error)
        return
    assert native_error is None, f"valid input raised: {native_error!r}"
    compare_results(native, expected)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(sampler_inputs())
def test_sample_tokens_takes_exact_values_or_raises(inputs):
    given_logits, logits, kwargs, twin, valid = inputs

    def compare(native, expected):
        ids, logprobs, raw = expected
        assert torch.equal(native.ids, ids)
        torch.testing.assert_close(native.logprobs, logprobs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(native.raw_logprobs, raw, atol=1e-5, rtol=1e-5)

    _compare_with_twin(lambda: ops.sample_tokens(given_logits, **kwargs),
                       lambda: reference_sample_tokens(logits, **twin), valid, compare)


# ---------------------------------------------------------------- property: group_stats


@st.composite
def group_stats_inputs(draw):
    b, g = draw(st.integers(0, 4)), draw(st.integers(1, 5))
    # huge values of one sign only: opposite ones would cancel, and the twin's sums need not
    # run in the native index order
    value = st.one_of(st.floats(-10, 10, width=32), st.sampled_from([NAN, NAN, 1.0, 3e38, 1e30, 1e-45]))
    rows = torch.tensor([[draw(value) for _ in range(g)] for _ in range(b)], dtype=torch.float64).reshape(b, g)
    wild = draw(st.sampled_from(["rewards", "eps", None, None]))  # only a wild argument may be rejected
    if wild == "rewards" and b and draw(st.booleans()):
        rows[draw(st.integers(0, b - 1)), draw(st.integers(0, g - 1))] = draw(st.sampled_from([INF, -INF]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32]
                                 if wild == "rewards" else [torch.float32]))
    rewards = torch.nan_to_num(rows).to(dtype) if dtype == torch.int32 else rows.to(dtype)
    if wild == "rewards" and draw(st.integers(0, 4)) == 0:
        rewards = rewards.reshape(-1)  # wrong rank
    finite_or_nan = bool((rewards.isnan() | rewards.isfinite()).all()) if dtype.is_floating_point else True
    valid = dtype == torch.float32 and rewards.dim() == 2 and finite_or_nan
    form = draw(st.sampled_from(["tensor", "tensor", "numpy"] + (["list"] if wild == "rewards" else [])))
    if form == "list":
        given_rewards, valid = rewards.tolist(), False
    else:
        given_rewards = rewards.numpy() if form == "numpy" and dtype != torch.bfloat16 else rewards
    eps = draw(st.one_of(st.just(1e-4), st.floats(0, 1),
                         st.sampled_from([0.0, 0.3, 1, 2**40, 1e-40] + ([1e-50, 1e39, NAN, INF, -1.0, True, 10**400]
                                                                         if wild == "eps" else []))))
    valid &= not isinstance(eps, bool) and float32_problem(eps) is None and math.isfinite(eps) and eps >= 0
    mode = draw(st.sampled_from(["grpo", "dr_grpo", "rloo"]))
    std = draw(st.sampled_from(["population", "sample"]))
    return given_rewards, rewards, eps, mode, std, valid


@settings(max_examples=200, deadline=None, derandomize=True)
@given(group_stats_inputs())
def test_group_stats_takes_exact_values_or_raises(inputs):
    given_rewards, rewards, eps, mode, std, valid = inputs

    stored_eps = torch.tensor(float(eps), dtype=torch.float32).item() if valid else eps  # the op's float eps
    _compare_with_twin(lambda: ops.group_stats(given_rewards, mode=mode, std=std, eps=eps),
                       lambda: reference_group_stats(rewards, mode=mode, std=std, eps=stored_eps), valid,
                       assert_group_stats_match)


# ---------------------------------------------------------------- property: InterleaveState

BUDGET_OK = [0, 1, 2, 3, 5, -1, -1, INT32_MAX]  # budgets every storage below holds exactly
BUDGET_OK_FLOATS = [0.0, 3.0, 5.0, -1.0, 100.0]
BUDGET_INTS = BUDGET_OK + [-5, 2**31, 2**32 + 3, 2**40, -(2**31)]
BUDGET_FLOATS = BUDGET_OK_FLOATS + [2.7, NAN, INF, 2.0**31, 1e10]
BUDGET_TENSOR_DTYPES = [torch.int32, torch.int64, torch.int8, torch.int16, torch.uint8, torch.float16,
                        torch.float32, torch.float64, torch.bfloat16]
BUDGET_NUMPY_DTYPES = [np.int64, np.int32, np.uint64, np.float64]


def _budget_meaning(value):
    """An element's budget, or None where the contract rejects it."""
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() and -1 <= value <= INT32_MAX else None
    return value if -1 <= value <= INT32_MAX else None


@st.composite
def budget(draw, n, wild):
    """(what the caller passes, the n budgets it means or None if rejected). Only a wild
    budget may take values, dtypes, lengths or forms the contract rejects."""
    ints, floats = (BUDGET_INTS, BUDGET_FLOATS) if wild else (BUDGET_OK, BUDGET_OK_FLOATS)
    form = draw(st.sampled_from(["none", "int", "int", "tensor", "tensor", "numpy", "list"]
                                + (["float", "bool", "bool_tensor", "bool_numpy"] if wild else [])))
    if form == "none":
        return None, [-1] * n
    if form in ("int", "float", "bool"):
        value = draw(st.sampled_from({"int": ints, "float": floats, "bool": [True, False]}[form]))
        return value, [value] * n if form == "int" and -1 <= value <= INT32_MAX else None
    length = draw(st.sampled_from([n, n, n, n + 1])) if wild else n
    valid_length = length == n
    if form in ("bool_tensor", "bool_numpy"):
        return (torch.ones(length, dtype=torch.bool) if form == "bool_tensor" else np.ones(length, dtype=np.bool_)), None
    if form == "list":
        pool = st.sampled_from(ints)
        items = [draw(st.one_of(pool, st.sampled_from([2.0, True])) if wild else pool) for _ in range(length)]
        meaning = [v if not isinstance(v, (bool, float)) and -1 <= v <= INT32_MAX else None for v in items]
        return items, meaning if valid_length and None not in meaning else None
    if form == "numpy":
        dtype = draw(st.sampled_from(BUDGET_NUMPY_DTYPES))
        pool = {np.uint64: [0, 3] + ([2**63, 2**64 - 1] if wild else []), np.float64: floats}.get(dtype, ints)
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        pool = [v for v in pool if info is None or info.min <= v <= info.max]
        array = np.array([draw(st.sampled_from(pool)) for _ in range(length)], dtype=dtype)
        meaning = [_budget_meaning(v) for v in array.tolist()]
        return array, meaning if valid_length and None not in meaning else None
    dtype = draw(st.sampled_from(BUDGET_TENSOR_DTYPES))
    if dtype.is_floating_point:
        tensor = torch.tensor([draw(st.sampled_from(floats)) for _ in range(length)], dtype=torch.float64).to(dtype)
    else:
        info = torch.iinfo(dtype)
        pool = [v for v in ints if info.min <= v <= info.max]
        tensor = torch.tensor([draw(st.sampled_from(pool)) for _ in range(length)], dtype=dtype)
    meaning = [_budget_meaning(v) for v in tensor.tolist()]  # the tensor's exact values
    return tensor, meaning if valid_length and None not in meaning else None


SAMPLED_FORMS = ["tensor"] * 4 + ["numpy", "list"] * 2 + ["int32_tensor", "int32_numpy", "float_list", "none"]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data())
def test_interleave_state_takes_exact_budgets_and_ids_or_raises(data):
    draw = data.draw
    spec = draw(st.sampled_from(SPECS))
    n = draw(st.integers(1, 4))
    wild = draw(st.sampled_from(["max_text", "max_speech", "max_total", None, None]))
    budgets = {name: draw(budget(n, wild == name)) for name in ("max_text", "max_speech", "max_total")}
    valid = all(meaning is not None for _, meaning in budgets.values())
    try:
        state = InterleaveState(spec, n, **{name: given for name, (given, _) in budgets.items()})
    except (TypeError, ValueError) as error:
        assert not valid, f"valid budgets raised: {error!r}"
        return
    assert valid, "budgets whose value would change were accepted"
    limits = {name: meaning for name, (_, meaning) in budgets.items()}
    for name, meaning in limits.items():
        assert state.state[name].dtype == torch.int32 and state.state[name].tolist() == meaning, name

    rows = [RowState() for _ in range(n)]
    if spec.schedule.kind == "chunked":  # a zero text budget starts in speech
        for row, text_budget in zip(rows, limits["max_text"]):
            if text_budget == 0:
                row.phase, row.text_done = 1, True
    masks = [allowed_mask(spec, s) for s in range(4)]
    for _ in range(draw(st.integers(1, 12))):
        odd_row = draw(st.sampled_from([None] * 6 + list(range(n))))  # may get an illegal id
        ids = []
        for row, s in enumerate(state.allowed_set.tolist()):
            legal = torch.nonzero(masks[s]).flatten().tolist() or [1]
            odd = st.one_of(st.integers(-3, spec.vocab_size + 3), st.just(2**40))
            ids.append(draw(odd if row == odd_row else st.sampled_from(legal)))
        form = draw(st.sampled_from(SAMPLED_FORMS))
        sampled = {"tensor": lambda: torch.tensor(ids), "numpy": lambda: np.array(ids), "list": lambda: ids,
                   "int32_tensor": lambda: torch.tensor(ids).clamp(-5, 50).int(),
                   "int32_numpy": lambda: np.array(ids).clip(-5, 50).astype(np.int32),
                   "float_list": lambda: [float(i) for i in ids], "none": lambda: None}[form]()
        if form not in ("tensor", "numpy", "list"):
            with pytest.raises(TypeError, match="sampled"):
                state.advance(sampled)
            continue
        twin_error = None
        for row, token, budget_row in zip(rows, ids, zip(*limits.values())):
            try:
                reference_step(spec, row, token, *budget_row)
            except ValueError as error:
                twin_error = error
                break
        if twin_error is not None:
            with pytest.raises(ValueError, match="interleave: row"):
                state.advance(sampled)
            return  # the rows before the bad one advanced on both sides; stop here
        state.advance(sampled)
        assert state.phase.tolist() == [r.phase for r in rows]
        assert state.state["text_count"].tolist() == [r.text_count for r in rows]
        assert state.state["speech_count"].tolist() == [r.speech_count for r in rows]
        assert state.state["finish_reason"].tolist() == [r.finish_reason for r in rows]
