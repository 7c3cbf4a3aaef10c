"""Native interleave state machine vs its Python twin, hand-written schedules, sampler loop."""

import pytest
import torch

from wavalign import _ops, ops
from wavalign.modality import ModalitySpec, Schedule, ids_to_ranges, load_preset
from wavalign.reference.interleave import (
    N_ALLOWED_SETS, SCHEDULE_CODES, SET_EOS_ONLY, SET_SPEECH, SET_SWITCH_TO_SPEECH, SET_TEXT, RowState,
    allowed_mask, reference_step,
)
from wavalign.rollout import InterleaveState

# ids: 0 pad, 1 eos, 2 end_text, 3..19 text, 20 begin_audio, 21 end_audio, 22..37 speech, 38-39 unused
def make_spec(schedule, **overrides):
    fields = dict(vocab_size=40, text_ranges=[(0, 20)], speech_ranges=[(22, 38)], eos=1, pad=0,
                  end_text=2, begin_audio=20, end_audio=21, schedule=schedule)
    fields.update(overrides)
    return ModalitySpec(**fields)


SPECS = {
    "sequential": make_spec(Schedule.sequential()),
    "sequential_no_boundary": make_spec(Schedule.sequential(), begin_audio=None, end_audio=None),
    "chunked": make_spec(Schedule.chunked(text=3, speech=5)),
    "free": make_spec(Schedule.free()),
    "no_eos": make_spec(Schedule.sequential(), eos=None),
    "ratio": make_spec(Schedule.ratio([2, 4, 3, 5])),  # blocks of 2 then 3 units
    "ratio_no_eos": make_spec(Schedule.ratio([1, 3, 2, 4, 3, 1], boundaries=False), eos=None),
}


SCHEDULES = [Schedule.sequential(), Schedule.chunked(text=3, speech=5), Schedule.free(), Schedule.ratio([1, 4])]


def _native_mask(spec, allowed_set):
    def code(token):
        return -1 if token is None else token

    return _ops.interleave_allowed_mask(SCHEDULE_CODES[spec.schedule.kind], spec.modality_table(), code(spec.eos),
                                        code(spec.begin_audio), code(spec.end_audio), code(spec.end_text),
                                        allowed_set)


