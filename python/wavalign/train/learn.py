"""The learn side of a step: one pure function per mode, batch in, (loss, stats) out.

    loss, stats = learn(batch, logprob_fn, config, ref_logprob_fn)

`logprob_fn(rows) -> (logprobs [N, L] float32, types [N, L] int8)` scores ResponseRows under the
current policy (ref_logprob_fn under the frozen reference). A learn function never calls the
rollout engine, never touches the gate (its decision for the batch is batch.gate_step, taken by
the collector) and never changes the batch, so PPO inner epochs call it again on the same batch.
Its stats hold the loss terms and diagnostics of the step; the trainer turns them into numbers
once, when it logs. A StepBatch can be built by hand from plain tensors, so each mode's loss is
testable without a model or a world (PAPER.md §3-§7: the math).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from wavalign.logprobs import ResponseRows
from wavalign.train.collect import StepBatch, dpo_pair_source, pg_weight_total, truncated_rows
from wavalign.train.config import LOSS_TYPES as LOSS_NORMALIZATIONS
from wavalign.train.losses import dpo_loss, hybrid_loss, policy_gradient_loss, sft_loss, token_weights
from wavalign.train.pairs import best_vs_worst, gold_vs_sampled, pair_scores

LogprobFn = Callable[[ResponseRows], tuple[torch.Tensor, torch.Tensor]]
#: backward(loss share): runs backward on one micro-batch's share of the loss as soon as it is formed
Backward = Callable[[torch.Tensor], None]


def pg_denominator(batch: StepBatch, config, sequence_mask: torch.Tensor | None, with_kl: bool) -> float:
    """What the whole batch's RL loss is divided by, under objective.loss_type (so that
    micro-batches, which each see a part of the batch, add up to the one-batch loss)."""
    o, rows = config.objective, batch.rows
    if o.loss_type == "grpo":
        return float(len(rows))
    if o.loss_type == "dr_grpo":
        return float(len(rows) * config.rollout.max_new_tokens)
    if o.loss_type == "dapo" and batch.global_pg_tokens is not None:
        # DDP averages gradients over ranks: dividing by (global tokens / ranks) makes the
        # averaged gradient the gradient of the global token mean.
        return max(batch.global_pg_tokens, 1.0) / batch.world_size
    return max(pg_weight_total(rows.types, o, sequence_mask, with_kl), 1e-12)


def learn_hybrid(batch: StepBatch, logprob_fn: LogprobFn, config, ref_logprob_fn: LogprobFn | None = None,
                 backward: Backward | None = None) -> tuple[torch.Tensor, dict]:
    """WavAlign: lambda * PG(rollouts, RL scope) + (1 - lambda) * SFT(gold, anchor scope).
    grpo mode: lambda = 1 and no anchor. Rollouts and gold rows go through one forward, stacked
    (as the public code does).

    backward: None -> one forward over every row, and the loss (with its graph) is returned.
    Given -> rows go through in micro-batches of optim.micro_batch_size (0: one), each
    micro-batch's share of the loss is handed to `backward` at once (its activations freed),
    and the returned loss is detached; the gradient equals the one-batch gradient.
    """
    c, o = config, config.objective
    metrics: dict[str, float] = {}
    if c.mode == "grpo":
        lam = 1.0
    else:
        if batch.gate_step is None:
            raise ValueError("hybrid learning needs the gate's decision for the batch (StepBatch.gate_step), "
                             "which Collector.collect_step takes")
        lam = batch.gate_step.lam
        metrics.update(batch.gate_step.log_dict())
    use_sft = c.mode == "hybrid" and lam < 1.0 and batch.gold is not None
    rollouts = batch.rows
    rows = rollouts.cat(batch.gold, batch.pad_id) if use_sft else rollouts
    n, width = len(rollouts), rollouts.ids.shape[1]  # the gold rows may be longer
    advantages = batch.stats.advantages.flatten()
    mask = truncated_rows(batch).logical_not() if o.mask_truncated_completions else None
    clip = None
    if batch.old_logprobs is not None:  # PPO inner epochs: ratios against the behaviour log-probs
        clip = {"clip_eps_low": o.epsilon, "clip_eps_high": o.epsilon if o.epsilon_high is None else o.epsilon_high}
    has_kl = ref_logprob_fn is not None and (o.kl_beta_text > 0 or o.kl_beta_speech > 0)
    pg_total = pg_denominator(batch, c, mask, has_kl)  # the whole batch's RL normaliser
    pg_kwargs = dict(scope=o.rl_scope, type_weights=o.rl_type_weights, normalization=LOSS_NORMALIZATIONS[o.loss_type],
                     kl_beta_text=o.kl_beta_text, kl_beta_speech=o.kl_beta_speech, empty_scope=o.empty_scope)
    if pg_kwargs["normalization"] == "constant":  # dr_grpo, dapo
        pg_kwargs["constant_normalizer"] = pg_total
    sft_kwargs = dict(scope=o.sft_scope, type_weights=o.sft_type_weights, normalization=o.sft_normalization,
                      empty_scope=o.empty_scope)

    def rl_loss(logp, types, ref_logp, first: int, share: bool = False):
        """RL term of rollout rows first.. (as many as logp has), with the given log-probs;
        share: a micro-batch's part, divided by the whole batch's normaliser."""
        rows_here = slice(first, first + logp.shape[0])
        extra = dict(clip or {})
        if share:
            extra["denominator"] = pg_total
        if clip is not None:
            extra["old_logprobs"] = batch.old_logprobs[rows_here, :logp.shape[1]].to(logp.device)
        if ref_logp is not None:  # a micro-batch's reference may be narrower than its gold-widened rows
            ref_logp = torch.nn.functional.pad(ref_logp[:, :logp.shape[1]], (0, logp.shape[1] - ref_logp.shape[1]))
        return policy_gradient_loss(logp, advantages[rows_here].to(logp.device), types, ref_logprobs=ref_logp,
                                    sequence_mask=None if mask is None else mask[rows_here].to(logp.device),
                                    **pg_kwargs, **extra)

    def result(logp, types, ref_logp, keep_graph: bool):
        """The whole batch's loss and statistics from its log-probs [len(rows), L]."""
        rl, rl_stats = rl_loss(logp[:n, :width], types[:n, :width], ref_logp, 0)
        metrics.update({f"rl/{k}": v for k, v in rl_stats.items() if k != "loss"})
        if mask is not None:
            metrics["rl/truncated_masked"] = (~mask).sum()
        if use_sft:
            sft, sft_stats = sft_loss(logp[n:], types[n:], **sft_kwargs)
            metrics.update({f"sft/{k}": v for k, v in sft_stats.items() if k != "loss"})
        else:
            sft = torch.zeros((), device=logp.device)
        loss, mix = hybrid_loss(rl, sft, lam)
        metrics.update({"loss/total": mix["loss"], "loss/rl": mix["rl"],
                        "loss/sft": mix["sft"] if use_sft else math.nan, "gate/lambda": lam})
        return (loss if keep_graph else loss.detach()), metrics

    if backward is None:
        logp, types = logprob_fn(rows)
        ref_logp = None
        if ref_logprob_fn is not None:
            with torch.no_grad():
                ref_logp, _ = ref_logprob_fn(rollouts)
        return result(logp, types, ref_logp, keep_graph=True)

    # Micro-batches: each one's loss share, with the whole batch's normalisers, goes to backward.
    sft_total = sft_denominator(batch.gold.types, o) if use_sft else None
    size = c.optim.micro_batch_size or len(rows)
    pieces_logp, pieces_ref = [], []
    for start in range(0, len(rows), size):
        stop = min(start + size, len(rows))
        logp, types = logprob_fn(rows.select(range(start, stop)))
        term = 0.0
        ref_logp = None
        if start < n:  # rollout rows (the first n of the stack)
            if ref_logprob_fn is not None:
                with torch.no_grad():
                    ref_logp, _ = ref_logprob_fn(rollouts.select(range(start, min(stop, n))))
            k = min(stop, n) - start
            rl, _ = rl_loss(logp[:k, :width], types[:k, :width], ref_logp, start, share=True)
            term = lam * rl
        if use_sft and stop > n:  # gold rows
            g = max(start, n) - start
            sft, _ = sft_loss(logp[g:], types[g:], **sft_kwargs, denominator=sft_total)
            term = term + (1.0 - lam) * sft
        if isinstance(term, torch.Tensor):
            backward(term)
        pieces_logp.append(torch.nn.functional.pad(logp.detach(), (0, rows.ids.shape[1] - logp.shape[1])))
        if ref_logp is not None:
            pieces_ref.append(torch.nn.functional.pad(ref_logp, (0, width - ref_logp.shape[1])))
    # The reported losses and statistics: those of the whole batch, from the detached pieces.
    logp = torch.cat(pieces_logp)
    return result(logp, rows.types.to(logp.device), torch.cat(pieces_ref) if pieces_ref else None, keep_graph=False)


