"""The learn side of a step on a StepBatch built by hand from plain tensors: no model, no world.

Expected losses and gradients are derived by hand from PAPER.md §5-§7 (see each test)."""

import math

import pytest
import torch

from wavalign import ops
from wavalign.train.config import TrainConfig
from wavalign.train.data import TrainExample
from wavalign.train.gate import AdaptiveGate, GateConfig
from wavalign.train.logprobs import ResponseRows
from wavalign.train.step import StepBatch, collect_metrics, dpo_step, hybrid_step, sft_step

PAD = 9


def rows(types: list[list[int]]) -> ResponseRows:
    """Rows whose ids are 1, 2, 3, ... (irrelevant here) with the given token types."""
    width = max(len(t) for t in types)
    lengths = torch.tensor([sum(k >= 0 for k in t) for t in types])
    table = torch.full((len(types), width), -1, dtype=torch.int8)
    for row, t in enumerate(types):
        table[row, :len(t)] = torch.tensor(t, dtype=torch.int8)
    ids = torch.where(table >= 0, torch.arange(1, width + 1).expand(len(types), -1), torch.full_like(lengths[:1], PAD))
    return ResponseRows([torch.tensor([7, 8])] * len(types), ids, lengths, table)


def batch() -> StepBatch:
    # one prompt, G = 2 samples: rewards 5 and 1 -> GRPO advantages +-2 / (2 + 1e-4)
    rollouts = rows([[0, 0, 1], [0, 1]])  # sample 0: text text speech; sample 1: text speech
    gold = rows([[0, 1, 1]])
    rewards = torch.tensor([[5.0, 1.0]])
    return StepBatch(examples=[TrainExample("a", [7, 8], [1, 2, 3])], group_size=2, spec=None, pad_id=PAD,
                     rows=rollouts, sampling_logprobs=torch.full((2, 3), -0.5), finish_reasons=["eos", "length"],
                     rewards=rewards, stats=ops.group_stats(rewards), gold=gold)


class TableLogprobs:
    """logprob_fn returning one learnable [N, 3] table; records the rows it was asked for."""

    def __init__(self, n: int):
        torch.manual_seed(0)
        self.table = (-torch.rand(n, 3)).requires_grad_(True)
        self.seen: list[ResponseRows] = []

    def __call__(self, asked: ResponseRows):
        self.seen.append(asked)
        return self.table[:len(asked), :asked.ids.shape[1]], asked.types


def test_hybrid_step_loss_and_gradient_match_the_hand_derivation():
    b, fn = batch(), TableLogprobs(3)
    gate = AdaptiveGate(GateConfig())
    loss, metrics = hybrid_step(b, fn, gate, TrainConfig())
    # Rollouts then gold, stacked into one forward.
    assert len(fn.seen) == 1 and len(fn.seen[0]) == 3
    assert fn.seen[0].types[:2, :3].tolist() == [[0, 0, 1], [0, 1, -1]] and fn.seen[0].types[2].tolist() == [0, 1, 1]
    # Gate, first step: Var_pop([5, 1]) = 4 = V_max -> g_info 1; g_rew = sigmoid(5 (5 - 3)).
    lam = 0.8 * (1 / (1 + math.exp(-10.0)))
    assert metrics["gate/lambda"] == pytest.approx(lam, rel=1e-6)
    a = 2.0 / (2.0 + 1e-4)
    t = fn.table.detach()
    # RL on text tokens, sequence mean, on-policy: the value of each token's term is -A (ratio 1),
    # its gradient -A d log pi. Sample 0: -(+a)(2 / 2), sample 1: -(-a)(1 / 1); mean over 2 -> 0.
    rl = (-a + a) / 2
    # SFT anchor on every gold token, token mean.
    sft = -(t[2, 0] + t[2, 1] + t[2, 2]) / 3
    assert float(loss.detach()) == pytest.approx(float(lam * rl + (1 - lam) * sft), rel=1e-5)
    assert metrics["loss/rl"] == pytest.approx(rl, abs=1e-6)
    assert metrics["loss/sft"] == pytest.approx(float(sft), rel=1e-5)
    # gradient: d/dt00 = d/dt01 = lam * (-a / 2) / 2, d/dt10 = lam * (a / 1) / 2, gold lam-free
    loss.backward()
    expected = torch.zeros(3, 3)
    expected[0, 0] = expected[0, 1] = -lam * a / 4
    expected[1, 0] = lam * a / 2  # the speech tokens of rollouts get no RL gradient
    expected[2] = -(1 - lam) / 3
    torch.testing.assert_close(fn.table.grad, expected, rtol=1e-5, atol=1e-7)


