"""The WavAlign training loop, and its grpo / sft / dpo variants.

One hybrid step (PAPER.md §3-§7), for this process's share of the global prompt batch:

    rollout   G samples per prompt (RolloutEngine, Philox streams keyed by global row)
    reward    judges -> rewards [B, G] (NaN = no reward: excluded and counted)
    stats     group-relative advantages; gate -> lambda (all-reduced across ranks)
    loss      lambda * PG(rollouts, RL scope) + (1 - lambda) * SFT(gold responses, anchor scope)
    step      one backward over rollouts and gold stacked, grad clip, AdamW, LR schedule

grpo: lambda = 1 (no anchor). sft: gold NLL only, no rollouts. dpo: pairs from rollouts
(best vs worst by a pair score), gold vs sampled, or offline JSONL; a frozen reference.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from wavalign import ops
from wavalign.eval.core import PolicyEvaluator, mean_summary
from wavalign.modality import ModalitySpec
from wavalign.rewards.base import CompositeReward
from wavalign.rollout.engine import ModalitySampling, Rollout, RolloutEngine, SamplingParams
from wavalign.train import checkpoint as ckpt
from wavalign.train import fsdp
from wavalign.train.config import TrainConfig
from wavalign.train.data import (GenericFormat, PromptSampler, RecordConverter, TrainExample, batch_columns,
                                 judge_prompt_text, load_jsonl_examples, world_examples)
from wavalign.train.gate import AdaptiveGate
from wavalign.train.logprobs import selected_logprobs
from wavalign.train.losses import dpo_loss, hybrid_loss, policy_gradient_loss, sft_loss
from wavalign.train.pairs import best_vs_worst, gold_vs_sampled, pair_scores
from wavalign.train.rewards import EVAL_JUDGE_SEED_OFFSET, build_reward, make_completions
from wavalign.train.run_log import RunLog, plot_run

log = logging.getLogger(__name__)


class JudgeFailureError(RuntimeError):
    """Too many samples of a step got no reward: the judge is failing."""


# ---------------------------------------------------------------------------- model pieces
class ResponseLogprobs(torch.nn.Module):
    """Causal LM -> log-probs of the response tokens [N, L], without materialising logits.

    The base model gives hidden states; the LM head is applied chunk by chunk
    (selected_logprobs). A module of its own so DDP sees the whole computation.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
        # ids, mask [N, W] right-padded prompt+response; starts [N] first response position
        base = getattr(self.lm, self.lm.base_model_prefix)
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, W, H]
        span = torch.arange(width, device=ids.device)
        # hidden at position t predicts token t + 1
        positions = (starts[:, None] - 1 + span[None, :]).clamp(0, ids.shape[1] - 2)  # [N, width]
        picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # [N, width, H]
        targets = ids.gather(1, positions + 1)  # [N, width]
        head = self.lm.get_output_embeddings()
        return selected_logprobs(picked, head.weight, targets, bias=getattr(head, "bias", None))


