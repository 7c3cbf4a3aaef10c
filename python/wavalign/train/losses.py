"""The WavAlign objective as pure functions: tensors in, ``(loss, stats)`` out.

Token types follow ModalitySpec: ``token_types [N, T] int8`` with -1 = not a response
token (prompt, padding), 0 = text (semantic), 1 = speech (acoustic). A *scope* turns types
into per-token weights: "text" -> (1, 0), "speech" -> (0, 1), "all" -> (1, 1), or explicit
``type_weights=(w_text, w_speech)``. A sequence with no token of positive weight is an
explicit case: ``empty_scope="skip"`` (it contributes 0, is counted in stats) or "error" —
never a silent fall back to all tokens (PAPER.md §5).

Assembling WavAlign for one batch of B prompts x G samples (N = B * G rows)::

    stats = ops.group_stats(rewards)                        # rewards [B, G], NaN = no reward
    lam = gate.step(rewards).lam                            # AdaptiveGate
    logp = selected_logprobs(hidden, lm_head.weight, ids)   # [N, T] rollout tokens
    rl, rl_stats = policy_gradient_loss(logp, stats.advantages.flatten(), types, scope="text")
    gold_logp = selected_logprobs(gold_hidden, lm_head.weight, gold_ids)
    sft, sft_stats = sft_loss(gold_logp, gold_types, scope="all")
    loss, mix_stats = hybrid_loss(rl, sft, lam)             # lam * RL + (1 - lam) * SFT
    loss.backward()
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SCOPES = {"text": (1.0, 0.0), "speech": (0.0, 1.0), "all": (1.0, 1.0)}
PG_NORMALIZATIONS = ("sequence_mean", "token_mean", "constant")
SFT_NORMALIZATIONS = ("token_mean", "sequence_mean")
EMPTY_SCOPE = ("skip", "error")
DPO_LOSS_TYPES = ("sigmoid", "ipo")


def _choice(value: str, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def token_weights(token_types: torch.Tensor, scope: str = "all",
                  type_weights: Sequence[float] | None = None) -> torch.Tensor:
    """token_types [N, T] int8 -> weights [N, T] float32 (0 for type -1)."""
    _choice(scope, tuple(SCOPES), "scope")
    weights = SCOPES[scope] if type_weights is None else tuple(float(w) for w in type_weights)
    if len(weights) != 2 or any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"type_weights must be two finite weights >= 0 (text, speech), got {type_weights!r}")
    if token_types.numel() and (int(token_types.min()) < -1 or int(token_types.max()) > 1):
        raise ValueError("token_types must hold -1 (not a response token), 0 (text) or 1 (speech)")
    table = torch.tensor((0.0,) + weights, dtype=torch.float32, device=token_types.device)
    return table[token_types.long() + 1]


def _empty_rows(weights: torch.Tensor, empty_scope: str, what: str) -> torch.Tensor:
    """[N] bool rows with no positive weight; raises under empty_scope='error'."""
    _choice(empty_scope, EMPTY_SCOPE, "empty_scope")
    empty = weights.sum(dim=1) <= 0
    if empty_scope == "error" and bool(empty.any()):
        rows = torch.nonzero(empty).flatten().tolist()
        raise ValueError(f"{what}: rows {rows[:10]} have no token in scope (empty_scope='error')")
    return empty


def _same_shape(reference: torch.Tensor, **tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.shape != reference.shape:
            raise ValueError(f"{name} must have shape {list(reference.shape)}, got {list(tensor.shape)}")


def _masked(logprobs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # Positions outside `keep` become 0 BEFORE any arithmetic, so -inf / NaN log-probs at
    # padding can never reach the loss or a gradient (0 * -inf would be NaN).
    return torch.where(keep, logprobs.float(), torch.zeros((), dtype=torch.float32, device=logprobs.device))


def _zero_with_grad(*tensors: torch.Tensor) -> torch.Tensor:
    # A zero that still connects to the graph, so backward() works on an all-skipped batch.
    return sum(t.sum() * 0.0 for t in tensors)


def policy_gradient_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    token_types: torch.Tensor,
    *,
    scope: str = "text",
    type_weights: Sequence[float] | None = None,
    normalization: str = "sequence_mean",
    constant_normalizer: float | None = None,
    old_logprobs: torch.Tensor | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_beta_text: float = 0.0,
    kl_beta_speech: float = 0.0,
    empty_scope: str = "skip",
    sequence_mask: torch.Tensor | None = None,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scoped policy-gradient loss (the RL term of WavAlign, PAPER.md §5).

    Args:
        logprobs: [N, T] log pi(y_t) of the sampled tokens (with grad).
        advantages: [N] one per sequence (e.g. ops.group_stats(...).advantages.flatten()).
        token_types: [N, T] int8 (-1 / 0 text / 1 speech).
        scope, type_weights: which tokens the RL term updates (default: text only).
        normalization: "sequence_mean" (official: weighted token mean per sequence, then mean
            over all N sequences, empty ones counting 0), "token_mean" (over all weighted
            tokens of the batch), "constant" (Dr.GRPO: sum / constant_normalizer).
        old_logprobs: [N, T] behaviour log-probs for PPO-style clipping over several inner
            epochs; None = on-policy (ratio 1, gradient A * grad log pi).
        ref_logprobs: [N, T] reference-policy log-probs for the k3 KL penalty, applied to every
            response token with kl_beta_text on text and kl_beta_speech on speech tokens.
        empty_scope: "skip" or "error" for sequences without in-scope tokens.
        sequence_mask: [N] bool; False rows (e.g. truncated completions) contribute nothing
            and are not checked for an empty scope, but still count in sequence_mean's N.
        denominator: what the summed loss is divided by instead of this batch's own count
            (sequence_mean: N; token_mean: the weighted tokens; constant: constant_normalizer).
            A micro-batch passes the whole batch's value, so that the micro-batch losses add
            up to the one-batch loss.

    Returns:
        (loss, stats) with stats: loss, advantage_mean, scope_tokens, empty_scope_sequences,
        clip_fraction (with old_logprobs), kl_mean (with a KL beta > 0).
    """
    _choice(normalization, PG_NORMALIZATIONS, "normalization")
    _same_shape(logprobs, token_types=token_types, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape [{logprobs.shape[0]}], got {list(advantages.shape)}")
    if not bool(torch.isfinite(advantages).all()):
        raise ValueError("advantages must be finite (missing rewards get advantage 0 in ops.group_stats)")
    if (kl_beta_text > 0 or kl_beta_speech > 0) and ref_logprobs is None:
        raise ValueError("a KL beta > 0 needs ref_logprobs (the reference policy's log-probs)")
    if kl_beta_text < 0 or kl_beta_speech < 0:
        raise ValueError(f"KL betas must be >= 0, got text {kl_beta_text}, speech {kl_beta_speech}")
    if normalization == "constant" and not (constant_normalizer and constant_normalizer > 0):
        raise ValueError("normalization='constant' needs constant_normalizer > 0 (e.g. N * max response length)")
    if sequence_mask is not None:
        if sequence_mask.shape != logprobs.shape[:1]:
            raise ValueError(f"sequence_mask must have shape [{logprobs.shape[0]}], got {list(sequence_mask.shape)}")
        token_types = torch.where(sequence_mask.to(token_types.device)[:, None], token_types,
                                  torch.full_like(token_types, -1))
    weights = token_weights(token_types, scope, type_weights)  # [N, T]
    empty = _empty_rows(weights, empty_scope if sequence_mask is None else "skip", "policy_gradient_loss")
    if sequence_mask is not None and empty_scope == "error":
        _empty_rows(weights[sequence_mask.to(weights.device)], "error", "policy_gradient_loss")
    adv = advantages.detach().float().unsqueeze(1)  # [N, 1]
    responses = token_types >= 0
    logprobs = _masked(logprobs, responses)
    if old_logprobs is not None:
        old_logprobs = _masked(old_logprobs, responses)
    if ref_logprobs is not None:
        ref_logprobs = _masked(ref_logprobs, responses)

    stats: dict[str, torch.Tensor] = {}  # 0-d tensors: read once per step, at logging (no host sync here)
    if old_logprobs is None:
        ratio = torch.exp(logprobs - logprobs.detach())  # value 1, gradient d log pi
        objective = ratio * adv
    else:
        ratio = torch.exp(logprobs - old_logprobs.detach().float())
        clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
        objective = torch.minimum(ratio * adv, clipped * adv)
        in_scope = weights > 0
        was_clipped = (ratio * adv > clipped * adv) & in_scope
        # counts divided in float64, as exact as a division of Python ints
        stats["clip_fraction"] = was_clipped.sum().double() / in_scope.sum().clamp(min=1).double()
        for kind, name in ((0, "text"), (1, "speech")):  # per modality: which channel the clip binds
            of_kind = in_scope & (token_types == kind)
            # NaN (0 / 0) when the batch has no in-scope token of this kind
            stats[f"clip_fraction_{name}"] = (was_clipped & of_kind).sum().double() / of_kind.sum().double()
    token_loss = -objective * weights  # [N, T]

    if ref_logprobs is not None and (kl_beta_text > 0 or kl_beta_speech > 0):
        delta = ref_logprobs.detach().float() - logprobs
        k3 = torch.exp(delta) - delta - 1.0  # >= 0, unbiased for KL(pi || ref)
        beta = torch.tensor((0.0, kl_beta_text, kl_beta_speech), device=logprobs.device)[token_types.long() + 1]
        token_loss = token_loss + beta * k3
        stats["kl_mean"] = torch.where(responses.any(), k3.detach()[responses].mean(), 0.0)
        kl_weights = (beta > 0).float()
    else:
        kl_weights = torch.zeros_like(weights)

    # The normaliser counts the RL scope and, where a KL beta is on, the KL tokens too.
    norm_weights = torch.maximum(weights, kl_weights)
    if normalization == "sequence_mean":
        per_sequence = token_loss.sum(dim=1) / norm_weights.sum(dim=1).clamp(min=1e-12)
        per_sequence = torch.where(norm_weights.sum(dim=1) > 0, per_sequence, torch.zeros_like(per_sequence))
        if denominator is not None:
            loss = per_sequence.sum() / float(denominator)
        else:
            loss = per_sequence.mean() if per_sequence.numel() else _zero_with_grad(logprobs)
    elif normalization == "token_mean":
        total = norm_weights.sum() if denominator is None else torch.tensor(float(denominator))
        loss = token_loss.sum() / total if float(total) > 0 else _zero_with_grad(logprobs)
    else:
        loss = token_loss.sum() / float(constant_normalizer if denominator is None else denominator)

    stats.update(
        loss=loss.detach(),
        advantage_mean=advantages.detach().float().mean() if advantages.numel() else torch.zeros(()),
        scope_tokens=(weights > 0).sum(),
        empty_scope_sequences=empty.sum(),
    )
    return loss, stats


def sft_loss(
    logprobs: torch.Tensor,
    token_types: torch.Tensor,
    *,
    scope: str = "all",
    type_weights: Sequence[float] | None = None,
    normalization: str = "token_mean",
    empty_scope: str = "skip",
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Acoustic anchoring: NLL of gold responses over the anchor scope (PAPER.md §6).

    logprobs: [N, T] log pi(y*_t) of gold tokens; token_types: [N, T] int8. Default scope
    "all" follows the public launch script. "token_mean" averages over every in-scope token
    of the batch; "sequence_mean" averages per sequence first. `denominator` replaces this
    batch's own count (in-scope tokens, or non-empty sequences), as for policy_gradient_loss.
    """
    _choice(normalization, SFT_NORMALIZATIONS, "normalization")
    _same_shape(logprobs, token_types=token_types)
    weights = token_weights(token_types, scope, type_weights)
    empty = _empty_rows(weights, empty_scope, "sft_loss")
    nll = -_masked(logprobs, token_types >= 0)
    if float(weights.sum()) == 0.0:
        loss = _zero_with_grad(logprobs)
    elif normalization == "token_mean":
        loss = (nll * weights).sum() / (weights.sum() if denominator is None else float(denominator))
    else:
        per_sequence = (nll * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-12)
        loss = per_sequence[~empty].mean() if denominator is None else per_sequence[~empty].sum() / float(denominator)

    def modality_nll(kind: int) -> torch.Tensor:  # NaN when no token is of this kind
        return nll.detach()[token_types == kind].mean()

    return loss, {  # 0-d tensors: read once per step, at logging
        "loss": loss.detach(),
        "tokens": (weights > 0).sum(),
        "text_nll": modality_nll(0),
        "speech_nll": modality_nll(1),
        "empty_scope_sequences": empty.sum(),
    }


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_types: torch.Tensor,
    rejected_types: torch.Tensor,
    *,
    scope: str = "text",
    type_weights: Sequence[float] | None = None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    empty_scope: str = "skip",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO on preference pairs with log-probs summed over a token scope (PAPER.md §8).

    policy_* / ref_*: [N, Tc] for chosen and [N, Tr] for rejected; *_types alike.
    sigmoid: -(1 - ls) log sigma(m) - ls log sigma(-m), m = beta * (Δchosen - Δrejected);
    ipo: (Δchosen - Δrejected - 1 / (2 beta))^2. Pairs whose chosen or rejected side has no
    in-scope token are skipped and counted.
    """
    _choice(loss_type, DPO_LOSS_TYPES, "loss_type")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type == "ipo":
        raise ValueError("label_smoothing applies to the sigmoid loss only, not ipo")
    _same_shape(policy_chosen, ref_chosen=ref_chosen, chosen_types=chosen_types)
    _same_shape(policy_rejected, ref_rejected=ref_rejected, rejected_types=rejected_types)
    if policy_chosen.shape[0] != policy_rejected.shape[0]:
        raise ValueError(f"chosen and rejected must hold the same number of pairs, got "
                         f"{policy_chosen.shape[0]} and {policy_rejected.shape[0]}")
    w_chosen = token_weights(chosen_types, scope, type_weights)
    w_rejected = token_weights(rejected_types, scope, type_weights)
    skipped = _empty_rows(w_chosen, empty_scope, "dpo_loss (chosen)") | _empty_rows(
        w_rejected, empty_scope, "dpo_loss (rejected)")
    used = ~skipped

    def summed(logp, w):
        return (_masked(logp, w > 0) * w).sum(dim=1)

    chosen_logratio = summed(policy_chosen, w_chosen) - summed(ref_chosen, w_chosen).detach()
    rejected_logratio = summed(policy_rejected, w_rejected) - summed(ref_rejected, w_rejected).detach()
    difference = chosen_logratio - rejected_logratio  # [N]
    if loss_type == "sigmoid":
        per_pair = (-(1 - label_smoothing) * F.logsigmoid(beta * difference)
                    - label_smoothing * F.logsigmoid(-beta * difference))
    else:
        per_pair = (difference - 1.0 / (2.0 * beta)) ** 2
    if bool(used.any()):
        loss = per_pair[used].mean()
    else:
        loss = _zero_with_grad(policy_chosen, policy_rejected)
    chosen_reward = (beta * chosen_logratio).detach()[used]
    rejected_reward = (beta * rejected_logratio).detach()[used]

    def mean(x):  # NaN when no pair was used
        return x.mean()

    return loss, {  # 0-d tensors: read once per step, at logging
        "loss": loss.detach(),
        "chosen_reward": mean(chosen_reward),
        "rejected_reward": mean(rejected_reward),
        "margin": mean(chosen_reward - rejected_reward),
        "accuracy": mean((chosen_reward > rejected_reward).float()),
        "pairs_used": used.sum(),
        "pairs_skipped": skipped.sum(),
    }


def hybrid_loss(rl_loss: torch.Tensor, sft_loss: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """lam * L_RL + (1 - lam) * L_SFT, lam from the gate (or a fixed mix)."""
    if not (isinstance(lam, (int, float)) and 0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    loss = lam * rl_loss + (1.0 - lam) * sft_loss
    return loss, {
        "loss": loss.detach(),
        "lambda": float(lam),
        "rl": rl_loss.detach(),
        "sft": sft_loss.detach(),
    }
