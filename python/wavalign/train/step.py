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
from wavalign.adapters import ModelAdapter, prompt_inputs_of
from wavalign.codes import PHASE_SPEECH
from wavalign.rewards.base import Completion, CompositeReward, RewardResult
from wavalign.rewards.completions import make_completions
from wavalign.rollout import make_sampler
from wavalign.rollout.engine import Rollout, SamplingParams
from wavalign.train.data import TrainExample, batch_columns
from wavalign.logprobs import ResponseRows
from wavalign.train.config import LOSS_TYPES as LOSS_NORMALIZATIONS
from wavalign.train.losses import dpo_loss, hybrid_loss, policy_gradient_loss, sft_loss, token_weights
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
    # Speech the codec could not decode for rewards that listen ({decode_requested, decode_failed});
    # those completions carry no audio, and judges that need it give None.
    decode_stats: dict[str, int] = field(default_factory=dict)
    # Filled before learning, by the trainer:
    world_size: int = 1  # ranks whose gradients are averaged
    global_pg_tokens: float | None = None  # loss_type dapo: RL normaliser tokens summed over ranks
    old_logprobs: torch.Tensor | None = None  # [B * G, L] behaviour log-probs (rollout.num_iterations > 1)
    gate_step: object | None = None  # the gate's decision for this batch (inner epochs share it)

    @staticmethod
    def merge(batches: Sequence["StepBatch"]) -> "StepBatch":
        """Several prompt batches of one optimizer step (gradient accumulation) as one batch."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]

        def rows_of(parts):
            parts = [p for p in parts if p is not None]
            if not parts:
                return None
            out = parts[0]
            for part in parts[1:]:
                out = out.cat(part, first.pad_id)
            return out

        def cat(values):
            return None if any(v is None for v in values) else torch.cat(values)

        rows = rows_of([b.rows for b in batches])
        sampling = None
        if rows is not None:
            width = rows.ids.shape[1]
            sampling = torch.cat([torch.nn.functional.pad(b.sampling_logprobs, (0, width - b.sampling_logprobs.shape[1]))
                                  for b in batches])
        stats = None
        if all(b.stats is not None for b in batches):
            stats = ops.GroupStats(*[torch.cat([getattr(b.stats, f) for b in batches]) for f in ops.GroupStats._fields])
        reward = None
        if all(b.reward is not None for b in batches):
            reward = RewardResult(total=torch.cat([b.reward.total for b in batches]),
                                  components=torch.cat([b.reward.components for b in batches]),
                                  names=first.reward.names,
                                  missing={k: sum(b.reward.missing[k] for b in batches) for k in first.reward.missing})
        timings = {k: sum(b.timings.get(k, 0.0) for b in batches) for k in first.timings}
        return StepBatch(examples=[e for b in batches for e in b.examples], group_size=first.group_size,
                         spec=first.spec, pad_id=first.pad_id, rows=rows, sampling_logprobs=sampling,
                         finish_reasons=[r for b in batches for r in b.finish_reasons],
                         completions=[c for b in batches for c in b.completions], rewards=cat([b.rewards for b in batches]),
                         reward=reward, stats=stats, gold=rows_of([b.gold for b in batches]), timings=timings,
                         decode_stats={k: sum(b.decode_stats.get(k, 0) for b in batches)
                                       for k in {k for b in batches for k in b.decode_stats}})


def gold_rows(examples: Sequence[TrainExample], spec, pad_id: int, extras: Sequence | None = None
              ) -> ResponseRows | None:
    """The gold responses of the examples that carry one, typed by the spec; extras: each
    example's extra forward inputs (wavalign.adapters), or None."""
    keep = [i for i, e in enumerate(examples) if e.response_ids is not None]
    if not keep:
        return None
    return ResponseRows.from_lists([examples[i].prompt_ids for i in keep], [examples[i].response_ids for i in keep],
                                   spec, pad_id, extras=None if extras is None else [extras[i] for i in keep])


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
                 prompt_text: Callable[[TrainExample], str], codec=None, gathered=None, adapter=None):
        self.config, self.policy, self.spec, self.pad_id = config, policy, spec, pad_id
        self.format, self.reward_fn, self.prompt_text = format, reward_fn, prompt_text
        self.codec = codec if reward_fn is not None and reward_fn.needs_audio else None
        self.gathered = gathered or nullcontext
        self.adapter = adapter or ModelAdapter()

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
        extras = prompt_inputs_of(self.adapter, examples)  # [B] extra forward inputs of each prompt
        if all(e is None for e in extras):  # ids only: the usual case
            extras = None
        if extras is not None and c.mode == "dpo":
            raise ValueError("this model's adapter gives prompts extra forward inputs, which DPO pairs do not carry "
                             "yet; use mode hybrid, grpo or sft")
        if c.mode != "sft" and not (c.mode == "dpo" and dpo_pair_source(c, examples) == "offline"):
            t0 = time.perf_counter()
            rollout = self._rollout(examples, seed=c.run.seed * 1_000_003 + step, first_row=first_prompt * G,
                                    extras=extras)
            batch.rows = ResponseRows([p for p in rollout.prompt_ids for _ in range(G)], rollout.ids,
                                      rollout.lengths, rollout.token_types,
                                      extras=None if extras is None else [e for e in extras for _ in range(G)])
            if c.scores_sampling_distribution:  # score each token as it was drawn
                text_t, speech_t = c.rollout.text_sampling.temperature, c.rollout.speech_sampling.temperature
                batch.rows.temperature = torch.where(rollout.phases == PHASE_SPEECH, speech_t, text_t).float()
                batch.rows.allowed_sets = rollout.allowed_sets
            batch.sampling_logprobs, batch.finish_reasons = rollout.logprobs, list(rollout.finish_reasons)
            batch.timings["rollout"] = time.perf_counter() - t0
            if c.mode != "dpo" or dpo_pair_source(c, examples) == "rollout":
                t0 = time.perf_counter()
                keys = [f"{step}:{first_prompt * G + row}" for row in range(len(batch.rows))]
                self._score(batch, keys)
                batch.timings["reward"] = time.perf_counter() - t0
                if c.mode in ("hybrid", "grpo"):
                    batch.stats = group_statistics(batch.rewards, c.objective)
        batch.gold = gold_rows(examples, self.spec, self.pad_id, extras)
        return batch

    def _rollout(self, examples: list[TrainExample], *, seed: int, first_row: int, extras=None) -> Rollout:
        self.policy.eval()
        r = self.config.rollout
        engine = make_sampler(r.backend, self.policy, self.spec, pad_id=self.pad_id, adapter=self.adapter,
                              kv_cache=r.kv_cache, cuda_graphs=r.cuda_graphs)
        with self.gathered():  # FSDP2: ranks decode for different lengths
            return engine.generate([e.prompt_ids for e in examples], n=self.config.rollout.group_size,
                                   params=self.sampling(seed), first_row=first_row, extras=extras)

    def _score(self, batch: StepBatch, keys: list[str]) -> None:
        G = batch.group_size
        batch.completions = make_completions(self.format, batch.rows.responses(), self.codec,
                                             stats=batch.decode_stats)
        prompts = [self.prompt_text(e) for e in batch.examples for _ in range(G)]
        columns = batch_columns(batch.examples, G)
        columns["sample_key"] = keys
        batch.reward = self.reward_fn.score(prompts, batch.completions, **columns)
        batch.rewards = batch.reward.total.float().view(len(batch.examples), G)


