"""WavAlign losses: hand-derived values, zero gradients outside the scope, explicit empty scopes."""

import math

import pytest
import torch

from wavalign.train.losses import dpo_loss, hybrid_loss, policy_gradient_loss, sft_loss, token_weights

# two sequences; -1 prompt/padding, 0 text, 1 speech
TYPES = torch.tensor([[-1, 0, 0, 1, 1], [-1, -1, 0, 1, -1]], dtype=torch.int8)
LOGP = [[-9.0, -0.5, -1.0, -2.0, -3.0], [-9.0, -9.0, -0.25, -4.0, -9.0]]


def logp_tensor():
    return torch.tensor(LOGP, requires_grad=True)


def test_token_weights_scopes():
    assert token_weights(TYPES, "text").tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]]
    assert token_weights(TYPES, "speech").tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]]
    assert token_weights(TYPES, "all", (1.0, 0.5)).tolist() == [[0, 1, 1, 0.5, 0.5], [0, 0, 1, 0.5, 0]]
    with pytest.raises(ValueError, match="scope must be one of"):
        token_weights(TYPES, "acoustic")
    with pytest.raises(ValueError, match="type_weights must be two finite weights"):
        token_weights(TYPES, "all", (1.0, -1.0))


def test_pg_sequence_mean_text_scope_value_and_gradient():
    logp = logp_tensor()
    adv = torch.tensor([2.0, -1.0])
    loss, stats = policy_gradient_loss(logp, adv, TYPES)
    # on-policy: per-token objective value = A; row 0: -(2 + 2) / 2 = -2; row 1: -(-1) / 1 = 1
    assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)
    loss.backward()
    # d/d logp = -A * w / n_scope(row) / N
    expected = [[0, -2 / 2 / 2, -2 / 2 / 2, 0, 0], [0, 0, 1 / 1 / 2, 0, 0]]
    torch.testing.assert_close(logp.grad, torch.tensor(expected))
    assert torch.all(logp.grad[TYPES != 0] == 0)  # speech and prompt positions: exactly zero
    assert stats["scope_tokens"] == 3 and stats["advantage_mean"] == pytest.approx(0.5)


def test_pg_token_mean_and_constant():
    adv = torch.tensor([2.0, -1.0])
    loss, _ = policy_gradient_loss(logp_tensor(), adv, TYPES, scope="all", normalization="token_mean")
    # all response tokens: row 0 has 4 (A=2), row 1 has 2 (A=-1): -(4*2 + 2*(-1)) / 6
    assert loss.item() == pytest.approx(-(8 - 2) / 6)
    loss, _ = policy_gradient_loss(logp_tensor(), adv, TYPES, scope="all", normalization="constant",
                                   constant_normalizer=10.0)
    assert loss.item() == pytest.approx(-(8 - 2) / 10)
    with pytest.raises(ValueError, match="needs constant_normalizer > 0"):
        policy_gradient_loss(logp_tensor(), adv, TYPES, normalization="constant")


def test_pg_ppo_clipping_hand_derived():
    logp = torch.tensor([[0.0, math.log(1.5), math.log(0.5)]], requires_grad=True)
    old = torch.zeros(1, 3)
    types = torch.tensor([[0, 0, 0]], dtype=torch.int8)
    loss, stats = policy_gradient_loss(logp, torch.tensor([1.0]), types, old_logprobs=old)
    # A = 1: ratios 1, 1.5 (clipped to 1.2, no gradient), 0.5 (min keeps 0.5, gradient flows)
    assert loss.item() == pytest.approx(-(1.0 + 1.2 + 0.5) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0 / 3, 0.0, -0.5 / 3]]))
    assert stats["clip_fraction"] == pytest.approx(1 / 3)


def test_pg_k3_kl_per_modality_beta():
    logp = torch.zeros(1, 3, requires_grad=True)
    ref = torch.tensor([[math.log(2.0), math.log(2.0), 0.0]])
    types = torch.tensor([[0, 1, -1]], dtype=torch.int8)
    loss, stats = policy_gradient_loss(logp, torch.tensor([0.0]), types, scope="text", ref_logprobs=ref,
                                       kl_beta_text=0.1, kl_beta_speech=0.5)
    k3 = 2.0 - math.log(2.0) - 1.0  # exp(d) - d - 1 with d = log 2
    # sequence_mean over the text scope plus the speech token that carries a KL beta
    assert loss.item() == pytest.approx((0.1 * k3 + 0.5 * k3) / 2)
    assert stats["kl_mean"] == pytest.approx(k3)