def test_grpo_mode_has_no_anchor_and_the_gate_is_not_consulted():
    b, fn = batch(), TableLogprobs(2)
    gate = AdaptiveGate(GateConfig())
    loss, metrics = hybrid_step(b, fn, gate, TrainConfig(mode="grpo"))
    assert gate.steps == 0 and metrics["gate/lambda"] == 1.0 and math.isnan(metrics["loss/sft"])
    assert len(fn.seen[0]) == 2  # rollouts only
    a = 2.0 / (2.0 + 1e-4)
    loss.backward()
    expected = torch.zeros(2, 3)
    expected[0, :2] = -a / 4
    expected[1, 0] = a / 2
    torch.testing.assert_close(fn.table.grad, expected, rtol=1e-5, atol=1e-7)


def test_a_missing_reward_gets_no_gradient():
    b, fn = batch(), TableLogprobs(2)
    b.rewards = torch.tensor([[5.0, math.nan]])
    b.stats = ops.group_stats(b.rewards)  # one valid reward: zero-variance group, advantages 0
    loss, _ = hybrid_step(b, fn, AdaptiveGate(GateConfig()), TrainConfig(mode="grpo"))
    loss.backward()
    assert float(fn.table.grad.abs().sum()) == 0.0


def test_sft_step_is_the_gold_token_mean_nll():
    b, fn = batch(), TableLogprobs(1)
    loss, metrics = sft_step(b, fn, None, TrainConfig(mode="sft"))
    assert float(loss.detach()) == pytest.approx(float(-fn.table[0].detach().mean()), rel=1e-6)
    assert metrics["sft/tokens"] == 3.0
    b.gold = None
    with pytest.raises(ValueError, match="needs gold responses"):
        sft_step(b, fn, None, TrainConfig(mode="sft"))


def test_dpo_step_on_rollout_pairs_uses_the_reference():
    from wavalign.modality import ModalitySpec
    from wavalign.rewards.base import RewardResult

    b = batch()
    b.spec = ModalitySpec(vocab_size=10, text_ranges=((0, 3),), speech_ranges=((3, 10),))  # id 3 is speech
    b.reward = RewardResult(total=b.rewards.flatten().double(), components=b.rewards.T.clone(), names=("judge",),
                            missing={"judge": 0, "composite": 0})
    policy, reference = TableLogprobs(2), TableLogprobs(2)
    reference.table = torch.zeros(2, 3)
    loss, metrics = dpo_step(b, policy, None, TrainConfig(mode="dpo"), reference)
    chosen, rejected = policy.seen[0].responses()  # best (reward 5) first, then the worst
    assert chosen == [1, 2, 3] and rejected == [1, 2]
    # sigmoid DPO, text scope, beta 0.1: -log sigmoid(beta * (sum_text chosen - sum_text rejected))
    t = policy.table.detach()
    margin = 0.1 * ((t[0, 0] + t[0, 1]) - (t[1, 0] + t[1, 1]))  # pairs are retyped by the spec
    assert float(loss.detach()) == pytest.approx(float(-torch.nn.functional.logsigmoid(margin)), rel=1e-5)


def test_collect_metrics_read_the_batch():
    b = batch()
    from wavalign.rewards.base import RewardResult

    b.reward = RewardResult(total=b.rewards.flatten().double(), components=b.rewards.T.clone(), names=("judge",),
                            missing={"judge": 0, "composite": 0})
    m = collect_metrics(b)
    assert m["reward/mean"] == 3.0 and m["reward/judge"] == 3.0
    assert m["rollout/length"] == 2.5 and m["rollout/text_tokens"] == 1.5 and m["rollout/speech_tokens"] == 1.0
    assert m["rollout/eos_fraction"] == 0.5 and m["groups/zero_variance_groups"] == 0.0
    assert collect_metrics(StepBatch(examples=[], group_size=1, spec=None, pad_id=0)) == {}