def group_statistics(rewards: torch.Tensor, o, batch_std: float | None = None) -> ops.GroupStats:
    """GroupStats under objective.advantage / scale_rewards. scale_rewards 'none' is the
    unscaled r - group mean; 'batch' divides it by the std of the whole batch (batch_std: the
    global one, when the trainer has reduced it over ranks; else this batch's)."""
    if o.scale_rewards == "group":
        return ops.group_stats(rewards, mode=o.advantage, std=o.advantage_std, eps=o.advantage_eps)
    stats = ops.group_stats(rewards, mode="dr_grpo", std=o.advantage_std, eps=o.advantage_eps)
    if o.scale_rewards == "none":
        return stats
    if batch_std is None:
        valid = rewards[~torch.isnan(rewards)].double()
        batch_std = float(valid.std(unbiased=o.advantage_std == "sample")) if valid.numel() > 1 else 0.0
    return stats._replace(advantages=(stats.advantages / (batch_std + o.advantage_eps)).float())


def with_global_quantities(batch: StepBatch, config, world_size: int, with_kl: bool,
                           sum_over_ranks: Callable[[list[float]], list[float]]) -> StepBatch:
    """The few whole-job numbers learning needs, filled into the batch: the rank count, the
    global batch's reward std (scale_rewards 'batch') and the RL term's global token weight
    (loss_type 'dapo'). sum_over_ranks: the trainer's all-reduce (identity in one process)."""
    o = config.objective
    batch.world_size = world_size
    if batch.stats is not None and o.scale_rewards == "batch":
        valid = batch.rewards[~torch.isnan(batch.rewards)].double()
        n, total, squares = sum_over_ranks([float(valid.numel()), float(valid.sum()), float((valid ** 2).sum())])
        mean = total / max(n, 1.0)
        variance = max(squares / max(n, 1.0) - mean ** 2, 0.0)
        if o.advantage_std == "sample" and n > 1:
            variance *= n / (n - 1)
        batch.stats = group_statistics(batch.rewards, o, batch_std=math.sqrt(variance))
    if batch.rows is not None and o.loss_type == "dapo":
        mask = truncated_rows(batch).logical_not() if o.mask_truncated_completions else None
        batch.global_pg_tokens = sum_over_ranks([pg_weight_total(batch.rows.types, o, mask, with_kl)])[0]
    return batch


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
    if batch.decode_stats.get("decode_failed"):  # logged when it happens (the world's codec never fails)
        metrics["audio/decode_failed"] = float(batch.decode_stats["decode_failed"])
    if batch.stats is not None:
        metrics.update({f"groups/{k}": v for k, v in batch.stats.summary().items()})
    return metrics


