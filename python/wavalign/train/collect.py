"""The collect side of a step: prompts in, one complete, frozen StepBatch out.

    batch = collector.collect_step(parts, step=t, gate=gate, all_reduce=..., behaviour=...)

For each prompt batch of the step (gradient accumulation: several) the Collector runs the
policy (its rollout engine, built once per run), splits the responses into channels, scores
them (a CompositeReward, returning a RewardResult) and takes group statistics; then it merges
the parts, fills in the few whole-job quantities learning needs (rank count, the global reward
std, the RL term's global token weight), the gate's decision for the batch and, for PPO inner
epochs, the behaviour log-probs. Learning (train/learn.py) only reads the batch.

Evaluation goes through the same Collector: `rollout` with greedy parameters and `score` with
the evaluation judges (train/evaluator.py).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from wavalign import ops
from wavalign.adapters import ModelAdapter, prompt_inputs_of
from wavalign.codes import PHASE_SPEECH
from wavalign.data import TrainExample, batch_columns
from wavalign.logprobs import ResponseRows
from wavalign.rewards.base import Completion, CompositeReward, RewardResult
from wavalign.rewards.completions import make_completions
from wavalign.rollout import make_sampler
from wavalign.rollout.engine import Rollout, SamplingParams
from wavalign.train.losses import token_weights

#: sum_over_ranks(values) -> the values summed over every rank (identity in one process)
AllReduce = Callable[[list[float]], list[float]]


class JudgeFailureError(RuntimeError):
    """Too many samples of a step got no reward: the judge is failing."""


@dataclass(frozen=True)
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
    # Whole-step quantities, filled by Collector.collect_step:
    world_size: int = 1  # ranks whose gradients are averaged
    global_pg_tokens: float | None = None  # loss_type dapo: RL normaliser tokens summed over ranks
    old_logprobs: torch.Tensor | None = None  # [B * G, L] behaviour log-probs (rollout.num_iterations > 1)
    gate_step: object | None = None  # the gate's decision for this batch (GateStep; inner epochs share it)
    samples_scored: int = 0  # samples that went to the judges, summed over ranks
    samples_missing: int = 0  # of those, samples that got no reward


def merge(batches: Sequence[StepBatch]) -> StepBatch:
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
                                   for k in {k for b in batches for k in b.decode_stats}},
                     samples_scored=sum(b.samples_scored for b in batches),
                     samples_missing=sum(b.samples_missing for b in batches))


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


class _Engines:
    """The rollout engine of one policy, built on first use and kept for the run (the
    training collector and the evaluation collector share it)."""

    def __init__(self, rollout_config, spec, pad_id: int, adapter: ModelAdapter):
        self.rollout_config, self.spec, self.pad_id, self.adapter = rollout_config, spec, pad_id, adapter
        self._policy, self._engine = None, None

    def of(self, policy):
        if policy is not self._policy:
            r = self.rollout_config
            self._engine = make_sampler(r.backend, policy, self.spec, pad_id=self.pad_id, adapter=self.adapter,
                                        kv_cache=r.kv_cache, cuda_graphs=r.cuda_graphs)
            self._policy = policy
        return self._engine


class Collector:
    """Rollout -> completions -> rewards -> group statistics: the one path training and
    evaluation both take.

    policy: the model training samples (eval mode during the rollout); gathered: a context
    manager factory that makes the full weights available while ranks decode (FSDP2), or None.
    format: the model's ResponseFormat; reward_fn: a CompositeReward, or None (sft); codec: a
    SpeechCodec for rewards that listen (kept only when reward_fn listens); prompt_text:
    example -> the request as a judge reads it.
    """

    def __init__(self, config, *, policy, spec, pad_id: int, format, reward_fn: CompositeReward | None,
                 prompt_text: Callable[[TrainExample], str], codec=None, gathered=None, adapter=None,
                 engines: _Engines | None = None):
        self.config, self.policy, self.spec, self.pad_id = config, policy, spec, pad_id
        self.format, self.reward_fn, self.prompt_text = format, reward_fn, prompt_text
        self.codec = codec if getattr(reward_fn, "needs_audio", False) else None
        self.gathered = gathered or nullcontext
        self.adapter = adapter or ModelAdapter()
        self.engines = engines or _Engines(config.rollout, spec, pad_id, self.adapter)

    def with_rewards(self, reward_fn: CompositeReward | None, codec=None) -> "Collector":
        """The same policy, format and rollout engine, scored by other judges (evaluation's)."""
        return Collector(self.config, policy=self.policy, spec=self.spec, pad_id=self.pad_id, format=self.format,
                         reward_fn=reward_fn, prompt_text=self.prompt_text, codec=codec, adapter=self.adapter,
                         engines=self.engines)

    # ------------------------------------------------------------------ the two halves
    @torch.no_grad()
    def rollout(self, policy, examples: Sequence[TrainExample], *, n: int, params: SamplingParams,
                first_row: int = 0, extras=None) -> Rollout:
        """n responses per prompt from `policy` (eval mode while it decodes), prompt-major."""
        was_training = policy.training
        policy.eval()
        engine = self.engines.of(policy)
        rollout = engine.generate([e.prompt_ids for e in examples], n=n, params=params, first_row=first_row,
                                  extras=extras)
        policy.train(was_training)
        return rollout

    def score(self, examples: Sequence[TrainExample], responses: Sequence[Sequence[int]], *, n: int,
              keys: list[str]) -> tuple[list[Completion], RewardResult | None, dict[str, int]]:
        """Responses (n per example, prompt-major) -> (completions, the judges' RewardResult or
        None without judges, decode counts). keys: one per response, keying judge noise."""
        decode: dict[str, int] = {}
        completions = make_completions(self.format, responses, self.codec, stats=decode)
        if self.reward_fn is None:
            return completions, None, decode
        prompts = [self.prompt_text(e) for e in examples for _ in range(n)]
        columns = batch_columns(examples, n)
        columns["sample_key"] = keys
        return completions, self.reward_fn.score(prompts, completions, **columns), decode

    # ------------------------------------------------------------------ training
    def sampling(self, seed: int) -> SamplingParams:
        r = self.config.rollout
        return SamplingParams(text=r.text_sampling, speech=r.speech_sampling, max_new_tokens=r.max_new_tokens,
                              seed=seed)

    def collect(self, examples: list[TrainExample], *, step: int, first_prompt: int) -> StepBatch:
        """One prompt batch of a step. step: optimizer steps done so far (seeds the rollout and
        keys the judge noise); first_prompt: global index of examples[0] in the step's batch."""
        c = self.config
        G = c.rollout.group_size
        parts: dict = {}
        extras = prompt_inputs_of(self.adapter, examples)  # [B] extra forward inputs of each prompt
        if all(e is None for e in extras):  # ids only: the usual case
            extras = None
        if extras is not None and c.mode == "dpo":
            raise ValueError("this model's adapter gives prompts extra forward inputs, which DPO pairs do not carry "
                             "yet; use mode hybrid, grpo or sft")
        timings: dict[str, float] = {}
        if c.mode != "sft" and not (c.mode == "dpo" and dpo_pair_source(c, examples) == "offline"):
            t0 = time.perf_counter()
            with self.gathered():  # FSDP2: ranks decode for different lengths
                rollout = self.rollout(self.policy, examples, n=G, first_row=first_prompt * G, extras=extras,
                                       params=self.sampling(c.run.seed * 1_000_003 + step))
            rows = ResponseRows([p for p in rollout.prompt_ids for _ in range(G)], rollout.ids,
                                rollout.lengths, rollout.token_types,
                                extras=None if extras is None else [e for e in extras for _ in range(G)])
            if c.scores_sampling_distribution:  # score each token as it was drawn
                text_t, speech_t = c.rollout.text_sampling.temperature, c.rollout.speech_sampling.temperature
                rows.temperature = torch.where(rollout.phases == PHASE_SPEECH, speech_t, text_t).float()
                rows.allowed_sets = rollout.allowed_sets
            parts.update(rows=rows, sampling_logprobs=rollout.logprobs, finish_reasons=list(rollout.finish_reasons))
            timings["rollout"] = time.perf_counter() - t0
            if c.mode != "dpo" or dpo_pair_source(c, examples) == "rollout":
                t0 = time.perf_counter()
                keys = [f"{step}:{first_prompt * G + row}" for row in range(len(rows))]
                completions, reward, decode = self.score(examples, rows.responses(), n=G, keys=keys)
                rewards = reward.total.float().view(len(examples), G)
                parts.update(completions=completions, reward=reward, rewards=rewards, decode_stats=decode)
                timings["reward"] = time.perf_counter() - t0
                if c.mode in ("hybrid", "grpo"):
                    parts["stats"] = group_statistics(rewards, c.objective)
        return StepBatch(examples=list(examples), group_size=G, spec=self.spec, pad_id=self.pad_id,
                         gold=gold_rows(examples, self.spec, self.pad_id, extras), timings=timings, **parts)

    def collect_step(self, parts: Sequence[tuple[list[TrainExample], int]], *, step: int, gate,
                     world_size: int = 1, all_reduce: AllReduce = lambda values: values, with_kl: bool = False,
                     behaviour: Callable[[ResponseRows], torch.Tensor] | None = None) -> StepBatch:
        """The whole step's batch for this rank. parts: (examples, first_prompt) per prompt batch
        (gradient accumulation); gate: the AdaptiveGate (advanced once here, hybrid mode);
        all_reduce: sums a list of floats over ranks; with_kl: a frozen reference scores the
        rollouts (KL tokens count in the RL normaliser); behaviour: rows -> the sampling
        policy's log-probs [N, L], when PPO inner epochs need them (rollout.num_iterations > 1).
        Raises JudgeFailureError when more samples than rewards.max_failure_rate got no reward."""
        batches = []
        for examples, first_prompt in parts:
            batch = self.collect(examples, step=step, first_prompt=first_prompt)
            batches.append(self._check_rewards(batch, step, all_reduce))
        batch = with_global_quantities(merge(batches), self.config, world_size, with_kl, all_reduce)
        c = self.config
        if batch.stats is not None and c.mode == "hybrid":
            batch = replace(batch, gate_step=gate.step(batch.stats,
                                                       sample_variance=c.objective.advantage_std == "sample"))
        if behaviour is not None and batch.rows is not None:  # the policy that sampled, before any update
            with torch.no_grad():
                batch = replace(batch, old_logprobs=behaviour(batch.rows).detach().float().cpu())
        return batch

    def _check_rewards(self, batch: StepBatch, step: int, all_reduce: AllReduce) -> StepBatch:
        """Count samples without a reward (all ranks); stop when the judge fails too often."""
        if batch.rewards is None:
            return batch
        missing, total = int(torch.isnan(batch.rewards).sum()), batch.rewards.numel()
        g_missing, g_total = all_reduce([float(missing), float(total)])
        rate = g_missing / max(g_total, 1.0)
        limit = self.config.rewards.max_failure_rate
        if rate > limit:
            raise JudgeFailureError(
                f"step {step + 1}: {int(g_missing)} of {int(g_total)} samples ({rate:.0%}) got no reward, over "
                f"rewards.max_failure_rate={limit}; the judge is failing (see the warnings above). Fix the judge "
                f"and resume with --resume.")
        return replace(batch, samples_scored=int(g_total), samples_missing=int(g_missing))


# ---------------------------------------------------------------------------- whole-batch quantities
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
                           sum_over_ranks: AllReduce) -> StepBatch:
    """The batch with the few whole-job numbers learning needs: the rank count, the global
    batch's reward std (scale_rewards 'batch') and the RL term's global token weight (loss_type
    'dapo'). sum_over_ranks: the all-reduce (identity in one process)."""
    o = config.objective
    update: dict = {"world_size": world_size}
    if batch.stats is not None and o.scale_rewards == "batch":
        valid = batch.rewards[~torch.isnan(batch.rewards)].double()
        n, total, squares = sum_over_ranks([float(valid.numel()), float(valid.sum()), float((valid ** 2).sum())])
        mean = total / max(n, 1.0)
        variance = max(squares / max(n, 1.0) - mean ** 2, 0.0)
        if o.advantage_std == "sample" and n > 1:
            variance *= n / (n - 1)
        update["stats"] = group_statistics(batch.rewards, o, batch_std=math.sqrt(variance))
    if batch.rows is not None and o.loss_type == "dapo":
        mask = truncated_rows(batch).logical_not() if o.mask_truncated_completions else None
        update["global_pg_tokens"] = sum_over_ranks([pg_weight_total(batch.rows.types, o, mask, with_kl)])[0]
    return replace(batch, **update)


def truncated_rows(batch: StepBatch) -> torch.Tensor:
    """[B * G] bool: rollouts that ran out of budget (finish reason 'length')."""
    return torch.tensor([r == "length" for r in batch.finish_reasons], dtype=torch.bool)


def pg_weight_total(types: torch.Tensor, o, sequence_mask: torch.Tensor | None, with_kl: bool) -> float:
    """Sum of the RL term's token weights (its scope, and KL tokens when a KL beta is on)."""
    if sequence_mask is not None:
        types = torch.where(sequence_mask[:, None], types, torch.full_like(types, -1))
    weights = token_weights(types, o.rl_scope, o.rl_type_weights)
    if with_kl and (o.kl_beta_text > 0 or o.kl_beta_speech > 0):
        beta = torch.tensor((0.0, o.kl_beta_text, o.kl_beta_speech))[types.long() + 1]
        weights = torch.maximum(weights, (beta > 0).float())
    return float(weights.sum())


# ---------------------------------------------------------------------------- rollout metrics
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


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


def _nan_mean(values: torch.Tensor) -> float:
    return _mean_where(values, ~torch.isnan(values))
