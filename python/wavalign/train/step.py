"""One training step as data: collect -> StepBatch -> learn.

    batch = collector.collect(examples, step=t, first_prompt=k)   # rollout, rewards, group stats
    loss, metrics = hybrid_step(batch, logprob_fn, gate, config)   # pure: no engine, no optimizer

The collect side runs the policy (RolloutEngine), splits responses into channels, scores them
(a CompositeReward, returning a RewardResult) and takes group statistics once. The learn
side is one pure function per mode with the signature

    (batch, logprob_fn, gate, config, ref_logprob_fn=None) -> (loss, metrics)

where `logprob_fn(rows) -> (logprobs [N, L] float32, types [N, L] int8)` scores ResponseRows
under the current policy (ref_logprob_fn under the frozen reference). A StepBatch can be built
by hand from plain tensors, so each mode's loss is testable without a model or a world.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from wavalign import ops
from wavalign.rewards.base import Completion, CompositeReward, RewardResult
from wavalign.rewards.completions import make_completions
from wavalign.rollout.engine import ModalitySampling, Rollout, RolloutEngine, SamplingParams
from wavalign.train.data import TrainExample, batch_columns
from wavalign.train.logprobs import ResponseRows
from wavalign.train.losses import dpo_loss, hybrid_loss, policy_gradient_loss, sft_loss
from wavalign.train.pairs import best_vs_worst, gold_vs_sampled, pair_scores

LogprobFn = Callable[[ResponseRows], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StepBatch:
    """Everything one step learns from, for this rank's B prompts (rows prompt-major: b * G + g).

    rows / rewards / reward / stats are None when the mode samples nothing (sft, offline DPO);
    gold holds the gold responses of the prompts that have one (None when none does).
    """

    examples: list[TrainExample]  # B prompts (ids, gold / rejected ids, reward columns)
    group_size: int  # G
    spec: object  # the model's ModalitySpec: types rows built while learning (DPO pairs)
    pad_id: int
    rows: ResponseRows | None = None  # [B * G] sampled responses: ids, types, lengths
    sampling_logprobs: torch.Tensor | None = None  # [B * G, L] float32 under the sampling distribution
    finish_reasons: list[str] = field(default_factory=list)  # [B * G]
    completions: list[Completion] = field(default_factory=list)  # [B * G] text channel, units (audio)
    rewards: torch.Tensor | None = None  # [B, G] float32, NaN = no reward
    reward: RewardResult | None = None  # components [B * G, K] with names, missing counts
    stats: ops.GroupStats | None = None  # advantages [B, G], per-group variance / max / flags
    gold: ResponseRows | None = None  # [M] gold responses, M <= B
    timings: dict[str, float] = field(default_factory=dict)  # seconds: rollout, reward


def gold_rows(examples: Sequence[TrainExample], spec, pad_id: int) -> ResponseRows | None:
    """The gold responses of the examples that carry one, typed by the spec."""
    gold = [(e.prompt_ids, e.response_ids) for e in examples if e.response_ids is not None]
    if not gold:
        return None
    return ResponseRows.from_lists([p for p, _ in gold], [r for _, r in gold], spec, pad_id)


def dpo_pair_source(config, examples: Sequence[TrainExample]) -> str:
    """dpo.pairs with 'auto' resolved: offline when the batch holds rejected responses."""
    source = config.dpo.pairs
    if source == "auto":
        source = "offline" if any(e.rejected_ids is not None for e in examples) else "rollout"
    return source


# ---------------------------------------------------------------------------- collect
class Collector:
    """Rollout -> completions -> rewards -> group statistics, for one rank's prompts.

    policy: the model the engine samples (eval mode during the rollout); gathered: a context
    manager factory that makes the full weights available while ranks decode (FSDP2), or None.
    format: the model's ResponseFormat; codec: a SpeechCodec for rewards that listen (None
    otherwise); prompt_text: example -> the request as a judge reads it.
    """

    def __init__(self, config, *, policy, spec, pad_id: int, format, reward_fn: CompositeReward | None,
                 prompt_text: Callable[[TrainExample], str], codec=None, gathered=None):
        self.config, self.policy, self.spec, self.pad_id = config, policy, spec, pad_id
        self.format, self.reward_fn, self.prompt_text = format, reward_fn, prompt_text
        self.codec = codec if reward_fn is not None and reward_fn.needs_audio else None
        self.gathered = gathered or nullcontext

    def sampling(self, seed: int) -> SamplingParams:
        r = self.config.rollout
        return SamplingParams(text=r.text_sampling, speech=r.speech_sampling, max_new_tokens=r.max_new_tokens,
                              seed=seed)

    def collect(self, examples: list[TrainExample], *, step: int, first_prompt: int) -> StepBatch:
        """step: optimizer steps done so far (seeds the rollout and keys the judge noise);
        first_prompt: global index of examples[0] in the step's global batch."""
        c = self.config
        G = c.rollout.group_size
        batch = StepBatch(examples=list(examples), group_size=G, spec=self.spec, pad_id=self.pad_id)
        if c.mode != "sft" and not (c.mode == "dpo" and dpo_pair_source(c, examples) == "offline"):
            t0 = time.perf_counter()
            rollout = self._rollout(examples, seed=c.run.seed * 1_000_003 + step, first_row=first_prompt * G)
            batch.rows = ResponseRows([p for p in rollout.prompt_ids for _ in range(G)], rollout.ids,
                                      rollout.lengths, rollout.token_types)
            batch.sampling_logprobs, batch.finish_reasons = rollout.logprobs, list(rollout.finish_reasons)
            batch.timings["rollout"] = time.perf_counter() - t0
            if c.mode != "dpo" or dpo_pair_source(c, examples) == "rollout":
                t0 = time.perf_counter()
                keys = [f"{step}:{first_prompt * G + row}" for row in range(len(batch.rows))]
                self._score(batch, keys)
                batch.timings["reward"] = time.perf_counter() - t0
                if c.mode in ("hybrid", "grpo"):
                    o = c.objective
                    batch.stats = ops.group_stats(batch.rewards, mode=o.advantage, std=o.advantage_std,
                                                  eps=o.advantage_eps)
        batch.gold = gold_rows(examples, self.spec, self.pad_id)
        return batch

    def _rollout(self, examples: list[TrainExample], *, seed: int, first_row: int) -> Rollout:
        self.policy.eval()
        engine = RolloutEngine(self.policy, self.spec, pad_id=self.pad_id)
        with self.gathered():  # FSDP2: ranks decode for different lengths
            return engine.generate([e.prompt_ids for e in examples], n=self.config.rollout.group_size,
                                   params=self.sampling(seed), first_row=first_row)

    def _score(self, batch: StepBatch, keys: list[str]) -> None:
        G = batch.group_size
        batch.completions = make_completions(self.format, batch.rows.responses(), self.codec)
        prompts = [self.prompt_text(e) for e in batch.examples for _ in range(G)]
        columns = batch_columns(batch.examples, G)
        columns["sample_key"] = keys
        batch.reward = self.reward_fn.score(prompts, batch.completions, **columns)
        batch.rewards = batch.reward.total.float().view(len(batch.examples), G)