def sft_denominator(types: torch.Tensor, o) -> float:
    """What the whole gold batch's SFT loss is divided by: its in-scope token weight
    (token_mean) or its sequences with an in-scope token (sequence_mean)."""
    weights = token_weights(types, o.sft_scope, o.sft_type_weights)
    total = float(weights.sum()) if o.sft_normalization == "token_mean" else float((weights.sum(dim=1) > 0).sum())
    return max(total, 1e-12)


def learn_sft(batch: StepBatch, logprob_fn: LogprobFn, config, ref_logprob_fn: LogprobFn | None = None,
              backward: Backward | None = None) -> tuple[torch.Tensor, dict]:
    """Gold NLL only (continued SFT), over the anchor scope. backward: as in learn_hybrid
    (micro-batches of optim.micro_batch_size, normalised over the whole batch)."""
    if batch.gold is None:
        raise ValueError("sft mode needs gold responses (response_* fields) in the training data")
    o = config.objective
    kwargs = dict(scope=o.sft_scope, type_weights=o.sft_type_weights, normalization=o.sft_normalization,
                  empty_scope=o.empty_scope)
    if backward is None:
        logp, types = logprob_fn(batch.gold)
        loss, stats = sft_loss(logp, types, **kwargs)
    else:
        gold = batch.gold
        denominator = sft_denominator(gold.types, o)
        size = config.optim.micro_batch_size or len(gold)
        pieces = []
        for start in range(0, len(gold), size):
            part = gold.select(range(start, min(start + size, len(gold))))
            logp, types = logprob_fn(part)
            share, _ = sft_loss(logp, types, **kwargs, denominator=denominator)
            backward(share)
            pieces.append(torch.nn.functional.pad(logp.detach(), (0, gold.ids.shape[1] - logp.shape[1])))
        logp = torch.cat(pieces)
        loss, stats = sft_loss(logp, gold.types.to(logp.device), **kwargs)
        loss = loss.detach()
    return loss, {"loss/total": stats["loss"], "loss/sft": stats["loss"],
                  **{f"sft/{k}": v for k, v in stats.items() if k != "loss"}}