def test_pg_empty_scope_skip_and_error():
    types = torch.tensor([[0, 1], [1, 1]], dtype=torch.int8)  # row 1 has no text token
    logp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    loss, stats = policy_gradient_loss(logp, torch.tensor([1.0, 5.0]), types)
    assert loss.item() == pytest.approx((-1.0 + 0.0) / 2)  # the empty row counts as 0 in the mean
    assert stats["empty_scope_sequences"] == 1
    loss.backward()
    assert torch.all(logp.grad[1] == 0)
    with pytest.raises(ValueError, match=r"rows \[1\] have no token in scope"):
        policy_gradient_loss(logp, torch.tensor([1.0, 5.0]), types, empty_scope="error")


def test_pg_bad_input():
    with pytest.raises(ValueError, match="advantages must have shape \\[2\\]"):
        policy_gradient_loss(logp_tensor(), torch.zeros(3), TYPES)
    with pytest.raises(ValueError, match="advantages must be finite"):
        policy_gradient_loss(logp_tensor(), torch.tensor([float("nan"), 0.0]), TYPES)
    with pytest.raises(ValueError, match="normalization must be one of"):
        policy_gradient_loss(logp_tensor(), torch.zeros(2), TYPES, normalization="mean")
    with pytest.raises(ValueError, match=r"token_types must have shape \[2, 5\]"):
        policy_gradient_loss(logp_tensor(), torch.zeros(2), TYPES[:, :3])
    with pytest.raises(ValueError, match="a KL beta > 0 needs ref_logprobs"):
        policy_gradient_loss(logp_tensor(), torch.zeros(2), TYPES, kl_beta_text=0.1)


def test_sft_token_mean_sequence_mean_and_scopes():
    loss, stats = sft_loss(logp_tensor(), TYPES)  # scope all
    # in-scope logps: 0.5 1 2 3 | 0.25 4 -> mean NLL 10.75 / 6
    assert loss.item() == pytest.approx(10.75 / 6)
    assert stats["text_nll"] == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert stats["speech_nll"] == pytest.approx((2 + 3 + 4) / 3)
    loss, _ = sft_loss(logp_tensor(), TYPES, normalization="sequence_mean")
    assert loss.item() == pytest.approx((6.5 / 4 + 4.25 / 2) / 2)
    logp = logp_tensor()
    loss, _ = sft_loss(logp, TYPES, scope="speech")
    assert loss.item() == pytest.approx(9.0 / 3)
    loss.backward()
    assert torch.all(logp.grad[TYPES != 1] == 0)


def test_sft_all_out_of_scope_is_a_zero_with_grad():
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, stats = sft_loss(logp, torch.tensor([[0, -1]], dtype=torch.int8), scope="speech")
    assert loss.item() == 0.0 and stats["tokens"] == 0 and stats["empty_scope_sequences"] == 1
    loss.backward()
    assert torch.all(logp.grad == 0)


def _pairs():
    chosen = torch.tensor([[-1.0, -2.0, -5.0]], requires_grad=True)
    rejected = torch.tensor([[-3.0, -1.0]], requires_grad=True)
    ref_chosen = torch.tensor([[-1.5, -2.0, -1.0]])
    ref_rejected = torch.tensor([[-2.0, -1.0]])
    chosen_types = torch.tensor([[0, 0, 1]], dtype=torch.int8)
    rejected_types = torch.tensor([[0, 1]], dtype=torch.int8)
    return chosen, rejected, ref_chosen, ref_rejected, chosen_types, rejected_types


