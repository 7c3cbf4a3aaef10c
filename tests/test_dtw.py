"""The native nearest-template DTW against its PyTorch twin, the twin against a plain double loop,
and the native op's input checks."""

from __future__ import annotations

import math

import pytest
import torch

from wavalign import ops
from wavalign.reference.dtw import reference_dtw_distances, reference_dtw_nearest


def _padded(lengths, frames, channels, generator, scale=1.0):
    out = torch.zeros(len(lengths), frames, channels)
    for k, n in enumerate(lengths):
        out[k, :n] = scale * torch.randn(n, channels, generator=generator)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_native_nearest_equals_the_twin(seed):
    g = torch.Generator().manual_seed(seed)
    k, q, c = 60, 12, 5
    template_lengths = torch.randint(0, 30, (k,), generator=g)
    templates = _padded(template_lengths.tolist(), 30, c, g)
    # queries near some templates (resampled in time, with noise), so abandoning matters
    query_lengths = torch.randint(1, 25, (q,), generator=g)
    queries = torch.zeros(q, 25, c)
    for i, n in enumerate(query_lengths.tolist()):
        source = int(torch.randint(k, (1,), generator=g))
        m = max(int(template_lengths[source]), 1)
        picks = torch.linspace(0, m - 1, n).round().long()
        queries[i, :n] = templates[source, picks] + 0.3 * torch.randn(n, c, generator=g)
    got = ops.dtw_nearest(queries, query_lengths, templates, template_lengths)
    want_index, want_distance = reference_dtw_nearest(queries, query_lengths, templates, template_lengths)
    for i in range(q):
        if want_index[i] < 0:
            assert got.index[i] == -1 and math.isinf(float(got.distance[i]))
            continue
        assert float(got.distance[i]) == pytest.approx(float(want_distance[i]), rel=1e-5)
        if got.index[i] != want_index[i]:  # only a near-tie may resolve differently by rounding
            d = reference_dtw_distances(queries[i, : query_lengths[i]], templates, template_lengths)
            assert float(d[got.index[i]]) == pytest.approx(float(d[want_index[i]]), rel=1e-5)


def test_every_template_distance_is_exact_when_it_is_the_only_one():
    """One template per call: no abandoning, so the distance is the full DTW cost."""
    g = torch.Generator().manual_seed(7)
    query = torch.randn(1, 9, 3, generator=g)
    for length in (1, 3, 9, 17, 18):
        template = _padded([length], 20, 3, g)
        got = ops.dtw_nearest(query, torch.tensor([9]), template, torch.tensor([length]))
        want = reference_dtw_distances(query[0], template, torch.tensor([length]))
        if length - 1 > 2 * 8 or length == 1:  # unreachable: too long, or one frame for 9
            assert math.isinf(float(want[0])) == (length - 1 > 2 * 8)
        if math.isinf(float(want[0])):
            assert int(got.index[0]) == -1 and math.isinf(float(got.distance[0]))
        else:
            assert int(got.index[0]) == 0
            assert float(got.distance[0]) == pytest.approx(float(want[0]), rel=1e-6)


def test_ties_go_to_the_lowest_index_and_empty_inputs():
    g = torch.Generator().manual_seed(3)
    base = _padded([8], 10, 4, g)
    far = base + 5.0
    templates = torch.cat([far, base, far, base])  # 1 and 3 are identical and nearest
    lengths = torch.tensor([8, 8, 8, 8])
    query = base.clone()
    got = ops.dtw_nearest(query, torch.tensor([8]), templates, lengths)
    assert int(got.index[0]) == 1 and float(got.distance[0]) == 0.0
    # a zero-length query and no templates: nothing reachable
    got = ops.dtw_nearest(query, torch.tensor([0]), templates, lengths)
    assert int(got.index[0]) == -1 and math.isinf(float(got.distance[0]))
    got = ops.dtw_nearest(query, torch.tensor([8]), templates[:0], lengths[:0])
    assert int(got.index[0]) == -1
    assert ops.dtw_nearest(query[:0], torch.tensor([], dtype=torch.int64), templates, lengths).index.shape == (0,)