def collect_metrics(batch: StepBatch) -> dict[str, float]:
    """Rollout and reward scalars of a batch (this rank's); {} when it sampled nothing."""
    if batch.rows is None or batch.rewards is None:
        return {}
    rewards = batch.rewards
    missing, total = int(torch.isnan(rewards).sum()), rewards.numel()
    lengths = batch.rows.lengths.float()
    types = batch.rows.types
    metrics = {"reward/mean": _nan_mean(rewards), "reward/missing_fraction": missing / max(total, 1),
               "rollout/length": float(lengths.mean()),
               "rollout/text_tokens": float((types == 0).sum()) / len(lengths),
               "rollout/speech_tokens": float((types == 1).sum()) / len(lengths),
               # mean -log p of the sampled tokens: an unbiased estimate of the sampling
               # distribution's entropy per token, by channel (nats)
               "rollout/text_entropy": _mean_where(-batch.sampling_logprobs, types == 0),
               "rollout/speech_entropy": _mean_where(-batch.sampling_logprobs, types == 1),
               "rollout/eos_fraction": sum(r == "eos" for r in batch.finish_reasons) / len(lengths)}
    metrics.update({f"reward/{name}": _nan_mean(values) for name, values in batch.reward.as_dict().items()})
    if batch.stats is not None:
        metrics.update({f"groups/{k}": v for k, v in batch.stats.summary().items()})
    return metrics


