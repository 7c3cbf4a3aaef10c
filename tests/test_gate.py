"""AdaptiveGate: hand-derived values, EMA, modes, resume, distributed agreement."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wavalign.train.gate import AdaptiveGate, GateConfig

NAN = float("nan")


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_first_step_is_mean_of_raw_lambdas():
    # group A: rewards 1 and 5 -> population variance 4 = V_max -> g_info 1; max 5 -> g_rew sigmoid(10)
    # group B: rewards 2, 4     -> variance 1 -> g_info 1/4; max 4 -> g_rew sigmoid(5)
    # group C: all 3            -> variance 0 -> lambda_raw 0
    rewards = torch.tensor([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0]])
    gate = AdaptiveGate()
    step = gate.step(rewards)
    raw_a = 0.8 * sigmoid(5 * (5 - 3)) * 1.0
    raw_b = 0.8 * sigmoid(5 * (4 - 3)) * 0.25
    assert step.g_info.tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert step.g_rew.tolist() == pytest.approx([sigmoid(10), sigmoid(5), sigmoid(0)], rel=1e-6)
    assert step.lambda_raw.tolist() == pytest.approx([raw_a, raw_b, 0.0], rel=1e-6)
    assert step.lam == pytest.approx((raw_a + raw_b + 0.0) / 3, rel=1e-6)


def test_ema_against_previous_state_then_averaged():
    gate = AdaptiveGate()
    first = gate.step(torch.tensor([[1.0, 5.0]])).lam  # lambda_1 = 0.8 * sigmoid(10)
    second = gate.step(torch.tensor([[3.0, 3.0], [1.0, 5.0]]))
    expected = (0.9 * first + 0.1 * 0.0 + 0.9 * first + 0.1 * first) / 2
    assert second.lam == pytest.approx(expected, rel=1e-6)


def test_no_ema_and_fixed_modes():
    rewards = [torch.tensor([[1.0, 5.0]]), torch.tensor([[3.0, 3.0]])]
    no_ema = AdaptiveGate(GateConfig(mode="adaptive_no_ema"))
    assert no_ema.step(rewards[0]).lam == pytest.approx(0.8 * sigmoid(10), rel=1e-6)
    assert no_ema.step(rewards[1]).lam == 0.0
    fixed = AdaptiveGate(GateConfig(mode="fixed", fixed_lambda=0.7))
    assert [fixed.step(r).lam for r in rewards] == [0.7, 0.7]


def test_variance_scale_follows_declared_reward_range():
    # rewards on a 0-10 scale: V_max = 25; rewards 0 and 10 -> variance 25 -> g_info 1
    gate = AdaptiveGate(GateConfig(reward_min=0.0, reward_max=10.0, reliability_threshold=6.0))
    step = gate.step(torch.tensor([[0.0, 10.0], [4.0, 6.0]]))
    assert step.g_info.tolist() == pytest.approx([1.0, 1.0 / 25.0])


def test_missing_rewards_are_excluded_and_counted():
    gate = AdaptiveGate()
    step = gate.step(torch.tensor([[1.0, NAN, 5.0], [NAN, NAN, NAN]]))
    assert step.groups_used == 1 and step.groups_skipped == 1
    assert step.lam == pytest.approx(0.8 * sigmoid(10), rel=1e-6)
    before = gate.lam
    empty = gate.step(torch.tensor([[NAN, NAN]]))
    assert empty.lam == before and empty.groups_used == 0  # state unchanged, counted
    assert math.isnan(empty.log_dict()["gate/g_info"])
    fresh = AdaptiveGate()
    assert fresh.step(torch.tensor([[NAN, NAN]])).lam == 0.0 and fresh.lam is None


def test_resume_reproduces_lambda_sequence():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(1, 6, (4, 4), generator=generator).float() for _ in range(6)]
    straight = AdaptiveGate()
    expected = [straight.step(r).lam for r in batches]
    first = AdaptiveGate()
    got = [first.step(r).lam for r in batches[:3]]
    resumed = AdaptiveGate()
    resumed.load_state_dict(first.state_dict())
    got += [resumed.step(r).lam for r in batches[3:]]
    assert got == expected
    with pytest.raises(ValueError, match="resume with the same gate settings"):
        AdaptiveGate(GateConfig(ema=0.5)).load_state_dict(first.state_dict())


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(mode="sigmoid"), "gate.mode must be one of"),
        (dict(lambda_max=1.5), r"gate.lambda_max must be in \[0, 1\]"),
        (dict(ema=1.0), r"gate.ema must be in \[0, 1\)"),
        (dict(reward_min=5.0, reward_max=1.0), "gate.reward_max .* must be greater"),
        (dict(sharpness=0.0), "gate.sharpness must be > 0"),
    ],
)
def test_config_validation_names_the_field(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GateConfig(**kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, batches, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        gate = AdaptiveGate()
        results[rank] = [gate.step(batch[rank::world_size]).lam for batch in batches]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_agree_with_one_process():
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(1, 6, (6, 4), generator=generator).float() for _ in range(4)]
    batches[1][0] = NAN  # a skipped group on rank 0 only
    single = AdaptiveGate()
    expected = [single.step(b).lam for b in batches]
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(_rank_main, args=(2, _free_port(), batches, results), nprocs=2,
                       start_method="spawn", join=True)
    assert results[0] == results[1]  # every rank uses the same lambda
    # float32 per-group terms summed in another order: equal up to float rounding
    assert results[0] == pytest.approx(expected, rel=1e-6)
