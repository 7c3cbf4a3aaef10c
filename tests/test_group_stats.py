"""Native group statistics: hand-derived values and the twin."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_group_stats_match
from wavalign import ops
from wavalign.reference import reference_group_stats

NAN = float("nan")


def test_hand_derived_grpo_population_std():
    # rewards 1, 2, 3 (+ one failed judge call): mean 2, population variance 2/3
    out = ops.group_stats(torch.tensor([[1.0, 2.0, 3.0, NAN]]))
    std = math.sqrt(2.0 / 3.0)
    assert out.valid_count.tolist() == [3]
    assert out.mean.item() == pytest.approx(2.0)
    assert out.variance.item() == pytest.approx(2.0 / 3.0)
    assert out.std.item() == pytest.approx(std)
    assert (out.max.item(), out.min.item()) == (3.0, 1.0)
    expected = [-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4), 0.0]
    assert out.advantages[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_hand_derived_sample_std_dr_grpo_and_rloo():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    sample = ops.group_stats(rewards, std="sample")
    # mean 3, squared deviations 4 + 1 + 0 + 9 = 14, sample variance 14 / 3
    assert sample.variance.item() == pytest.approx(14 / 3)
    dr = ops.group_stats(rewards, mode="dr_grpo")
    assert dr.advantages[0].tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0])
    rloo = ops.group_stats(rewards, mode="rloo")
    # r_i - mean(others): 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    assert rloo.advantages[0].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0])


def test_flags_zero_variance_all_missing_and_single_sample():
    rewards = torch.tensor([[2.0, 2.0, 2.0], [NAN, NAN, NAN], [4.0, NAN, NAN], [1.0, 5.0, NAN]])
    out = ops.group_stats(rewards)
    assert out.zero_variance.tolist() == [True, False, True, False]
    assert out.all_missing.tolist() == [False, True, False, False]
    assert torch.all(out.advantages[:3] == 0)
    assert math.isnan(out.mean[1].item()) and math.isnan(out.std[1].item())
    assert out.advantages[3, 2].item() == 0.0  # missing reward: no advantage
    summary = out.summary()
    assert summary["zero_variance_groups"] == 2 and summary["all_missing_groups"] == 1
    assert summary["missing_rewards"] == 6


def test_group_size_one_and_empty_batch():
    one = ops.group_stats(torch.tensor([[3.0], [NAN]]), mode="rloo")
    assert one.advantages.tolist() == [[0.0], [0.0]]
    assert one.zero_variance.tolist() == [True, False]
    empty = ops.group_stats(torch.zeros(0, 4))
    assert empty.advantages.shape == (0, 4)


@st.composite
def reward_tables(draw):
    b, g = draw(st.integers(1, 12)), draw(st.integers(1, 9))
    value = st.one_of(st.just(NAN), st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0]), st.floats(-10, 10, width=32))
    rows = [[draw(value) for _ in range(g)] for _ in range(b)]
    return torch.tensor(rows, dtype=torch.float32)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(reward_tables(), st.sampled_from(["grpo", "dr_grpo", "rloo"]), st.sampled_from(["population", "sample"]))
def test_native_equals_reference(rewards, mode, std):
    assert_group_stats_match(ops.group_stats(rewards, mode=mode, std=std),
                             reference_group_stats(rewards, mode=mode, std=std))


def test_infinite_rewards_are_rejected_with_position():
    rewards = torch.tensor([[1.0, 2.0], [float("inf"), 3.0]])
    with pytest.raises(ValueError, match=r"rewards\[1, 0\] is inf: rewards must be finite or NaN"):
        ops.group_stats(rewards)


def test_bad_arguments():
    with pytest.raises(TypeError, match="rewards must have dtype float32, got float64"):
        ops.group_stats(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"rewards must have shape \[B, G\]"):
        ops.group_stats(torch.zeros(3))
    with pytest.raises(ValueError, match="advantage mode must be one of"):
        ops.group_stats(torch.zeros(2, 3), mode="ppo")
    with pytest.raises(ValueError, match="std must be 'population' or 'sample'"):
        ops.group_stats(torch.zeros(2, 3), std="biased")
    with pytest.raises(ValueError, match="eps must be a finite number"):
        ops.group_stats(torch.zeros(2, 3), eps=-1.0)
    with pytest.raises(ValueError, match="rewards must be contiguous"):
        ops.group_stats(torch.zeros(3, 2).t())


@pytest.mark.cuda
def test_cuda_group_stats_match_cpu():
    rewards = torch.tensor([[1.0, 2.0, NAN, 5.0], [3.0, 3.0, 3.0, 3.0], [NAN] * 4])
    for mode in ("grpo", "dr_grpo", "rloo"):
        cpu = ops.group_stats(rewards, mode=mode)
        gpu = ops.group_stats(rewards.cuda(), mode=mode)
        torch.testing.assert_close(gpu.advantages.cpu(), cpu.advantages)
        assert torch.equal(gpu.zero_variance.cpu(), cpu.zero_variance)