def test_dpo_sigmoid_hand_derived_text_scope():
    chosen, rejected, rc, rr, ct, rt = _pairs()
    loss, stats = dpo_loss(chosen, rejected, rc, rr, ct, rt, beta=0.5)
    # text scope: chosen (-1 - 2) - (-1.5 - 2) = 0.5; rejected -3 - (-2) = -1; difference 1.5
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 1.5))))
    assert stats["chosen_reward"] == pytest.approx(0.25) and stats["rejected_reward"] == pytest.approx(-0.5)
    assert stats["margin"] == pytest.approx(0.75) and stats["accuracy"] == 1.0
    loss.backward()
    assert chosen.grad[0, 2] == 0 and rejected.grad[0, 1] == 0  # speech tokens untouched


def test_dpo_ipo_and_label_smoothing():
    chosen, rejected, rc, rr, ct, rt = _pairs()
    loss, _ = dpo_loss(chosen, rejected, rc, rr, ct, rt, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx((1.5 - 1.0) ** 2)
    loss, _ = dpo_loss(chosen, rejected, rc, rr, ct, rt, beta=0.5, label_smoothing=0.1)
    m = 0.75
    expected = -0.9 * math.log(1 / (1 + math.exp(-m))) - 0.1 * math.log(1 / (1 + math.exp(m)))
    assert loss.item() == pytest.approx(expected)


def test_dpo_skips_pairs_without_scope_tokens():
    chosen, rejected, rc, rr, ct, rt = _pairs()
    loss, stats = dpo_loss(chosen, rejected, rc, rr, ct, rt, scope="text", type_weights=(0.0, 0.0))
    assert stats["pairs_skipped"] == 1 and stats["pairs_used"] == 0 and loss.item() == 0.0
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(chosen, rejected, rc, rr, ct, rt, loss_type="hinge")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(chosen, rejected, rc, rr, ct, rt, beta=0.0)


def test_hybrid_mix():
    rl, sft = torch.tensor(2.0, requires_grad=True), torch.tensor(4.0, requires_grad=True)
    loss, stats = hybrid_loss(rl, sft, 0.25)
    assert loss.item() == pytest.approx(0.25 * 2 + 0.75 * 4)
    loss.backward()
    assert (rl.grad.item(), sft.grad.item()) == (0.25, 0.75)
    assert stats["lambda"] == 0.25
    with pytest.raises(ValueError, match=r"lam must be a number in \[0, 1\]"):
        hybrid_loss(rl, sft, 1.5)


def test_docstring_recipe_runs_end_to_end():
    # The assembly shown in losses.py's docstring, on a tiny random LM head.
    from wavalign import ops
    from wavalign.train.gate import AdaptiveGate
    from wavalign.logprobs import selected_logprobs

    g = torch.Generator().manual_seed(0)
    b, group, t, hidden_size, vocab = 2, 3, 5, 8, 20
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(b * group, t, hidden_size, generator=g)
    ids = torch.randint(0, vocab, (b * group, t), generator=g)
    types = torch.randint(0, 2, (b * group, t), generator=g).to(torch.int8)
    rewards = torch.tensor([[1.0, 4.0, float("nan")], [2.0, 5.0, 3.0]])
    stats = ops.group_stats(rewards)
    lam = AdaptiveGate().step(rewards).lam
    rl, _ = policy_gradient_loss(selected_logprobs(hidden, head.weight, ids), stats.advantages.flatten(), types)
    sft, _ = sft_loss(selected_logprobs(hidden[:b], head.weight, ids[:b]), types[:b])
    loss, mix = hybrid_loss(rl, sft, lam)
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert 0 < mix["lambda"] < 0.8


def test_infinite_logprobs_at_padding_never_reach_loss_or_gradient():
    inf = float("-inf")
    logp = torch.tensor([[inf, -0.5, -1.0, inf]], requires_grad=True)
    types = torch.tensor([[-1, 0, 1, -1]], dtype=torch.int8)
    rl, _ = policy_gradient_loss(logp, torch.tensor([1.0]), types, scope="text",
                                 old_logprobs=logp.detach(), ref_logprobs=logp.detach(), kl_beta_speech=0.1)
    sft, _ = sft_loss(logp, types)
    dpo, _ = dpo_loss(logp, logp, logp.detach(), logp.detach(), types, types, scope="all")
    total = rl + sft + dpo
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 0] == 0 and logp.grad[0, 3] == 0