def dpo_pairs(batch: StepBatch, config) -> tuple[list, list, dict[str, float]]:
    """-> (chosen [(prompt, response)], rejected [(prompt, response)], pair statistics)."""
    examples, G = batch.examples, batch.group_size
    source = dpo_pair_source(config, examples)
    if source == "offline":
        both = [e for e in examples if e.response_ids and e.rejected_ids]
        return ([(e.prompt_ids, e.response_ids) for e in both], [(e.prompt_ids, e.rejected_ids) for e in both],
                {"pairs/built": float(len(both))})
    responses = batch.rows.responses()
    if source == "gold":
        groups = [responses[b * G:(b + 1) * G] for b in range(len(examples))]
        found, stats = gold_vs_sampled([e.response_ids for e in examples], groups)
        return ([(examples[b].prompt_ids, examples[b].response_ids) for b, _ in found],
                [(examples[b].prompt_ids, responses[b * G + g]) for b, g in found], stats)
    scores = pair_scores(batch.reward.as_dict(), batch.rewards.flatten(), config.dpo.pair_score)
    found, stats = best_vs_worst(scores.view(len(examples), G), config.dpo.min_gap)
    return ([(examples[b].prompt_ids, responses[b * G + w]) for b, w, _ in found],
            [(examples[b].prompt_ids, responses[b * G + l]) for b, _, l in found], stats)


def learn_dpo(batch: StepBatch, logprob_fn: LogprobFn, config, ref_logprob_fn: LogprobFn | None = None,
              backward: Backward | None = None) -> tuple[torch.Tensor, dict]:
    """Scoped DPO on pairs from rollouts (best vs worst), gold vs sampled, or offline records.
    backward: the loss goes to it (one forward over every pair; DPO is not micro-batched)."""
    loss, metrics = _dpo_loss(batch, logprob_fn, config, ref_logprob_fn)
    if backward is not None:
        backward(loss)
        loss = loss.detach()
    return loss, metrics


def _dpo_loss(batch: StepBatch, logprob_fn: LogprobFn, config, ref_logprob_fn: LogprobFn | None):
    chosen, rejected, metrics = dpo_pairs(batch, config)
    metrics = dict(metrics)
    if not chosen:  # no pair this step (on this rank): a zero loss that still runs backward for DDP
        first = batch.examples[0]
        logp, _ = logprob_fn(ResponseRows.from_lists([first.prompt_ids], [first.prompt_ids[-1:]], batch.spec,
                                                     batch.pad_id))
        metrics.update({"loss/total": 0.0, "loss/dpo": math.nan})
        return logp.sum() * 0.0, metrics
    k = len(chosen)
    rows = ResponseRows.from_lists([p for p, _ in chosen] + [p for p, _ in rejected],
                                   [r for _, r in chosen] + [r for _, r in rejected], batch.spec, batch.pad_id)
    logp, types = logprob_fn(rows)
    with torch.no_grad():
        ref, _ = ref_logprob_fn(rows)
    d = config.dpo
    loss, stats = dpo_loss(logp[:k], logp[k:], ref[:k], ref[k:], types[:k], types[k:], scope=d.scope,
                           type_weights=d.type_weights, beta=d.beta, loss_type=d.loss_type,
                           label_smoothing=d.label_smoothing, empty_scope=config.objective.empty_scope)
    metrics.update({"loss/total": stats["loss"], "loss/dpo": stats["loss"],
                    **{f"dpo/{key}": v for key, v in stats.items() if key != "loss"}})
    return loss, metrics


LEARN = {"hybrid": learn_hybrid, "grpo": learn_hybrid, "sft": learn_sft, "dpo": learn_dpo}


def learn(batch: StepBatch, logprob_fn: LogprobFn, config, ref_logprob_fn: LogprobFn | None = None,
          backward: Backward | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of config.mode on the batch. backward: None -> one forward over every row and
    the loss keeps its graph; given -> rows go through in micro-batches of
    optim.micro_batch_size, each share handed to backward at once, the returned loss detached."""
    return LEARN[config.mode](batch, logprob_fn, config, ref_logprob_fn, backward=backward)