# ---------------------------------------------------------------------------- learn
def hybrid_step(batch: StepBatch, logprob_fn: LogprobFn, gate, config,
                ref_logprob_fn: LogprobFn | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """WavAlign: lambda * PG(rollouts, RL scope) + (1 - lambda) * SFT(gold, anchor scope).
    grpo mode: lambda = 1 and no anchor. Rollouts and gold rows go through one forward, stacked
    (as the public code does)."""
    c, o = config, config.objective
    metrics: dict[str, float] = {}
    if c.mode == "grpo":
        lam = 1.0
    else:
        gate_step = gate.step(batch.stats, sample_variance=o.advantage_std == "sample")
        lam = gate_step.lam
        metrics.update(gate_step.log_dict())
    use_sft = c.mode == "hybrid" and lam < 1.0 and batch.gold is not None
    rollouts = batch.rows
    n, width = len(rollouts), rollouts.ids.shape[1]  # the gold rows may be longer
    logp, types = logprob_fn(rollouts.cat(batch.gold, batch.pad_id) if use_sft else rollouts)
    ref_logp = None
    if ref_logprob_fn is not None:
        with torch.no_grad():
            ref_logp, _ = ref_logprob_fn(rollouts)
    rl, rl_stats = policy_gradient_loss(
        logp[:n, :width], batch.stats.advantages.flatten().to(logp.device), types[:n, :width], scope=o.rl_scope,
        type_weights=o.rl_type_weights, normalization=o.pg_normalization, ref_logprobs=ref_logp,
        kl_beta_text=o.kl_beta_text, kl_beta_speech=o.kl_beta_speech, empty_scope=o.empty_scope)
    metrics.update({f"rl/{k}": v for k, v in rl_stats.items() if k != "loss"})
    if use_sft:
        sft, sft_stats = sft_loss(logp[n:], types[n:], scope=o.sft_scope, type_weights=o.sft_type_weights,
                                  normalization=o.sft_normalization, empty_scope=o.empty_scope)
        metrics.update({f"sft/{k}": v for k, v in sft_stats.items() if k != "loss"})
    else:
        sft = torch.zeros((), device=logp.device)
    loss, mix = hybrid_loss(rl, sft, lam)
    metrics.update({"loss/total": mix["loss"], "loss/rl": mix["rl"], "loss/sft": mix["sft"] if use_sft else math.nan,
                    "gate/lambda": lam})
    return loss, metrics


def sft_step(batch: StepBatch, logprob_fn: LogprobFn, gate, config,
             ref_logprob_fn: LogprobFn | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Gold NLL only (continued SFT), over the anchor scope."""
    if batch.gold is None:
        raise ValueError("sft mode needs gold responses (response_* fields) in the training data")
    logp, types = logprob_fn(batch.gold)
    o = config.objective
    loss, stats = sft_loss(logp, types, scope=o.sft_scope, type_weights=o.sft_type_weights,
                           normalization=o.sft_normalization, empty_scope=o.empty_scope)
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


def dpo_step(batch: StepBatch, logprob_fn: LogprobFn, gate, config,
             ref_logprob_fn: LogprobFn | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Scoped DPO on pairs from rollouts (best vs worst), gold vs sampled, or offline records."""
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


LEARN_STEPS = {"hybrid": hybrid_step, "grpo": hybrid_step, "sft": sft_step, "dpo": dpo_step}


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


def _nan_mean(values: torch.Tensor) -> float:
    return _mean_where(values, ~torch.isnan(values))