@dataclass
class Packed:
    ids: torch.Tensor  # [N, W] int64 prompt + response, right-padded
    mask: torch.Tensor  # [N, W] int64
    starts: torch.Tensor  # [N] int64
    response: torch.Tensor  # [N, L] int64 response ids (pad after the end)
    types: torch.Tensor  # [N, L] int8 (-1 past the end)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], spec: ModalitySpec, pad_id: int,
         device) -> Packed:
    rows = len(prompts)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    span = max(len(r) for r in responses)
    ids = torch.full((rows, width), pad_id, dtype=torch.int64)
    mask = torch.zeros((rows, width), dtype=torch.int64)
    response = torch.full((rows, span), pad_id, dtype=torch.int64)
    valid = torch.zeros((rows, span), dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        ids[row, :len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.int64)
        mask[row, :len(p) + len(r)] = 1
        response[row, :len(r)] = torch.tensor(list(r), dtype=torch.int64)
        valid[row, :len(r)] = True
    starts = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    types = spec.token_types(response, valid)
    return Packed(ids.to(device), mask.to(device), starts.to(device), response, types.to(device))


def lr_lambda(config):
    optim = config.optim

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1.0 - progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape

    return factor


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, config: TrainConfig, *, world=None, resume: bool = False, run_dir: str | Path | None = None):
        self.config = config
        self._init_distributed()
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed)
        self.device = self._pick_device()
        self.world = world if world is not None else self._load_world()
        self._load_model()
        self._load_data()
        self.reward_fn, self.eval_reward_fn = self._build_rewards()
        self.gate = AdaptiveGate(config.gate)
        self.sampler = PromptSampler(len(self.train_examples), config.run.seed)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.optim.lr,
                                           betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.step = 0
        self.counters = {"skipped_nonfinite_steps": 0, "judge_failures": 0, "samples_scored": 0}
        self.evaluations: dict[str, dict] = {}
        self.stop_requested = False
        self.run_dir = Path(run_dir) if run_dir else self._run_dir()
        self.checkpoint_root = self.run_dir / "checkpoints"
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config.to_yaml(self.run_dir / "config.yaml")
        if resume:
            self._resume()
        self.run_log = RunLog(self.run_dir, tensorboard=config.run.tensorboard, enabled=self.is_main)
        if resume:
            self.run_log.truncate_after(self.step)

    # ------------------------------------------------------------------ setup
    def _init_distributed(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.world_size > 1
        if self.distributed and not dist.is_initialized():
            backend = self.config.distributed.backend
            if backend == "auto":
                backend = "nccl" if torch.cuda.is_available() and self.config.run.device != "cpu" else "gloo"
            dist.init_process_group(backend=backend)
        if self.config.optim.prompts_per_step % self.world_size:
            raise ValueError(f"optim.prompts_per_step={self.config.optim.prompts_per_step} must be divisible by the "
                             f"number of processes ({self.world_size})")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _pick_device(self) -> torch.device:
        device = pick_device(self.config.run.device, self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def _needs_world(self) -> bool:
        c = self.config
        return (c.data.source == "world" or c.model.path == "world"
                or any(r.kind.startswith("world_") for r in c.rewards.components))

    def _load_world(self):
        if not self._needs_world():
            return None
        from wavalign.world import load_world
        from wavalign.world.config import WorldConfig

        world_config = WorldConfig.named(self.config.data.world)
        if self.distributed:  # one process builds, the others wait and load the cache
            if self.is_main:
                world = load_world(world_config)
            dist.barrier()
            if not self.is_main:
                world = load_world(world_config)
            return world
        return load_world(world_config)

    def _load_model(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        c = self.config.model
        path = self.world.policy_path if c.path == "world" else Path(c.path)
        if not path.is_dir():
            raise FileNotFoundError(f"model.path: no such model directory: {path}")
        self.model_path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if c.modality is not None:
            from wavalign.modality import load_preset

            self.spec = (ModalitySpec.from_yaml(c.modality) if c.modality.endswith((".yaml", ".yml"))
                         else load_preset(c.modality))
        elif (path / "modality.yaml").is_file():
            self.spec = ModalitySpec.from_yaml(path / "modality.yaml")
        else:
            self.spec = ModalitySpec.from_tokenizer(self.tokenizer)
        if c.schedule is not None:
            self.spec = ModalitySpec.from_dict({**self.spec.to_dict(), "schedule": dict(c.schedule)})
        dtype = _dtype(c.dtype)
        self.policy = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(self.device)
        if self.spec.vocab_size > self.policy.get_output_embeddings().weight.shape[0]:
            raise ValueError(f"the ModalitySpec's vocab_size {self.spec.vocab_size} exceeds the model's output "
                             f"size {self.policy.get_output_embeddings().weight.shape[0]}")
        if c.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.spec.pad or 0)
        self.logprob_module = ResponseLogprobs(self.policy)
        self.trainable = self.logprob_module
        self.sharded = self.distributed and self.config.distributed.strategy == "fsdp2"
        if self.sharded:  # parameters become shards; the optimizer (built later) holds only this rank's
            fsdp.shard(self.logprob_module, self.policy, self.device)
            _touch(self.logprob_module, self.device)
        elif self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.trainable = DistributedDataParallel(
                self.logprob_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.reference = None
        if self.config.needs_reference:  # frozen, eval mode, never in the optimizer
            reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(self.device).eval()
            reference.requires_grad_(False)
            self.reference = ResponseLogprobs(reference).eval()
            if self.sharded:
                fsdp.shard(self.reference, reference, self.device)
                _touch(self.reference, self.device)
        if self.world is not None and c.path == "world":
            self.format = self.world.format
        else:
            self.format = GenericFormat(self.tokenizer, self.spec)

    def _load_data(self) -> None:
        c = self.config.data
        self.skipped_lines = 0
        if c.source == "world":
            self.train_examples = world_examples(self.world.examples("train"))
            self.eval_examples = world_examples(self.world.examples(self.config.eval.split))
            return
        audio_units = None
        if self.world is not None:
            units = self.world.scorer.units

            def audio_units(waveform, sample_rate):
                from wavalign.world.audio import SAMPLE_RATE

                if sample_rate != SAMPLE_RATE:
                    raise ValueError(f"audio at {sample_rate} Hz; the world's tokenizer needs {SAMPLE_RATE} Hz")
                return units.encode(waveform).tolist()
        convert = RecordConverter(self.format, self.spec.vocab_size, record_format=c.format, audio_units=audio_units,
                                  base_dir=Path(c.train_path).parent, max_prompt_tokens=c.max_prompt_tokens)
        self.train_examples, self.skipped_lines = load_jsonl_examples(c.train_path, convert,
                                                                      skip_bad_lines=c.skip_bad_lines)
        self.eval_examples = []
        if c.eval_path:
            self.eval_examples, skipped = load_jsonl_examples(c.eval_path, convert, skip_bad_lines=c.skip_bad_lines)
            self.skipped_lines += skipped

    def _build_rewards(self):
        if self.config.mode == "sft":
            return None, self._composite(seed_offset=EVAL_JUDGE_SEED_OFFSET) if self.world is not None else None
        return self._composite(seed_offset=0), self._composite(seed_offset=EVAL_JUDGE_SEED_OFFSET)

    def _composite(self, seed_offset: int) -> CompositeReward:
        return build_reward(self.config.rewards, self.world, seed_offset)

    def _run_dir(self) -> Path:
        name = self.config.run.name or f"{self.config.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if self.distributed:  # every rank must agree on a timestamped name
            holder = [name]
            dist.broadcast_object_list(holder, src=0)
            name = holder[0]
        return Path(self.config.run.output_dir) / name

    # ------------------------------------------------------------------ helpers
    def _all_reduce(self, values: list[float], op=None) -> list[float]:
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self._nccl else "cpu")
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    @property
    def _nccl(self) -> bool:
        return self.distributed and dist.get_backend() == "nccl"

    def _mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the ranks that report it (NaN ignored); shards are equal-sized."""
        if not self.distributed:
            return metrics
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, metrics)
        out = {}
        for key in sorted({k for m in gathered for k in m}):
            values = [m[key] for m in gathered if key in m and not math.isnan(m[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        return out

    def _local_batch(self) -> tuple[list[TrainExample], int]:
        """This rank's prompts of the next global batch, and the global index of its first prompt."""
        indices = self.sampler.next(self.config.optim.prompts_per_step)
        share = len(indices) // self.world_size
        mine = indices[self.rank * share:(self.rank + 1) * share]
        return [self.train_examples[i] for i in mine], self.rank * share

    def _sampling(self, seed: int) -> SamplingParams:
        r = self.config.rollout
        speech_t = r.temperature if r.speech_temperature is None else r.speech_temperature
        return SamplingParams(text=ModalitySampling(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k),
                              speech=ModalitySampling(temperature=speech_t, top_p=r.top_p, top_k=r.top_k),
                              max_new_tokens=r.max_new_tokens, seed=seed)

    def _rollout(self, examples: list[TrainExample], first_prompt: int) -> tuple[Rollout, list[list[int]]]:
        G = self.config.rollout.group_size
        self.policy.eval()
        engine = RolloutEngine(self.policy, self.spec, pad_id=self.pad_id)
        with fsdp.full_parameters(self.logprob_module):  # FSDP2: ranks decode for different lengths
            rollout = engine.generate([e.prompt_ids for e in examples], n=G,
                                      params=self._sampling(self.config.run.seed * 1_000_003 + self.step),
                                      first_row=first_prompt * G)
        responses = [row[:length].tolist() for row, length in zip(rollout.ids, rollout.lengths)]
        return rollout, responses

    def _score(self, reward_fn: CompositeReward, examples: list[TrainExample], responses: list[list[int]],
               repeat: int, keys: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (rewards [len(examples), repeat] NaN = none, components name -> [N])."""
        completions = make_completions(self.format, responses, self.world.scorer if reward_fn.needs_audio else None)
        prompts = [self._prompt_text(e) for e in examples for _ in range(repeat)]
        columns = batch_columns(examples, repeat)
        columns["sample_key"] = keys
        values = reward_fn(prompts, completions, **columns)
        rewards = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
        return rewards.view(len(examples), repeat), dict(reward_fn.last_components)

    def _prompt_text(self, example: TrainExample) -> str:
        return judge_prompt_text(example, self.tokenizer)

    def _logprobs(self, module, prompts, responses) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pack(prompts, responses, self.spec, self.pad_id, self.device)
        width = batch.response.shape[1]
        logp = module(batch.ids, batch.mask, batch.starts, width)
        if module is self.reference and self.sharded:
            module.reshard()  # no backward will free the frozen root's gathered weights
        return logp, batch.types

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        mode = self.config.mode
        timings: dict[str, float] = {}
        start = time.perf_counter()
        examples, first_prompt = self._local_batch()
        if mode == "sft":
            loss, metrics = self._sft_step(examples)
        elif mode == "dpo":
            loss, metrics = self._dpo_step(examples, first_prompt, timings)
        else:
            loss, metrics = self._hybrid_step(examples, first_prompt, timings)
        metrics.update(self._optimize(loss, timings))
        timings["step"] = time.perf_counter() - start
        metrics = self._mean_over_ranks(metrics)
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _hybrid_step(self, examples, first_prompt, timings):
        c, G = self.config, self.config.rollout.group_size
        t0 = time.perf_counter()
        rollout, responses = self._rollout(examples, first_prompt)
        timings["rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        keys = [f"{self.step}:{first_prompt * G + row}" for row in range(len(responses))]
        rewards, components = self._score(self.reward_fn, examples, responses, G, keys)
        timings["reward"] = time.perf_counter() - t0
        metrics = self._reward_metrics(rewards, components, rollout)

        stats = ops.group_stats(rewards, mode=c.objective.advantage, std=c.objective.advantage_std,
                                eps=c.objective.advantage_eps)
        metrics.update({f"groups/{k}": v for k, v in stats.summary().items()})
        if c.mode == "grpo":
            lam = 1.0
        else:
            gate_step = self.gate.step(rewards)
            lam = gate_step.lam
            metrics.update(gate_step.log_dict())

        t0 = time.perf_counter()
        self.policy.train()
        prompts = [e.prompt_ids for e in examples for _ in range(G)]
        gold = [(e.prompt_ids, e.response_ids) for e in examples if e.response_ids is not None]
        use_sft = c.mode == "hybrid" and lam < 1.0 and bool(gold)
        # Rollouts and gold responses go through one forward pass, stacked (as the public code does).
        all_prompts = prompts + ([p for p, _ in gold] if use_sft else [])
        all_responses = responses + ([r for _, r in gold] if use_sft else [])
        logp, types = self._logprobs(self.trainable, all_prompts, all_responses)
        n, width = len(responses), max(len(r) for r in responses)  # the gold rows may be longer
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logp, _ = self._logprobs(self.reference, prompts, responses)
        o = c.objective
        rl, rl_stats = policy_gradient_loss(
            logp[:n, :width], stats.advantages.flatten().to(self.device), types[:n, :width], scope=o.rl_scope,
            type_weights=o.rl_type_weights, normalization=o.pg_normalization, ref_logprobs=ref_logp,
            kl_beta_text=o.kl_beta_text, kl_beta_speech=o.kl_beta_speech, empty_scope=o.empty_scope)
        metrics.update({f"rl/{k}": v for k, v in rl_stats.items() if k != "loss"})
        if use_sft:
            sft, sft_stats = sft_loss(logp[n:], types[n:], scope=o.sft_scope, type_weights=o.sft_type_weights,
                                      normalization=o.sft_normalization, empty_scope=o.empty_scope)
            metrics.update({f"sft/{k}": v for k, v in sft_stats.items() if k != "loss"})
        else:
            sft = torch.zeros((), device=self.device)
        loss, mix = hybrid_loss(rl, sft, lam)
        metrics.update({"loss/total": mix["loss"], "loss/rl": mix["rl"], "loss/sft": mix["sft"] if use_sft else math.nan,
                        "gate/lambda": lam})
        timings["forward"] = time.perf_counter() - t0
        return loss, metrics

    def _sft_step(self, examples):
        gold = [(e.prompt_ids, e.response_ids) for e in examples if e.response_ids is not None]
        if not gold:
            raise ValueError("sft mode needs gold responses (response_* fields) in the training data")
        self.policy.train()
        logp, types = self._logprobs(self.trainable, [p for p, _ in gold], [r for _, r in gold])
        o = self.config.objective
        loss, stats = sft_loss(logp, types, scope=o.sft_scope, type_weights=o.sft_type_weights,
                               normalization=o.sft_normalization, empty_scope=o.empty_scope)
        return loss, {"loss/total": stats["loss"], "loss/sft": stats["loss"],
                      **{f"sft/{k}": v for k, v in stats.items() if k != "loss"}}

    def _dpo_step(self, examples, first_prompt, timings):
        c, G = self.config, self.config.rollout.group_size
        source = c.dpo.pairs
        if source == "auto":
            source = "offline" if any(e.rejected_ids is not None for e in examples) else "rollout"
        metrics: dict[str, float] = {}
        if source == "offline":
            chosen = [(e.prompt_ids, e.response_ids) for e in examples if e.response_ids and e.rejected_ids]
            rejected = [(e.prompt_ids, e.rejected_ids) for e in examples if e.response_ids and e.rejected_ids]
            metrics["pairs/built"] = float(len(chosen))
        else:
            t0 = time.perf_counter()
            rollout, responses = self._rollout(examples, first_prompt)
            timings["rollout"] = time.perf_counter() - t0
            if source == "gold":
                groups = [responses[b * G:(b + 1) * G] for b in range(len(examples))]
                found, stats = gold_vs_sampled([e.response_ids for e in examples], groups)
                chosen = [(examples[b].prompt_ids, examples[b].response_ids) for b, _ in found]
                rejected = [(examples[b].prompt_ids, responses[b * G + g]) for b, g in found]
            else:
                t0 = time.perf_counter()
                keys = [f"{self.step}:{first_prompt * G + row}" for row in range(len(responses))]
                rewards, components = self._score(self.reward_fn, examples, responses, G, keys)
                timings["reward"] = time.perf_counter() - t0
                metrics.update(self._reward_metrics(rewards, components, rollout))
                scores = pair_scores(components, rewards.flatten(), c.dpo.pair_score).view(len(examples), G)
                found, stats = best_vs_worst(scores, c.dpo.min_gap)
                chosen = [(examples[b].prompt_ids, responses[b * G + w]) for b, w, _ in found]
                rejected = [(examples[b].prompt_ids, responses[b * G + l]) for b, _, l in found]
            metrics.update(stats)
        t0 = time.perf_counter()
        self.policy.train()
        if not chosen:  # no pair this step (on this rank): a zero loss that still runs backward for DDP
            first = examples[0]
            logp, _ = self._logprobs(self.trainable, [first.prompt_ids], [first.prompt_ids[-1:]])
            loss = logp.sum() * 0.0
            metrics.update({"loss/total": 0.0, "loss/dpo": math.nan})
            timings["forward"] = time.perf_counter() - t0
            return loss, metrics
        k = len(chosen)
        logp, types = self._logprobs(self.trainable, [p for p, _ in chosen] + [p for p, _ in rejected],
                                     [r for _, r in chosen] + [r for _, r in rejected])
        with torch.no_grad():
            ref, _ = self._logprobs(self.reference, [p for p, _ in chosen] + [p for p, _ in rejected],
                                    [r for _, r in chosen] + [r for _, r in rejected])
        d = c.dpo
        loss, stats = dpo_loss(logp[:k], logp[k:], ref[:k], ref[k:], types[:k], types[k:], scope=d.scope,
                               type_weights=d.type_weights, beta=d.beta, loss_type=d.loss_type,
                               label_smoothing=d.label_smoothing, empty_scope=c.objective.empty_scope)
        metrics.update({"loss/total": stats["loss"], "loss/dpo": stats["loss"],
                        **{f"dpo/{key}": v for key, v in stats.items() if key != "loss"}})
        timings["forward"] = time.perf_counter() - t0
        return loss, metrics

    def _reward_metrics(self, rewards: torch.Tensor, components: dict[str, torch.Tensor], rollout: Rollout) -> dict:
        valid = ~torch.isnan(rewards)
        missing = int((~valid).sum())
        total = rewards.numel()
        g_missing, g_total = self._all_reduce([float(missing), float(total)])
        self.counters["judge_failures"] += int(g_missing)
        self.counters["samples_scored"] += int(g_total)
        rate = g_missing / max(g_total, 1.0)
        limit = self.config.rewards.max_failure_rate
        if rate > limit:
            raise JudgeFailureError(
                f"step {self.step + 1}: {int(g_missing)} of {int(g_total)} samples ({rate:.0%}) got no reward, over "
                f"rewards.max_failure_rate={limit}; the judge is failing (see the warnings above). Fix the judge "
                f"and resume with --resume.")
        nan_mean = (lambda x: _mean_where(x, ~torch.isnan(x)))
        lengths = rollout.lengths.float()
        types = rollout.token_types
        metrics = {"reward/mean": nan_mean(rewards), "reward/missing_fraction": missing / max(total, 1),
                   "rollout/length": float(lengths.mean()),
                   "rollout/text_tokens": float((types == 0).sum()) / len(lengths),
                   "rollout/speech_tokens": float((types == 1).sum()) / len(lengths),
                   # mean -log p of the sampled tokens: an unbiased estimate of the sampling
                   # distribution's entropy per token, by channel (nats)
                   "rollout/text_entropy": _mean_where(-rollout.logprobs, types == 0),
                   "rollout/speech_entropy": _mean_where(-rollout.logprobs, types == 1),
                   "rollout/eos_fraction": sum(r == "eos" for r in rollout.finish_reasons) / len(lengths)}
        metrics.update({f"reward/{name}": nan_mean(values) for name, values in components.items()})
        return metrics

    def _optimize(self, loss: torch.Tensor, timings: dict[str, float]) -> dict[str, float]:
        t0 = time.perf_counter()
        finite = float(torch.isfinite(loss.detach()).all())
        finite = self._all_reduce([finite], op=dist.ReduceOp.MIN if self.distributed else None)[0]
        self.optimizer.zero_grad(set_to_none=True)
        out = {}
        if not finite:  # every rank skips together, so DDP never waits on a missing backward
            self.counters["skipped_nonfinite_steps"] += 1
            log.warning("step %d: non-finite loss (%s); step skipped", self.step + 1, float(loss.detach()))
            out["skipped_nonfinite"] = 1.0
        else:
            loss.backward()
            timings["forward_backward"] = timings.pop("forward", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            clip = self.config.optim.grad_clip
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip if clip > 0 else float("inf"))
            if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor over the shards
                norm = norm.full_tensor()
            if torch.isfinite(norm):
                self.optimizer.step()
                out["grad_norm"] = float(norm)
            else:
                self.counters["skipped_nonfinite_steps"] += 1
                log.warning("step %d: non-finite gradient norm; step skipped", self.step + 1)
                out["skipped_nonfinite"] = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        timings["optimizer"] = time.perf_counter() - t0
        timings.pop("forward", None)
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, label: str) -> dict[str, float]:
        """Greedy responses on the eval split: exact IQ / EQ / WER (world) and mean judge reward.
        Runs on the main process; the others wait (under FSDP2 they first help gather the weights)."""
        result: dict[str, float] = {}
        with fsdp.full_parameters(self.logprob_module):
            if self.is_main:
                result = self._evaluate()
        if self.distributed:
            holder = [result]
            dist.broadcast_object_list(holder, src=0)
            result = holder[0]
        self.evaluations[label] = result
        self.run_log.write({"step": self.step, "kind": "eval", "label": label, **result})
        return result

    def evaluator(self) -> PolicyEvaluator:
        """Scores any policy on this run's evaluation prompts, with this run's format and judges."""
        e = self.config.eval
        scorer = self.world.scorer if self.world is not None and self.config.data.source == "world" else None
        return PolicyEvaluator(spec=self.spec, pad_id=self.pad_id, examples=self.eval_examples[:e.limit],
                               format=self.format, scorer=scorer, reward_fn=self.eval_reward_fn,
                               prompt_text=self._prompt_text, max_new_tokens=self.config.rollout.max_new_tokens,
                               temperature=e.temperature)

    def _evaluate(self) -> dict[str, float]:
        evaluator = self.evaluator()
        if not evaluator.examples:
            log.warning("no evaluation examples (set data.eval_path for JSONL data); evaluation skipped")
            return {}
        return mean_summary(evaluator.run(self.policy))

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self, optimizer_state: dict | None = None) -> dict:
        optimizer_state = self.optimizer.state_dict() if optimizer_state is None else optimizer_state
        return {"step": self.step, "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                "gate": self.gate.state_dict(), "sampler": self.sampler.state_dict(),
                "counters": dict(self.counters), "evaluations": self.evaluations, "world_size": self.world_size,
                "config": self.config.to_dict()}

    def save(self) -> Path | None:
        states = [ckpt.rng_state()]
        if self.distributed:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, states[0])
            states = gathered
        weights = optimizer_state = None
        if self.sharded:  # gather full tensors onto rank 0 (every rank takes part)
            weights = fsdp.full_model_state(self.logprob_module, prefix="lm.")
            if getattr(self.policy.config, "tie_word_embeddings", False):  # saved once, as the input embedding
                head = next(name for name, module in self.policy.named_modules()
                            if module is self.policy.get_output_embeddings())
                weights.pop(f"{head}.weight", None)
            optimizer_state = fsdp.full_optimizer_state(self.logprob_module, self.optimizer)
        path = None
        if self.is_main:
            extra = {"modality.yaml": _spec_yaml(self.spec)}
            path = ckpt.save_checkpoint(self.checkpoint_root, self.step, model=self.policy, tokenizer=self.tokenizer,
                                        extra_files=extra, trainer_state=self._trainer_state(optimizer_state),
                                        rank_states=states, keep=self.config.run.keep_checkpoints,
                                        state_dict=weights)
        if self.distributed:
            dist.barrier()
        return path

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.checkpoint_root)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.checkpoint_root}")
        state, rank_state = ckpt.load_trainer_state(path, self.rank)
        if state["world_size"] != self.world_size:
            raise ValueError(f"{path} was saved by {state['world_size']} processes; resume with the same number "
                             f"(this run has {self.world_size})")
        saved, now = state["config"], self.config.to_dict()
        changed = sorted(f"{s}.{k}" for s in now if isinstance(now[s], dict)
                         for k in now[s] if saved.get(s, {}).get(k) != now[s][k] and s not in ("run", "eval"))
        if saved.get("mode") != now["mode"] or changed:
            raise ValueError(f"--resume: the config differs from the checkpoint's in {changed or ['mode']}")
        from safetensors.torch import load_file

        weights = load_file(str(path / "model.safetensors"), device=str(self.device))
        if self.sharded:
            missing, unexpected = fsdp.load_full_model_state(self.logprob_module, weights, prefix="lm.")
        else:
            missing, unexpected = self.policy.load_state_dict(weights, strict=False)
        missing = [m for m in missing if not (self.policy.config.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint weights do not match the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        if self.sharded:
            fsdp.load_full_optimizer_state(self.logprob_module, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gate.load_state_dict(state["gate"])
        self.sampler.load_state_dict(state["sampler"])
        self.counters.update(state["counters"])
        self.evaluations = dict(state["evaluations"])
        self.step = int(state["step"])
        ckpt.set_rng_state(rank_state)
        if self.is_main:
            print(f"[train] resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ the loop
    def _install_interrupt_handler(self):
        def request_stop(signum, frame):
            if self.stop_requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.is_main:
                print("\n[train] interrupt: saving a checkpoint after this step (Ctrl-C again to abort)", flush=True)

        try:
            return signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread
            return None

    def fit(self) -> dict:
        c = self.config
        previous_handler = self._install_interrupt_handler()
        try:
            if c.eval.before and "before" not in self.evaluations:
                self._say("evaluating the base policy")
                self.evaluate("before")
            bar = tqdm(total=c.optim.steps, initial=self.step, desc=f"train ({c.mode})",
                       disable=not (self.is_main and c.run.progress), dynamic_ncols=True)
            interrupted = False
            while self.step < c.optim.steps:
                metrics = self.train_step()
                self.step += 1
                self.run_log.write({"step": self.step, "kind": "train", **metrics})
                bar.update(1)
                bar.set_postfix(self._postfix(metrics), refresh=False)
                if c.eval.every and self.step % c.eval.every == 0 and self.step < c.optim.steps:
                    self.evaluate(f"step_{self.step}")
                if c.run.save_every and self.step % c.run.save_every == 0:
                    self.save()
                stop = self._all_reduce([float(self.stop_requested)], op=dist.ReduceOp.MAX if self.distributed
                                        else None)[0]
                if stop:
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                path = self.save()
                self._say(f"stopped at step {self.step}; checkpoint {path}; continue with --resume")
                return {"interrupted": True, "step": self.step}
            if not (c.run.save_every and self.step % c.run.save_every == 0):
                self.save()
            if c.eval.after:
                self._say("evaluating the trained policy")
                self.evaluate("after")
            summary = {"step": self.step, "evaluations": self.evaluations, "counters": self.counters,
                       "skipped_lines": self.skipped_lines, "run_dir": str(self.run_dir)}
            if self.is_main:
                import json

                ckpt.write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
                if c.run.plots:
                    plot_run(self.run_dir)
            return summary
        finally:
            self.run_log.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def _postfix(self, metrics: dict) -> dict:
        out = {}
        if "reward/mean" in metrics:
            out["reward"] = f"{metrics['reward/mean']:.2f}"
        if "gate/lambda" in metrics:
            out["λ"] = f"{metrics['gate/lambda']:.2f}"
        out["loss"] = f"{metrics.get('loss/total', math.nan):.3f}"
        out["s/step"] = f"{metrics['time/step']:.2f}"
        return out

    def _say(self, message: str) -> None:
        if self.is_main:
            print(f"[train] {message}", flush=True)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """run.device ('auto', 'cuda' or 'cpu') -> this process's device; asking for CUDA without one fails clearly."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


@torch.no_grad()
def _touch(module: ResponseLogprobs, device: torch.device) -> None:
    """One tiny forward through a freshly sharded root. FSDP2 decides which unit is the root
    on the first forward; rollouts call the blocks directly, so the root must go first."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    module(ids, torch.ones_like(ids), torch.ones(1, dtype=torch.long, device=device), 1)
    module.reshard()  # the root keeps its gathered weights after forward; the optimizer must see the shards


def _spec_yaml(spec: ModalitySpec) -> str:
    import yaml

    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
