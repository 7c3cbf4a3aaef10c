"""torch.ops.wavalign.*: the native ops as torch.library custom ops (registered by wavalign.ops).

Each op equals the binding it wraps (wavalign._ops, called directly), passes
torch.library.opcheck, and a function calling all three compiles with fullgraph=True
(aot_eager; inductor as slow).
"""

import time

import pytest
import torch

from wavalign import _ops, ops
from wavalign.modality import ModalitySpec, Schedule
from wavalign.rollout import InterleaveState
from wavalign.sampling_params import SAMPLING_FIELD_NAMES

N, V = 6, 40


def make_spec(schedule):
    # ids: 0 pad, 1 eos, 2 end_text, 3..19 text, 20 begin_audio, 21 end_audio, 22..37 speech
    return ModalitySpec(vocab_size=V, text_ranges=[(0, 20)], speech_ranges=[(22, 38)], eos=1, pad=0,
                        end_text=2, begin_audio=20, end_audio=21, schedule=schedule)


SCHEDULES = {
    "sequential": Schedule.sequential(),
    "chunked": Schedule.chunked(text=3, speech=5),
    "free": Schedule.free(),
    "ratio": Schedule.ratio([2, 4, 3, 5]),
}


def sampler_inputs(seed=0, n=N, vocab=V):
    """Seeded logits and varied per-row parameters, history and ranges."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * 3
    rows = torch.arange(n)
    params = {
        "temperature": torch.tensor([1.0, 0.7, 0.0, 1.3, 0.9, 1.0])[rows % 6],
        "top_k": torch.tensor([0, 5, 0, 10, 0, 3], dtype=torch.int64)[rows % 6],
        "top_p": torch.tensor([1.0, 0.9, 1.0, 0.8, 0.95, 1.0])[rows % 6],
        "min_p": torch.tensor([0.0, 0.0, 0.1, 0.05, 0.0, 0.0])[rows % 6],
        "repetition_penalty": torch.tensor([1.0, 1.2, 1.0, 1.1, 1.0, 1.3])[rows % 6],
        "presence_penalty": torch.tensor([0.0, 0.5, 0.0, 0.0, 0.2, 0.0])[rows % 6],
        "frequency_penalty": torch.tensor([0.0, 0.0, 0.3, 0.1, 0.0, 0.0])[rows % 6],
    }
    assert tuple(params) == SAMPLING_FIELD_NAMES
    history = torch.randint(-1, vocab, (n, 7), generator=g)
    ranges = torch.tensor([[[0, 20], [22, 38]], [[3, 20], [0, 0]]], dtype=torch.int64)[rows % 2].contiguous()
    offsets = torch.arange(n, dtype=torch.int64) * 11 + 5
    return logits, params, history, ranges, offsets


def native_sample(logits, params, history, ranges, seed, offsets):
    """The binding's sampler called directly (what the op wraps); raises on a bad row."""
    ids, logprobs, raw, status = _ops.sample_tokens_status(logits, tuple(params.values()), history, ranges, seed,
                                                           offsets)
    error = _ops.sample_status_error("sample_tokens", status, params)
    if error is not None:
        raise error
    return ids, logprobs, raw


def native_advance(config, state, sampled):
    """The binding's interleave step called directly; raises on a rejected row."""
    allowed, status = _ops.interleave_advance_status(
        config["schedule"], config["text_chunk"], config["speech_chunk"], config.get("ratio_pattern"),
        config["id_modality"], config["eos"], config["begin_audio"], config["end_audio"], config["end_text"], sampled,
        state["max_text"], state["max_speech"], state["max_total"], *(state[n] for n in _ops.INTERLEAVE_STATE_NAMES))
    error = _ops.interleave_status_error(status, state["phase"], sampled)
    if error is not None:
        raise error
    return allowed


def native_group_stats(rewards, mode, sample_std, eps):
    """The binding's group statistics called directly, flags as bool (as the op returns them)."""
    out = _ops.group_stats_native(rewards, ops.ADVANTAGE_MODES[mode], sample_std, eps)
    out["zero_variance"], out["all_missing"] = out["zero_variance"].bool(), out["all_missing"].bool()
    return out


def call_sample(logits, params, history, ranges, seed, offsets):
    return torch.ops.wavalign.sample_tokens(logits, *params.values(), history, ranges, seed, offsets)


def test_schemas_registered():
    assert set(ops.SCHEMAS) == {"sample_tokens", "interleave_advance", "group_stats"}
    assert ops.SCHEMAS["sample_tokens"].startswith("wavalign::sample_tokens(Tensor logits, Tensor temperature")
    advance = ops.SCHEMAS["interleave_advance"]
    for name in _ops.INTERLEAVE_STATE_NAMES:  # declared as mutated, nothing else is
        assert f"!) {name}" in advance
    assert advance.count("!)") == len(_ops.INTERLEAVE_STATE_NAMES)
    assert "Tensor? ratio_pattern" in advance and "Tensor? sampled" in advance


