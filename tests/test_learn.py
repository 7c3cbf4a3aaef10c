"""train/learn.py (and the batch quantities of train/collect.py) on StepBatches built by hand
from plain tensors: no model, no world.

Expected losses and gradients are derived by hand from PAPER.md §5-§7 (see each test)."""

import math
from dataclasses import fields, replace

import pytest
import torch

from wavalign import ops
from wavalign.data import TrainExample
from wavalign.logprobs import ResponseRows
from wavalign.train.collect import StepBatch, collect_metrics, group_statistics, with_global_quantities
from wavalign.train.config import TrainConfig
from wavalign.train.gate import AdaptiveGate, GateConfig
from wavalign.train.learn import learn, learn_dpo, learn_hybrid, learn_sft

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


def decided(b: StepBatch, gate: AdaptiveGate) -> StepBatch:
    """The batch with the gate's decision, as Collector.collect_step takes it."""
    return replace(b, gate_step=gate.step(b.stats))


def test_learn_hybrid_loss_and_gradient_match_the_hand_derivation():
    b, fn = batch(), TableLogprobs(3)
    gate = AdaptiveGate(GateConfig())
    loss, metrics = learn_hybrid(decided(b, gate), fn, TrainConfig())
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


def test_grpo_mode_has_no_anchor_and_needs_no_gate_decision():
    b, fn = batch(), TableLogprobs(2)
    loss, metrics = learn_hybrid(b, fn, TrainConfig(mode="grpo"))
    assert b.gate_step is None and metrics["gate/lambda"] == 1.0 and math.isnan(metrics["loss/sft"])
    assert len(fn.seen[0]) == 2  # rollouts only
    a = 2.0 / (2.0 + 1e-4)
    loss.backward()
    expected = torch.zeros(2, 3)
    expected[0, :2] = -a / 4
    expected[1, 0] = a / 2
    torch.testing.assert_close(fn.table.grad, expected, rtol=1e-5, atol=1e-7)


def test_a_missing_reward_gets_no_gradient():
    fn = TableLogprobs(2)
    rewards = torch.tensor([[5.0, math.nan]])
    # one valid reward: a zero-variance group, advantages 0
    b = replace(batch(), rewards=rewards, stats=ops.group_stats(rewards))
    loss, _ = learn_hybrid(b, fn, TrainConfig(mode="grpo"))
    loss.backward()
    assert float(fn.table.grad.abs().sum()) == 0.0


def test_hybrid_learning_needs_the_gate_decision():
    with pytest.raises(ValueError, match="gate's decision"):
        learn_hybrid(batch(), TableLogprobs(3), TrainConfig())


def test_learn_sft_is_the_gold_token_mean_nll():
    b, fn = batch(), TableLogprobs(1)
    loss, metrics = learn_sft(b, fn, TrainConfig(mode="sft"))
    assert float(loss.detach()) == pytest.approx(float(-fn.table[0].detach().mean()), rel=1e-6)
    assert metrics["sft/tokens"] == 3.0
    with pytest.raises(ValueError, match="needs gold responses"):
        learn_sft(replace(b, gold=None), fn, TrainConfig(mode="sft"))


def test_learn_dpo_on_rollout_pairs_uses_the_reference():
    from wavalign.modality import ModalitySpec
    from wavalign.rewards.base import RewardResult

    b = batch()
    b = replace(b, spec=ModalitySpec(vocab_size=10, text_ranges=((0, 3),), speech_ranges=((3, 10),)),  # id 3: speech
                reward=RewardResult(total=b.rewards.flatten().double(), components=b.rewards.T.clone(),
                                    names=("judge",), missing={"judge": 0, "composite": 0}))
    policy, reference = TableLogprobs(2), TableLogprobs(2)
    reference.table = torch.zeros(2, 3)
    loss, metrics = learn_dpo(b, policy, TrainConfig(mode="dpo"), reference)
    chosen, rejected = policy.seen[0].responses()  # best (reward 5) first, then the worst
    assert chosen == [1, 2, 3] and rejected == [1, 2]
    # sigmoid DPO, text scope, beta 0.1: -log sigmoid(beta * (sum_text chosen - sum_text rejected))
    t = policy.table.detach()
    margin = 0.1 * ((t[0, 0] + t[0, 1]) - (t[1, 0] + t[1, 1]))  # pairs are retyped by the spec
    assert float(loss.detach()) == pytest.approx(float(-torch.nn.functional.logsigmoid(margin)), rel=1e-5)