# ---------------------------------------------------------------------------- learn
def truncated_rows(batch: StepBatch) -> torch.Tensor:
    """[B * G] bool: rollouts that ran out of budget (finish reason 'length')."""
    return torch.tensor([r == "length" for r in batch.finish_reasons], dtype=torch.bool)


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


def pg_weight_total(types: torch.Tensor, o, sequence_mask: torch.Tensor | None, with_kl: bool) -> float:
    """Sum of the RL term's token weights (its scope, and KL tokens when a KL beta is on)."""
    if sequence_mask is not None:
        types = torch.where(sequence_mask[:, None], types, torch.full_like(types, -1))
    weights = token_weights(types, o.rl_scope, o.rl_type_weights)
    if with_kl and (o.kl_beta_text > 0 or o.kl_beta_speech > 0):
        beta = torch.tensor((0.0, o.kl_beta_text, o.kl_beta_speech))[types.long() + 1]
        weights = torch.maximum(weights, (beta > 0).float())
    return float(weights.sum())


def hybrid_step(batch: StepBatch, logprob_fn: LogprobFn, gate, config, ref_logprob_fn: LogprobFn | None = None,
                backward: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
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
        if batch.gate_step is None:  # PPO inner epochs reuse the first epoch's decision
            batch.gate_step = gate.step(batch.stats, sample_variance=o.advantage_std == "sample")
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
            metrics["rl/truncated_masked"] = float((~mask).sum())
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


def sft_step(batch: StepBatch, logprob_fn: LogprobFn, gate, config, ref_logprob_fn: LogprobFn | None = None,
             backward: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Gold NLL only (continued SFT), over the anchor scope. backward: as in hybrid_step
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


def dpo_step(batch: StepBatch, logprob_fn: LogprobFn, gate, config, ref_logprob_fn: LogprobFn | None = None,
             backward: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
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


LEARN_STEPS = {"hybrid": hybrid_step, "grpo": hybrid_step, "sft": sft_step, "dpo": dpo_step}


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


def _nan_mean(values: torch.Tensor) -> float:
    return _mean_where(values, ~torch.isnan(values))