# ---- each op equals the binding it wraps


@pytest.mark.parametrize("seed", [0, 1234, 2**64 - 3])
@pytest.mark.parametrize("with_extras", [True, False], ids=["history+ranges", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_tokens_op_equals_eager(seed, with_extras, dtype):
    logits, params, history, ranges, offsets = sampler_inputs(seed % 1000)
    logits = logits.to(dtype)
    if not with_extras:
        history = ranges = None
    eager = native_sample(logits, params, history, ranges, seed, offsets)
    ids, logprobs, raw, status = call_sample(logits, params, history, ranges, ops.seed_as_int64(seed), offsets)
    assert ids.dtype == torch.int64 and logprobs.dtype == raw.dtype == torch.float32 and status.dtype == torch.int32
    assert torch.equal(status, torch.zeros(N, dtype=torch.int32))
    assert torch.equal(ids, eager[0])
    assert torch.equal(logprobs, eager[1]) and torch.equal(raw, eager[2])
    # the public wrapper agrees too
    public = ops.sample_tokens(logits, **params, history=history, allowed_ranges=ranges, seed=seed, offsets=offsets)
    assert torch.equal(ids, public.ids)


def test_seed_as_int64():
    assert ops.seed_as_int64(5) == 5
    assert ops.seed_as_int64(2**63) == -(2**63)
    assert ops.seed_as_int64(2**64 - 1) == -1
    with pytest.raises(ValueError):
        ops.seed_as_int64(2**64)


def legal_ids(state, step):
    """Ids every row may emit (drawn by the eager sampler from the row's allowed ranges)."""
    g = torch.Generator().manual_seed(100 + step)
    logits = torch.randn(state.phase.shape[0], V, generator=g)
    return ops.sample_tokens(logits, allowed_ranges=state.allowed_ranges(), seed=step).ids


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_interleave_op_equals_eager(kind):
    spec = make_spec(SCHEDULES[kind])
    budgets = dict(max_text=torch.tensor([4, -1, 0, 2, 6, -1], dtype=torch.int32),
                   max_speech=torch.tensor([-1, 6, 3, -1, 2, 9], dtype=torch.int32), max_total=12)
    eager = InterleaveState(spec, N, **budgets)
    # the sampled=None step (the constructor's), on a copy: op and eager function agree
    state = {name: value.clone() for name, value in eager.state.items()}
    twin = {name: value.clone() for name, value in eager.state.items()}
    allowed, status = ops.interleave_advance_status(eager._config, state, None)
    assert torch.equal(allowed, native_advance(eager._config, twin, None)) and not status.any()
    assert torch.equal(allowed, eager.allowed_set)
    for name, value in twin.items():
        assert torch.equal(state[name], value), name
    state = {name: value.clone() for name, value in eager.state.items()}
    for step in range(25):
        sampled = legal_ids(eager, step)
        eager.advance(sampled)
        allowed, status = ops.interleave_advance_status(eager._config, state, sampled)
        assert allowed.dtype == status.dtype == torch.int32
        assert not status.any(), (kind, step)
        assert torch.equal(allowed, eager.allowed_set), (kind, step)
        for name, value in eager.state.items():
            assert torch.equal(state[name], value), (kind, step, name)
    assert eager.finished.any()  # the walk reached finishes, so the comparison covered them


def test_interleave_op_reports_bad_rows_without_raising():
    spec = make_spec(SCHEDULES["sequential"])
    eager = InterleaveState(spec, 3)
    state = {name: value.clone() for name, value in eager.state.items()}
    sampled = torch.tensor([3, V + 5, 4], dtype=torch.int64)  # row 1 outside the vocabulary
    allowed, status = ops.interleave_advance_status(eager._config, state, sampled)
    assert status.tolist() == [0, 1, 0]
    assert state["text_count"][1] == eager.state["text_count"][1]  # rejected row unchanged
    with pytest.raises(ValueError) as from_op:
        ops.raise_for_interleave_status(status, state["phase"], sampled)
    with pytest.raises(ValueError) as from_eager:
        eager.advance(sampled)
    assert str(from_op.value) == str(from_eager.value)
    assert "row 1" in str(from_op.value)


def grouped_rewards():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(5, 4, generator=g)
    rewards[1, 2] = float("nan")
    rewards[2] = float("nan")  # all missing
    rewards[3] = 0.5  # zero variance
    rewards[4, :3] = float("nan")  # one valid reward
    return rewards


@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("sample_std", [False, True])
def test_group_stats_op_equals_eager(mode, sample_std):
    rewards = grouped_rewards()
    eager = native_group_stats(rewards, mode, sample_std, 1e-4)
    out = ops.group_stats_unchecked(rewards, ops.ADVANTAGE_MODES[mode], sample_std, 1e-4)
    assert list(out) == list(eager)
    for name, value in eager.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape, name
        torch.testing.assert_close(out[name], value, rtol=0, atol=0, equal_nan=True)


# ---- a failing row gives a status, not an exception


def test_nan_row_gives_status_and_raise_for_sample_status_names_it():
    logits, params, history, ranges, offsets = sampler_inputs(7)
    logits[3, 5] = float("nan")
    ids, logprobs, raw, status = call_sample(logits, params, history, ranges, 9, offsets)
    assert status.tolist() == [0, 0, 0, 1, 0, 0]  # kSampleNonFiniteLogit in row 3 only
    good = status == 0
    eager_good = native_sample(logits[good], {k: v[good] for k, v in params.items()}, history[good],
                                    ranges[good], 9, offsets[good])
    assert torch.equal(ids[good], eager_good[0])  # the other rows are sampled as usual
    with pytest.raises(ValueError, match=r"sample_tokens: row 3 cannot be sampled: its logits contain NaN"):
        ops.raise_for_sample_status(status, params)
    with pytest.raises(ValueError, match="row 3"):  # the eager op raises the same error
        native_sample(logits, params, history, ranges, 9, offsets)
    ops.raise_for_sample_status(torch.zeros(N, dtype=torch.int32), params)  # no failure: no error


def test_bad_parameter_row_message_lists_values():
    logits, params, history, ranges, offsets = sampler_inputs(8)
    params["top_p"][4] = 1.5
    *_, status = call_sample(logits, params, history, ranges, 0, offsets)
    assert status.tolist() == [0, 0, 0, 0, 7, 0]
    with pytest.raises(ValueError, match=r"row 4 cannot be sampled.*row 4 has .*top_p=1.5"):
        ops.raise_for_sample_status(status, params)


# ---- torch.library.opcheck
# All four default checks run on CPU: test_schema, test_autograd_registration, test_faketensor,
# test_aot_dispatch_dynamic. test_autograd_registration only checks something when a float
# input requires grad, so the sampler and group_stats also run with logits / rewards that do
# (the ops register non-differentiable outputs; interleave_advance has only integer inputs).
# Not run here: the CUDA paths (workspace, streams, graph capture) need a GPU build.


def test_opcheck_sample_tokens():
    logits, params, history, ranges, offsets = sampler_inputs(11)
    torch.library.opcheck(torch.ops.wavalign.sample_tokens.default,
                          (logits, *params.values(), history, ranges, 42, offsets))
    torch.library.opcheck(torch.ops.wavalign.sample_tokens.default,
                          (logits, *params.values(), None, None, 42, offsets))


def test_sample_tokens_with_grad_input():
    logits, params, history, ranges, offsets = sampler_inputs(12)
    logits.requires_grad_(True)
    out = call_sample(logits, params, history, ranges, 0, offsets)
    assert not any(o.requires_grad for o in out)
    assert torch.equal(out[0], native_sample(logits.detach(), params, history, ranges, 0, offsets)[0])
    torch.library.opcheck(torch.ops.wavalign.sample_tokens.default,
                          (logits, *params.values(), history, ranges, 1, offsets))
    compiled = torch.compile(lambda x: call_sample(x, params, history, ranges, 0, offsets), fullgraph=True,
                             backend="aot_eager")
    compiled_out = compiled(logits)
    assert not any(o.requires_grad for o in compiled_out)
    assert_same(compiled_out, out)


@pytest.mark.parametrize("kind", ["chunked", "ratio"])
def test_opcheck_interleave_advance(kind):
    spec = make_spec(SCHEDULES[kind])
    state = InterleaveState(spec, N, max_text=5, max_speech=8)
    sampled = legal_ids(state, 0)
    c, s = state._config, state.state
    args = (c["schedule"], c["text_chunk"], c["speech_chunk"], c["ratio_pattern"], c["id_modality"], c["eos"],
            c["begin_audio"], c["end_audio"], c["end_text"], sampled, s["max_text"], s["max_speech"],
            s["max_total"], *(s[name] for name in _ops.INTERLEAVE_STATE_NAMES))
    torch.library.opcheck(torch.ops.wavalign.interleave_advance.default, args)
    no_sample = args[:9] + (None,) + args[10:]
    torch.library.opcheck(torch.ops.wavalign.interleave_advance.default, no_sample)


@pytest.mark.parametrize("mode", [0, 2])
def test_opcheck_group_stats(mode):
    # test_aot_dispatch_dynamic compares outputs with assert_close(equal_nan=False), so its
    # rewards keep every statistic finite (a missing reward, a zero-variance group, no
    # all-missing or single-reward group); the NaN statistics are compared in the compile test
    rewards = grouped_rewards()
    torch.library.opcheck(torch.ops.wavalign.group_stats.default, (rewards[[0, 1, 3]], mode, True, 1e-4))
    torch.library.opcheck(torch.ops.wavalign.group_stats.default,
                          (rewards[[0, 1, 3]].requires_grad_(True), mode, False, 1e-4))
    torch.library.opcheck(torch.ops.wavalign.group_stats.default, (rewards, mode, True, 1e-4),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---- torch.compile(fullgraph=True) over all three ops


SEED = 2024


def rollout_step(logits, params, offsets, ranges, config, state, rewards):
    """One decode step as a rollout would write it: sample under the rows' allowed ranges,
    advance the interleave state, and the group statistics of some rewards. (The range
    gather table[allowed_set] stays outside: in the graph it is inductor's only generated
    kernel and triples the cold compile time, about 3 s -> 15 s.)"""
    ids, logprobs, raw, status = ops.sample_tokens_status(logits, params, None, ranges, SEED, offsets)
    next_set, interleave_status = ops.interleave_advance_status(config, state, ids)
    stats = ops.group_stats_unchecked(rewards, 0, False, 1e-4)
    return ids, logprobs, raw, status, next_set, interleave_status, stats


def compile_inputs(nan_row=None):
    spec = make_spec(SCHEDULES["ratio"])
    interleave = InterleaveState(spec, N, max_text=6)
    logits, params, _, _, offsets = sampler_inputs(21)
    if nan_row is not None:
        logits[nan_row, 0] = float("nan")
    return (logits, params, offsets, interleave.allowed_ranges(), interleave._config, interleave.state,
            grouped_rewards()), interleave.table


def clone_inputs(inputs):
    logits, params, offsets, ranges, config, state, rewards = inputs
    return logits, params, offsets, ranges, config, {k: v.clone() for k, v in state.items()}, rewards


def assert_same(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def recording(backend, traced):
    """`backend`, first recording (shape, dtype) of the traced graph's outputs: the fake
    implementations' answers, which aot_eager never checks against the real ones."""
    def compile_graph(gm, example_inputs):
        (output,) = [node for node in gm.graph.nodes if node.op == "output"]
        values = [node.meta["example_value"] for node in torch.utils._pytree.tree_leaves(output.args[0])]
        traced.append(sorted((tuple(v.shape), str(v.dtype)) for v in values))
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)
    return compile_graph


def check_compiled_matches_eager(backend, steps=3):
    torch._dynamo.reset()
    traced = []
    compiled = torch.compile(rollout_step, fullgraph=True, backend=recording(backend, traced))
    eager_inputs, table = compile_inputs()
    compiled_inputs = clone_inputs(eager_inputs)
    start = time.perf_counter()
    first = compiled(*compiled_inputs)
    compile_seconds = time.perf_counter() - start
    eager = rollout_step(*eager_inputs)
    assert_same(first, eager)
    assert_same(compiled_inputs[5], eager_inputs[5])  # the in-place state updates happened
    real = sorted((tuple(v.shape), str(v.dtype)) for v in torch.utils._pytree.tree_leaves(eager))
    assert traced == [real]  # one graph, whose fake outputs match the real ones
    # later steps feed the state back (new allowed sets, new offsets): same graph, same results
    for step in range(1, steps):  # (no recompilation: `traced` stays one graph)
        eager_inputs = (*eager_inputs[:2], eager_inputs[2] + 1000 * step, table[eager[4].long()],
                        *eager_inputs[4:])
        compiled_inputs = (*compiled_inputs[:2], compiled_inputs[2] + 1000 * step, table[first[4].long()],
                           *compiled_inputs[4:])
        first, eager = compiled(*compiled_inputs), rollout_step(*eager_inputs)
        assert_same(first, eager)
        assert_same(compiled_inputs[5], eager_inputs[5])
    # a NaN row is a status from inside the graph, raised afterwards
    bad, _ = compile_inputs(nan_row=2)
    status = compiled(*clone_inputs(bad))[3]
    assert status.tolist() == [0, 0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="row 2"):
        ops.raise_for_sample_status(status, bad[1])
    assert len(traced) == 1
    return compile_seconds


def test_compile_fullgraph_aot_eager():
    seconds = check_compiled_matches_eager("aot_eager")
    print(f"aot_eager first call (trace + compile): {seconds:.2f} s")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    # no on-disk caches: their keys do not cover a custom op's fake implementation, so a
    # cached graph could come from another fake implementation than the one under test
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        seconds = check_compiled_matches_eager("inductor")
    print(f"inductor first call (trace + compile): {seconds:.2f} s")