@pytest.mark.parametrize("name", sorted(SPECS) + ["boundary_as_text", "preset"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_native_allowed_mask_matches_twin(name, schedule):
    """The range table comes from the native predicate; the twin is the oracle for every set."""
    base = {"boundary_as_text": make_spec(Schedule.sequential(), boundary_is_speech=False),
            "preset": load_preset("glm4_voice")}.get(name) or SPECS[name]
    if schedule.kind == "ratio" and (base.begin_audio is None or base.end_audio is None):
        pytest.skip("a ratio schedule needs begin/end-of-audio ids")
    spec = ModalitySpec.from_dict({**base.to_dict(), "schedule": schedule})
    table = spec.interleave_table()  # [4, R, 2]
    for allowed_set in range(N_ALLOWED_SETS):
        native, twin = _native_mask(spec, allowed_set), allowed_mask(spec, allowed_set)
        assert native.dtype == torch.bool and native.shape == (spec.vocab_size,)
        assert torch.equal(native, twin), (name, schedule.kind, allowed_set)
        ranges = [tuple(r) for r in table[allowed_set].tolist() if r[0] < r[1]]
        assert ranges == list(ids_to_ranges(torch.nonzero(twin).flatten().tolist()))


def test_native_allowed_mask_rejects_bad_arguments():
    modality = SPECS["sequential"].modality_table()
    with pytest.raises(ValueError, match="allowed_set must lie in"):
        _ops.interleave_allowed_mask(0, modality, 1, 20, 21, 2, N_ALLOWED_SETS)
    with pytest.raises(ValueError, match="schedule must be 0"):
        _ops.interleave_allowed_mask(4, modality, 1, 20, 21, 2, 0)
    with pytest.raises(ValueError, match="special id 40 is outside"):
        _ops.interleave_allowed_mask(0, modality, 40, 20, 21, 2, 0)
    with pytest.raises(TypeError, match="id_modality must have dtype int8"):
        _ops.interleave_allowed_mask(0, modality.long(), 1, 20, 21, 2, 0)


def _walk(spec, n_rows, steps, seed, budgets):
    """Drive native and twin with the same legal ids (random per allowed set) and compare."""
    g = torch.Generator().manual_seed(seed)
    native = InterleaveState(spec, n_rows, **budgets)
    rows = [RowState() for _ in range(n_rows)]
    if spec.schedule.kind == "chunked" and budgets.get("max_text") == 0:
        for row in rows:
            row.phase, row.text_done = 1, True
    masks = [allowed_mask(spec, s) for s in range(N_ALLOWED_SETS)]
    specials = torch.zeros(spec.vocab_size, dtype=torch.bool)
    specials[[t for t in (spec.eos, spec.begin_audio, spec.end_audio) if t is not None]] = True
    for _ in range(steps):
        sets = native.allowed_set.tolist()
        ids = []
        for s in sets:
            # A third of the draws go to a legal special id (when one is legal), so chunks and
            # blocks end at, before and after their quotas often enough to reach every branch.
            legal = torch.nonzero(masks[s]).flatten()
            special = torch.nonzero(masks[s] & specials).flatten()
            pool = special if len(special) and torch.rand((), generator=g) < 1 / 3 else legal
            ids.append(int(pool[torch.randint(len(pool), (1,), generator=g)]) if len(pool) else 1)
        sampled = torch.tensor(ids)
        native.advance(sampled)
        limits = [budgets.get(k, -1) for k in ("max_text", "max_speech", "max_total")]
        expected = [reference_step(spec, row, t, *limits) for row, t in zip(rows, ids)]
        assert native.allowed_set.tolist() == expected
        assert native.phase.tolist() == [r.phase for r in rows]
        assert native.state["text_count"].tolist() == [r.text_count for r in rows]
        assert native.state["speech_count"].tolist() == [r.speech_count for r in rows]
        assert native.state["finish_reason"].tolist() == [r.finish_reason for r in rows]
        assert native.state["chunk_count"].tolist() == [r.chunk_count for r in rows]
        assert native.state["chunk_index"].tolist() == [r.chunk_index for r in rows]
        assert native.state["text_done"].tolist() == [int(r.text_done) for r in rows]
    return native


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("budgets", [{}, dict(max_text=4, max_speech=9), dict(max_total=12), dict(max_text=0)])
def test_native_matches_twin_on_random_walks(name, budgets):
    _walk(SPECS[name], n_rows=24, steps=40, seed=len(name), budgets=budgets)


def test_sequential_hand_written():
    state = InterleaveState(SPECS["sequential"], 1)
    trace = []
    for token in [5, 6, 20, 22, 30, 21, 1]:
        state.advance(torch.tensor([token]))
        trace.append(int(state.allowed_set[0]))
    assert trace == [SET_TEXT, SET_TEXT, SET_SPEECH, SET_SPEECH, SET_SPEECH, SET_EOS_ONLY, SET_EOS_ONLY]
    assert state.finish_reasons() == ["eos"]


def test_chunked_hand_written_with_end_of_text():
    state = InterleaveState(SPECS["chunked"], 1)
    phases = []
    # 3 text -> 5 speech -> 2 text + end_text -> speech until EOS
    for token in [3, 4, 5, 22, 23, 24, 25, 26, 7, 8, 2, 30, 31, 32, 33, 34, 35, 1]:
        state.advance(torch.tensor([token]))
        phases.append(int(state.phase[0]))
    assert phases == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert state.finish_reasons() == ["eos"]
    assert (state.state["text_count"].item(), state.state["speech_count"].item()) == (6, 11)


def test_text_budget_forces_the_switch_to_speech():
    state = InterleaveState(SPECS["sequential"], 1, max_text=2)
    state.advance(torch.tensor([5]))
    state.advance(torch.tensor([6]))
    assert int(state.allowed_set[0]) == SET_SWITCH_TO_SPEECH
    assert state.allowed_ranges()[0].tolist() == [[20, 21]] + [[0, 0]] * (state.table.shape[1] - 1)
    with pytest.raises(ValueError, match="row 0: sampled id 7 is not allowed"):
        state.advance(torch.tensor([7]))


def test_illegal_and_out_of_range_ids_name_the_row():
    state = InterleaveState(SPECS["sequential"], 3)
    with pytest.raises(ValueError, match="row 1: sampled id 25 is not allowed"):
        state.advance(torch.tensor([5, 25, 6]))  # speech before begin_audio
    with pytest.raises(ValueError, match="row 2: sampled id 40 is outside the vocabulary"):
        state.advance(torch.tensor([5, 6, 40]))
    with pytest.raises(ValueError, match=r"max_text must be an int >= 0"):
        InterleaveState(SPECS["sequential"], 3, max_text=-5)


@pytest.mark.parametrize("name", ["sequential", "chunked", "free", "ratio"])
def test_sampler_loop_never_violates_the_schedule(name):
    spec = SPECS[name]
    n = 32
    state = InterleaveState(spec, n, max_total=60)
    logits = torch.randn(n, spec.vocab_size, generator=torch.Generator().manual_seed(3))
    rows = [RowState() for _ in range(n)]
    for step in range(70):
        out = ops.sample_tokens(logits, allowed_ranges=state.allowed_ranges(), seed=7,
                                offsets=torch.arange(n) * 1000 + step)
        ids = torch.where(state.finished, torch.full_like(out.ids, spec.eos), out.ids)
        for row, token in zip(rows, ids.tolist()):
            reference_step(spec, row, token, max_total=60)  # raises on any illegal id
        state.advance(ids)
        if bool(state.finished.all()):
            break
    assert bool(state.finished.all())


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["chunked", "ratio"])
def test_cuda_matches_cpu(name):
    spec = SPECS[name]
    g = torch.Generator().manual_seed(0)
    cpu = InterleaveState(spec, 16, max_text=5)
    gpu = InterleaveState(spec, 16, max_text=5, device="cuda")
    masks = [allowed_mask(spec, s) for s in range(N_ALLOWED_SETS)]
    for _ in range(30):
        ids = []
        for s in cpu.allowed_set.tolist():
            legal = torch.nonzero(masks[s]).flatten()
            ids.append(int(legal[torch.randint(len(legal), (1,), generator=g)]))
        cpu.advance(torch.tensor(ids))
        gpu.advance(torch.tensor(ids).cuda())
        assert torch.equal(cpu.allowed_set, gpu.allowed_set.cpu())
        assert torch.equal(cpu.phase, gpu.phase.cpu())