def test_collect_metrics_read_the_batch():
    from wavalign.rewards.base import RewardResult

    b = batch()
    b = replace(b, reward=RewardResult(total=b.rewards.flatten().double(), components=b.rewards.T.clone(),
                                       names=("judge",), missing={"judge": 0, "composite": 0}))
    m = collect_metrics(b)
    assert m["reward/mean"] == 3.0 and m["reward/judge"] == 3.0
    assert m["rollout/length"] == 2.5 and m["rollout/text_tokens"] == 1.5 and m["rollout/speech_tokens"] == 1.0
    assert m["rollout/eos_fraction"] == 0.5 and m["groups/zero_variance_groups"] == 0.0
    assert collect_metrics(StepBatch(examples=[], group_size=1, spec=None, pad_id=0)) == {}


# ---------------------------------------------------------------------------- micro-batches, loss types, PPO
class IdLogprobs:
    """logprob_fn with a learnable score per token id: log p(id) = -softplus(theta[id]).
    Works on any subset of rows, so micro-batches and the whole batch can be compared."""

    def __init__(self, vocab: int = 16, seed: int = 0):
        torch.manual_seed(seed)
        self.theta = torch.randn(vocab).requires_grad_(True)
        self.calls = 0

    def __call__(self, asked: ResponseRows):
        self.calls += 1
        return -torch.nn.functional.softplus(self.theta[asked.ids.clamp(max=15)]), asked.types