def test_bad_inputs_raise_naming_the_argument():
    templates, lengths = torch.zeros(3, 5, 2), torch.tensor([5, 4, 1])
    query, qlen = torch.zeros(1, 4, 2), torch.tensor([4])
    with pytest.raises(TypeError, match="float32"):
        ops.dtw_nearest(query.double(), qlen, templates, lengths)
    with pytest.raises(TypeError, match="int64"):
        ops.dtw_nearest(query, qlen.int(), templates, lengths)
    with pytest.raises(ValueError, match="templates"):
        ops.dtw_nearest(query, qlen, torch.zeros(3, 5, 3), lengths)
    with pytest.raises(ValueError, match=r"template_lengths\[1\] = 6"):
        ops.dtw_nearest(query, qlen, templates, torch.tensor([5, 6, 1]))
    with pytest.raises(ValueError, match=r"query_lengths\[0\] = -1"):
        ops.dtw_nearest(query, torch.tensor([-1]), templates, lengths)
    bad = query.clone()
    bad[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="queries holds a non-finite"):
        ops.dtw_nearest(bad, qlen, templates, lengths)
    bad = templates.clone()
    bad[2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="templates holds a non-finite"):
        ops.dtw_nearest(query, qlen, bad, lengths)
    with pytest.raises(ValueError, match="contiguous"):
        ops.dtw_nearest(torch.zeros(1, 2, 4)[:, :, ::2], qlen, templates, lengths)


@pytest.mark.parametrize("seed", range(3))
def test_hints_change_the_search_order_only(seed):
    g = torch.Generator().manual_seed(100 + seed)
    k, q, c = 40, 10, 4
    template_lengths = torch.randint(1, 20, (k,), generator=g)
    templates = _padded(template_lengths.tolist(), 20, c, g)
    query_lengths = torch.randint(2, 15, (q,), generator=g)
    queries = _padded(query_lengths.tolist(), 15, c, g)
    groups = torch.randint(0, 8, (k,), generator=g)
    plain = ops.dtw_nearest(queries, query_lengths, templates, template_lengths)
    for hints in (torch.randint(-1, 8, (q,), generator=g), groups[plain.index.clamp_min(0)]):
        hinted = ops.dtw_nearest(queries, query_lengths, templates, template_lengths, template_groups=groups,
                                 hint_groups=hints)
        assert torch.equal(hinted.index, plain.index) and torch.equal(hinted.distance, plain.distance)
    with pytest.raises(ValueError, match="go together"):
        ops.dtw_nearest(queries, query_lengths, templates, template_lengths, template_groups=groups)


def _reference_dtw(query, template):
    """Plain double loop with the same step pattern as the DTW twin."""
    tq, tt = len(query), len(template)
    total = [[math.inf] * tt for _ in range(tq)]
    total[0][0] = float(torch.dist(query[0], template[0]))
    for i in range(1, tq):
        for j in range(tt):
            best = min(total[i - 1][j], total[i - 1][j - 1] if j >= 1 else math.inf,
                       total[i - 1][j - 2] if j >= 2 else math.inf)
            total[i][j] = float(torch.dist(query[i], template[j])) + best
    return total[-1][-1] / tq


def test_dtw_twin_matches_the_plain_loop():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(9, 3, generator=g)
    lengths = torch.tensor([5, 9, 12, 3, 20])
    templates = torch.zeros(5, 20, 3)
    for k, n in enumerate(lengths.tolist()):
        templates[k, :n] = torch.randn(n, 3, generator=g)
    got = reference_dtw_distances(query, templates, lengths)
    want = [_reference_dtw(query, templates[k, :n]) for k, n in enumerate(lengths.tolist())]
    for g_value, w_value in zip(got.tolist(), want):
        assert (math.isinf(g_value) and math.isinf(w_value)) or abs(g_value - w_value) < 1e-4
    assert not math.isinf(want[3])  # the query may dwell on template frames
    assert math.isinf(want[4])  # but may skip at most one frame per step: 20 > 2 * 8 + 1