def random_batch(n_prompts=3, group=2, seed=1) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    n = n_prompts * group
    lengths = torch.randint(2, 7, (n,), generator=g)
    width = int(lengths.max())
    ids = torch.randint(0, 15, (n, width), generator=g)
    valid = torch.arange(width)[None, :] < lengths[:, None]
    types = torch.where(valid, (ids % 2).to(torch.int8), torch.full_like(ids, -1, dtype=torch.int8))
    rollouts = ResponseRows([torch.tensor([1, 2])] * n, torch.where(valid, ids, torch.full_like(ids, PAD)), lengths,
                            types)
    glen = torch.randint(3, 9, (n_prompts,), generator=g)
    gw = int(glen.max())
    gids = torch.randint(0, 15, (n_prompts, gw), generator=g)
    gvalid = torch.arange(gw)[None, :] < glen[:, None]
    gold = ResponseRows([torch.tensor([1, 2])] * n_prompts, gids, glen,
                        torch.where(gvalid, (gids % 2).to(torch.int8), torch.full_like(gids, -1, dtype=torch.int8)))
    rewards = torch.rand(n_prompts, group, generator=g) * 4 + 1
    return StepBatch(examples=[TrainExample(str(i), [1, 2]) for i in range(n_prompts)], group_size=group, spec=None,
                     pad_id=PAD, rows=rollouts, sampling_logprobs=torch.zeros(n, width),
                     finish_reasons=["eos", "length"] * (n // 2), rewards=rewards, stats=ops.group_stats(rewards),
                     gold=gold)


def grads(batch, config, backward: bool, fn=None):
    fn = fn or IdLogprobs()
    batch = decided(batch, AdaptiveGate(GateConfig(mode="fixed", fixed_lambda=0.6)))
    if backward:
        loss, metrics = learn_hybrid(batch, fn, config, backward=lambda term: term.backward())
    else:
        loss, metrics = learn_hybrid(batch, fn, config)
        loss.backward()
    return fn.theta.grad.clone(), float(loss.detach()), metrics, fn.calls


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_micro_batches_give_the_one_batch_gradient_for_each_loss_type(loss_type, micro):
    base = [f"objective.loss_type={loss_type}", "objective.mask_truncated_completions=true"]
    whole = TrainConfig.load(None, base)
    split = TrainConfig.load(None, base + [f"optim.micro_batch_size={micro}"])
    g_whole, l_whole, m_whole, _ = grads(random_batch(), whole, backward=False)
    g_split, l_split, m_split, calls = grads(random_batch(), split, backward=True)
    assert calls == -(-9 // micro)  # 6 rollouts + 3 gold rows, micro-batch by micro-batch
    torch.testing.assert_close(g_split, g_whole, rtol=1e-5, atol=1e-7)
    assert l_split == pytest.approx(l_whole, rel=1e-5, abs=1e-7)
    assert m_split["rl/scope_tokens"] == m_whole["rl/scope_tokens"] and m_split["rl/truncated_masked"] == 3.0


def test_loss_type_normalisers_by_hand():
    """One prompt, G = 2, advantages +-a, text scope, rows of 2 and 1 text tokens (see batch())."""
    a = 2.0 / (2.0 + 1e-4)
    expected = {"grpo": [-a / 4, -a / 4, a / 2],  # per-sequence mean, then mean over 2 rows
                "bnpo": [-a / 3, -a / 3, a / 3],  # mean over the 3 in-scope tokens
                "dr_grpo": [-a / 320, -a / 320, a / 320]}  # sum / (2 rows x 160 max_new_tokens)
    for loss_type, (d00, d01, d10) in expected.items():
        fn = TableLogprobs(2)
        loss, _ = learn_hybrid(batch(), fn, TrainConfig.load(None, ["mode=grpo", f"objective.loss_type={loss_type}"]))
        loss.backward()
        torch.testing.assert_close(fn.table.grad[0, :2], torch.tensor([d00, d01]), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(fn.table.grad[1, 0], torch.tensor(d10), rtol=1e-5, atol=1e-8)
    # dapo: the normaliser is the global token count over ranks, divided by the rank count
    b = replace(batch(), global_pg_tokens=12.0, world_size=2)  # e.g. another rank held 9 more tokens
    fn = TableLogprobs(2)
    loss, _ = learn_hybrid(b, fn, TrainConfig.load(None, ["mode=grpo", "objective.loss_type=dapo"]))
    loss.backward()
    torch.testing.assert_close(fn.table.grad[0, 0], torch.tensor(-a / 6), rtol=1e-5, atol=1e-8)


def test_masked_truncated_completions_get_no_rl_gradient():
    fn = TableLogprobs(2)
    config = TrainConfig.load(None, ["mode=grpo", "objective.mask_truncated_completions=true"])
    loss, metrics = learn_hybrid(batch(), fn, config)  # sample 1 finished by length
    loss.backward()
    assert metrics["rl/truncated_masked"] == 1.0
    assert float(fn.table.grad[1].abs().sum()) == 0.0 and float(fn.table.grad[0].abs().sum()) > 0


def test_scale_rewards_batch_and_none():
    rewards = torch.tensor([[5.0, 1.0], [2.0, 2.0 + 2.0]])
    none = group_statistics(rewards, TrainConfig.load(None, ["objective.scale_rewards=none"]).objective)
    torch.testing.assert_close(none.advantages, torch.tensor([[2.0, -2.0], [-1.0, 1.0]]))
    batched = group_statistics(rewards, TrainConfig.load(None, ["objective.scale_rewards=batch"]).objective)
    std = float(rewards.flatten().std(unbiased=False))  # population std of all four rewards
    torch.testing.assert_close(batched.advantages, torch.tensor([[2.0, -2.0], [-1.0, 1.0]]) / (std + 1e-4))


def test_ppo_clip_starts_at_ratio_one_and_clips_after_a_move():
    fn = TableLogprobs(2)
    config = TrainConfig.load(None, ["mode=grpo", "rollout.num_iterations=2", "objective.epsilon=0.1",
                                     "objective.epsilon_high=0.3"])
    b = replace(batch(), old_logprobs=fn.table.detach().clone())  # the behaviour policy is the current one
    loss, metrics = learn_hybrid(b, fn, config)
    assert metrics["rl/clip_fraction"] == 0.0  # ratio 1 everywhere at the first inner step
    loss.backward()
    expected = torch.zeros(2, 3)
    a = 2.0 / (2.0 + 1e-4)
    expected[0, :2], expected[1, 0] = -a / 4, a / 2  # the on-policy gradient
    torch.testing.assert_close(fn.table.grad, expected, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # move sample 0's first token up by log 2: ratio 2 > 1 + 0.3 with A > 0
        fn.table[0, 0] += math.log(2.0)
    fn.table.grad = None
    loss, metrics = learn_hybrid(b, fn, config)
    loss.backward()
    assert float(fn.table.grad[0, 0]) == 0.0 and float(fn.table.grad[0, 1]) != 0.0  # clipped, not clipped
    assert metrics["rl/clip_fraction_text"] == pytest.approx(1 / 3)


def test_global_quantities_use_the_reduced_counts():
    # this rank's rewards are [[5, 1]]; another rank holds [3, 3]: summed n, sum and sum of
    # squares arrive reduced
    other = [2.0, 6.0, 18.0]
    b = with_global_quantities(batch(), TrainConfig.load(None, ["objective.scale_rewards=batch", "objective.loss_type=dapo"]),
                           2, False, lambda values: [v + o for v, o in zip(values, other)] if len(values) == 3
                           else [values[0] + 9.0])
    std = float(torch.tensor([5.0, 1.0, 3.0, 3.0]).std(unbiased=False))  # the global batch's
    torch.testing.assert_close(b.stats.advantages, torch.tensor([[2.0, -2.0]]) / (std + 1e-4))
    assert b.world_size == 2 and b.global_pg_tokens == 3.0 + 9.0  # 3 text tokens here, 9 elsewhere


# ---------------------------------------------------------------------------- purity
def snapshot(value):
    """A deep, bit-exact copy of a value's data (tensors cloned; dataclasses, named tuples,
    lists, dicts and plain objects walked), to compare a batch before and after a learn call."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.detach().clone())
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__, {f.name: snapshot(getattr(value, f.name)) for f in fields(value)})
    if hasattr(value, "_fields"):
        return (type(value).__name__, {name: snapshot(getattr(value, name)) for name in value._fields})
    if isinstance(value, (list, tuple)):
        return [snapshot(v) for v in value]
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if hasattr(value, "__dict__") and not callable(value):
        return (type(value).__name__, {k: snapshot(v) for k, v in vars(value).items()})
    return value


def same(a, b) -> bool:
    """Bit-identical snapshots (NaN equals NaN: tensors are compared as raw bytes)."""
    if isinstance(a, tuple) and a and a[0] == "tensor":
        return (isinstance(b, tuple) and b[:3] == a[:3]
                and torch.equal(a[3].contiguous().view(torch.uint8), b[3].contiguous().view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.mark.parametrize("mode,extra", [("hybrid", []), ("hybrid", ["optim.micro_batch_size=2"]), ("grpo", []),
                                        ("grpo", ["rollout.num_iterations=2"]), ("sft", []), ("dpo", [])])
def test_learn_changes_neither_the_batch_nor_the_gate(mode, extra):
    from wavalign.modality import ModalitySpec
    from wavalign.rewards.base import RewardResult

    config = TrainConfig.load(None, [f"mode={mode}", *extra])
    gate = AdaptiveGate(GateConfig())
    b = random_batch()
    b = replace(b, spec=ModalitySpec(vocab_size=16, text_ranges=((0, 8),), speech_ranges=((8, 16),)),
                reward=RewardResult(total=b.rewards.flatten().double(), components=b.rewards.flatten()[:, None].clone(),
                                    names=("judge",), missing={"judge": 0, "composite": 0}))
    if mode == "hybrid":
        b = decided(b, gate)
    if "rollout.num_iterations=2" in extra:
        b = replace(b, old_logprobs=torch.full(b.rows.ids.shape, -1.0))
    batch_before, gate_before = snapshot(b), snapshot(gate.state_dict())
    streamed = bool(extra)
    reference = IdLogprobs(seed=1) if mode == "dpo" else None
    for _ in range(2):  # inner epochs call learn on the same batch again
        loss, _ = learn(b, IdLogprobs(), config, reference, backward=(lambda t: t.backward()) if streamed else None)
        if not streamed:
            loss.backward()
    assert same(snapshot(b), batch_before), "a learn call changed the batch"
    assert same(snapshot(gate.state_dict()), gate_before), "a learn call changed the gate"
    with pytest.raises(Exception):  # and the batch cannot be changed by assignment
        b.rewards = None
