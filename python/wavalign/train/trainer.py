"""The training loop: setup, `fit`, checkpoints, resume and signals. A step is

    batch = collector.collect(examples, step, first_prompt)     rollout -> rewards -> group stats
    loss, metrics = LEARN_STEPS[mode](batch, logprob_fn, gate, config, ref_logprob_fn)
    optimizer step (non-finite loss or gradient: skipped on every rank, counted)

(train/step.py holds both sides; PAPER.md §3-§7 the math.) hybrid: lambda * PG(rollouts, RL
scope) + (1 - lambda) * SFT(gold, anchor scope), lambda from the gate; grpo: lambda = 1; sft:
gold NLL only; dpo: pairs from rollouts, gold vs sampled, or offline JSONL, with a frozen
reference. Under torchrun the global prompt batch is sharded across ranks.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from datetime import datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wavalign.train import checkpoint as ckpt
from wavalign.train import distributed, fsdp
from wavalign.train.config import TrainConfig
from wavalign.train.data import PromptSampler, TrainExample, check_columns, judge_prompt_text, load_examples
from wavalign.train.distributed import Ranks, pick_device  # noqa: F401 (pick_device: re-export)
from wavalign.train.evaluator import PolicyEvaluator, build_evaluator, mean_summary
from wavalign.train.gate import AdaptiveGate
from wavalign.logprobs import RowLogprobs, allowed_set_masks
from wavalign.train.model import (  # noqa: F401
    build_optimizer, full_states, load_codec, load_policy, load_states, lr_lambda,
)
from wavalign.train.rewards import EVAL_JUDGE_SEED_OFFSET, REWARD_KINDS, build_reward
from wavalign.train.run_dir import RunDirLock, check_free_space, checkpoint_bytes
from wavalign.train.run_dir import prepare as prepare_run_dir
from wavalign.train.run_log import RunLog, completion_rows, plot_run, require_trackers
from wavalign.train.step import LEARN_STEPS, Collector, StepBatch, collect_metrics, with_global_quantities

log = logging.getLogger(__name__)


class JudgeFailureError(RuntimeError):
    """Too many samples of a step got no reward: the judge is failing."""


class Trainer:
    """evaluator: a PolicyEvaluator to score the policy before/after (default: the one the
    config describes, built by train.evaluator.build_evaluator)."""

    def __init__(self, config: TrainConfig, *, world=None, resume: bool = False, run_dir: str | Path | None = None,
                 evaluator: PolicyEvaluator | None = None):
        self.config = config
        require_trackers(config.run.trackers)  # before any work: a missing tracker package names its extra
        self.ranks = Ranks.from_env()
        if self.ranks.distributed:
            distributed.init_process_group(config.distributed.backend, config.run.device,
                                           cpu_offload=config.distributed.cpu_offload)
        if config.optim.prompts_per_step % self.ranks.world_size:
            raise ValueError(f"optim.prompts_per_step={config.optim.prompts_per_step} must be divisible by the "
                             f"number of processes ({self.ranks.world_size})")
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        torch.manual_seed(config.run.seed)
        self.device = pick_device(config.run.device, self.ranks.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.world = world if world is not None else self._load_world()
        self.loaded = load_policy(config, self.world, self.device, self.ranks)
        self.policy, self.tokenizer, self.spec = self.loaded.policy, self.loaded.tokenizer, self.loaded.spec
        self.pad_id, self.format = self.loaded.pad_id, self.loaded.format
        codec = self.codec = load_codec(config, self.world)  # speech.codec (default: the world's, if any)
        adapter = self.loaded.adapter
        self.train_examples, self.eval_examples, self.skipped_lines = load_examples(
            config, self.world, self.format, self.spec.vocab_size, codec)
        if config.mode == "sft":  # SFT learns from gold only: prompt-only records have nothing to teach it
            with_gold = [e for e in self.train_examples if e.response_ids is not None]
            if not with_gold:
                raise ValueError("sft mode needs gold responses (response_* / sft_target_* fields); no training "
                                 "record has one")
            if len(with_gold) < len(self.train_examples):
                log.info("sft: %d of %d training records carry a gold response; the others are skipped",
                         len(with_gold), len(self.train_examples))
            self.train_examples = with_gold
        self.reward_fn = None if config.mode == "sft" else build_reward(config.rewards, self.world, 0, codec=codec)
        eval_reward = (build_reward(config.rewards, self.world, EVAL_JUDGE_SEED_OFFSET, codec=codec)
                       if config.mode != "sft" or self.world is not None else None)
        # Every record must carry the columns its rewards read: fail now, naming file:line.
        if self.reward_fn is not None:
            check_columns(self.train_examples, self.reward_fn)
        if eval_reward is not None:
            check_columns(self.eval_examples, eval_reward)
        self.gate = AdaptiveGate(config.gate, device=self.device)
        self.sampler = PromptSampler(len(self.train_examples), config.run.seed)
        self.optimizer, self.scheduler = build_optimizer(self.policy, config)  # with model.lora: the adapters
        self.evaluator = evaluator or build_evaluator(config, examples=self.eval_examples, spec=self.spec,
                                                      tokenizer=self.tokenizer, format=self.format,
                                                      world=self.world, reward_fn=eval_reward, codec=codec,
                                                      adapter=adapter)
        self.collector = Collector(config, policy=self.policy, spec=self.spec, pad_id=self.pad_id,
                                   format=self.format, reward_fn=self.reward_fn, prompt_text=self._prompt_text,
                                   codec=codec, gathered=lambda: fsdp.full_parameters(self.loaded.logprob_module),
                                   adapter=adapter)
        set_masks = None
        if config.scores_sampling_distribution:  # rollout rows are scored under their sampling sets
            set_masks = allowed_set_masks(self.spec, self.policy.get_output_embeddings().weight.shape[0])
        self.logprob_fn = RowLogprobs(self.loaded.trainable, self.pad_id, self.device, set_masks=set_masks,
                                      adapter=adapter)
        self.ref_logprob_fn = (RowLogprobs(self.loaded.reference, self.pad_id, self.device, reshard=self.loaded.sharded,
                                           set_masks=set_masks, adapter=adapter) if self.loaded.reference is not None else None)
        self.step = 0
        self.counters = {"skipped_nonfinite_steps": 0, "judge_failures": 0, "samples_scored": 0}
        self.evaluations: dict[str, dict] = {}
        self.stop_requested = False
        self.run_dir = Path(run_dir) if run_dir else self._run_dir()
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.lock = RunDirLock(self.run_dir)
        if self.is_main:  # before any work: one live run per directory, writable, room for checkpoints
            prepare_run_dir(self.run_dir)
            self.lock.acquire()
            check_free_space(self.run_dir, checkpoint_bytes(self.policy, config.run.keep_checkpoints,
                                                            trainable_only=self.loaded.lora))
            config.to_yaml(self.run_dir / "config.yaml")
        if resume:
            self._resume()
        self.run_log = RunLog(self.run_dir, trackers=config.run.trackers, project=config.run.project,
                              config=config.to_dict(), enabled=self.is_main)
        if resume:
            self.run_log.truncate_after(self.step)

    # ------------------------------------------------------------------ setup
    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    @property
    def reference(self):
        """The frozen reference (ResponseLogprobs; with LoRA the policy's own module with its
        adapters disabled, lora.AdapterDisabledReference), or None unless DPO or a KL penalty."""
        return self.loaded.reference

    def _load_world(self):
        c = self.config
        if not (c.data.source == "world" or c.model.path == "world"
                or any(REWARD_KINDS[r.kind].needs_world for r in c.rewards.components)):
            return None
        from wavalign.world import load_world
        from wavalign.world.config import WorldConfig

        world_config = WorldConfig.named(c.data.world)
        if self.ranks.distributed:  # one process builds, the others wait and load the cache
            world = load_world(world_config) if self.is_main else None
            distributed.barrier()
            return world if self.is_main else load_world(world_config)
        return load_world(world_config)

    def _run_dir(self) -> Path:
        name = self.config.run.name or f"{self.config.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        return Path(self.config.run.output_dir) / distributed.broadcast_object(name)  # every rank agrees

    def _prompt_text(self, example: TrainExample) -> str:
        return judge_prompt_text(example, self.tokenizer)

    def _local_batch(self) -> tuple[list[TrainExample], int]:
        """This rank's prompts of the next global batch, and the global index of its first prompt."""
        indices = self.sampler.next(self.config.optim.prompts_per_step)
        share = len(indices) // self.ranks.world_size
        mine = indices[self.ranks.rank * share:(self.ranks.rank + 1) * share]
        return [self.train_examples[i] for i in mine], self.ranks.rank * share

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step (rollout.num_iterations of them when PPO inner epochs are on)."""
        c = self.config
        start = time.perf_counter()
        batch = self._collect()
        metrics = collect_metrics(batch)
        timings = dict(batch.timings)
        t0 = time.perf_counter()
        self.policy.train()
        learn = LEARN_STEPS[c.mode]
        iterations = c.rollout.num_iterations if batch.rows is not None and c.mode in ("hybrid", "grpo") else 1
        # Micro-batches, accumulation and inner epochs hand each loss share to backward as it is
        # formed; a plain step keeps the one-graph path (and its outputs, bit for bit).
        streamed = c.optim.micro_batch_size > 0 or c.optim.gradient_accumulation_steps > 1 or iterations > 1
        if iterations > 1:  # behaviour log-probs: the policy that sampled, before any update
            with torch.no_grad():
                batch.old_logprobs = self.logprob_fn(batch.rows)[0].detach().float().cpu()
        for iteration in range(iterations):
            if streamed:
                self.optimizer.zero_grad(set_to_none=True)
                loss, learned = learn(batch, self.logprob_fn, self.gate, c, self.ref_logprob_fn,
                                      backward=self._backward)
            else:
                loss, learned = learn(batch, self.logprob_fn, self.gate, c, self.ref_logprob_fn)
            timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - t0
            # the LR schedule counts train steps (rollout batches), not inner updates
            outcome = self._optimize(loss, timings, backward_done=streamed, schedule=iteration == iterations - 1)
            t0 = time.perf_counter()
        metrics.update(learned)
        metrics.update(outcome)
        self._log_completions(batch, learned)
        timings["step"] = time.perf_counter() - start
        metrics = distributed.mean_over_ranks(metrics)
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _collect(self) -> StepBatch:
        """This rank's prompt batches of the step (gradient accumulation: several), collected
        with the current policy and merged, plus the few global quantities learning needs."""
        c = self.config
        batches = []
        for index in range(c.optim.gradient_accumulation_steps):
            examples, first_prompt = self._local_batch()
            # accumulated batches draw their own sample streams and judge keys
            batch = self.collector.collect(examples, step=self.step,
                                           first_prompt=index * c.optim.prompts_per_step + first_prompt)
            self._check_rewards(batch)
            batches.append(batch)
        batch = StepBatch.merge(batches)
        return with_global_quantities(batch, c, self.ranks.world_size, self.ref_logprob_fn is not None,
                                      lambda values: distributed.all_reduce(values, "sum", self.device))

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of one loss share (micro-batch); gradients accumulate until the optimizer step."""
        loss.backward()

    def _log_completions(self, batch: StepBatch, learned: dict) -> None:
        """Completion logs (run.log_completions_every; off by default): every N steps, this
        rank's samples of the step to completions/step_N.jsonl and step_N/<row>.wav (speech
        through the run's codec) and to the trackers. Only rank 0 writes (its own rows)."""
        every, step = self.config.run.log_completions_every, self.step + 1  # the step metrics.jsonl records
        if not (every and step % every == 0 and self.is_main and batch.completions):
            return
        rows = completion_rows(batch, [self._prompt_text(e) for e in batch.examples], learned.get("gate/lambda"))
        self.run_log.write_completions(step, rows, batch.completions, self.codec)

    def _check_rewards(self, batch: StepBatch) -> None:
        """Count samples without a reward (all ranks); stop when the judge fails too often."""
        if batch.rewards is None:
            return
        missing, total = int(torch.isnan(batch.rewards).sum()), batch.rewards.numel()
        g_missing, g_total = distributed.all_reduce([float(missing), float(total)], "sum", self.device)
        self.counters["judge_failures"] += int(g_missing)
        self.counters["samples_scored"] += int(g_total)
        rate = g_missing / max(g_total, 1.0)
        limit = self.config.rewards.max_failure_rate
        if rate > limit:
            raise JudgeFailureError(
                f"step {self.step + 1}: {int(g_missing)} of {int(g_total)} samples ({rate:.0%}) got no reward, over "
                f"rewards.max_failure_rate={limit}; the judge is failing (see the warnings above). Fix the judge "
                f"and resume with --resume.")

    def _optimize(self, loss: torch.Tensor, timings: dict[str, float], *, backward_done: bool = False,
                  schedule: bool = True) -> dict[str, float]:
        """Backward (unless the step already ran it, micro-batch by micro-batch), clip, AdamW,
        LR schedule. A non-finite loss or gradient norm skips the update on every rank."""
        t0 = time.perf_counter()
        finite = distributed.all_reduce([float(torch.isfinite(loss.detach()).all())], "min", self.device)[0]
        if not backward_done:
            self.optimizer.zero_grad(set_to_none=True)
        out = {}
        if not finite:  # every rank skips together, so DDP never waits on a missing backward
            self.counters["skipped_nonfinite_steps"] += 1
            log.warning("step %d: non-finite loss (%s); step skipped", self.step + 1, float(loss.detach()))
            out["skipped_nonfinite"] = 1.0
        else:
            if not backward_done:
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
        if schedule:
            self.scheduler.step()
        timings["optimizer"] = time.perf_counter() - t0
        timings.pop("forward", None)
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, label: str) -> dict[str, float]:
        """Score the policy with the evaluator on the main process; the others wait (under
        FSDP2 they first help gather the weights)."""
        result: dict[str, float] = {}
        with fsdp.full_parameters(self.loaded.logprob_module):
            if self.is_main:
                if self.evaluator.examples:
                    records = self.evaluator.run(self.policy)
                    result = mean_summary(records)
                    # per-prompt records, for paired comparisons with another run (the CLI's baseline)
                    (self.run_dir / "eval").mkdir(exist_ok=True)
                    ckpt.write_text_atomic(self.run_dir / "eval" / f"{label}.jsonl",
                                           "".join(json.dumps(_nan_to_none(r)) + "\n" for r in records))
                else:
                    log.warning("no evaluation examples (set data.eval_path for JSONL data, data.eval_split for "
                                "hf_dataset data); evaluation skipped")
        result = distributed.broadcast_object(result)
        self.evaluations[label] = result
        self.run_log.write({"step": self.step, "kind": "eval", "label": label, **result})
        return result

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self, optimizer_state: dict | None = None) -> dict:
        optimizer_state = self.optimizer.state_dict() if optimizer_state is None else optimizer_state
        return {"step": self.step, "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                "gate": self.gate.state_dict(), "sampler": self.sampler.state_dict(),
                "counters": dict(self.counters), "evaluations": self.evaluations,
                "world_size": self.ranks.world_size, "config": self.config.to_dict()}

    def save(self) -> Path | None:
        states = distributed.gather_objects(ckpt.rng_state())
        weights, optimizer_state = full_states(self.loaded, self.optimizer)  # every rank takes part
        path = None
        if self.is_main:
            extra = {"modality.yaml": _spec_yaml(self.spec)}
            path = ckpt.save_checkpoint(self.checkpoint_root, self.step, model=self.policy, tokenizer=self.tokenizer,
                                        extra_files=extra, trainer_state=self._trainer_state(optimizer_state),
                                        rank_states=states, keep=self.config.run.keep_checkpoints,
                                        state_dict=weights)
        distributed.barrier()
        return path

    def _resume(self) -> None:
        if self.is_main:
            for stale in ckpt.remove_stale_staging(self.checkpoint_root):
                self._say(f"removed {stale}, left by a save that did not finish")
        distributed.barrier()
        path = ckpt.latest_checkpoint(self.checkpoint_root)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.checkpoint_root}")
        state, rank_state = ckpt.load_trainer_state(path, self.ranks.rank)
        if state["world_size"] != self.ranks.world_size:
            raise ValueError(f"{path} was saved by {state['world_size']} processes; resume with the same number "
                             f"(this run has {self.ranks.world_size})")
        changed = self.config.differences_from(state["config"], ignore=("run", "eval"))
        if changed:
            raise ValueError(f"--resume: the config differs from the checkpoint's in {changed}")
        load_states(self.loaded, self.optimizer, path, state["optimizer"], self.device)
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
                if distributed.all_reduce([float(self.stop_requested)], "max", self.device)[0]:
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
                ckpt.write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
                if c.run.plots:
                    plot_run(self.run_dir)
            return summary
        finally:
            self.run_log.close()
            self.lock.release()
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
        self.lock.release()
        distributed.destroy()


def _nan_to_none(record: dict) -> dict:
    """NaN (no score) -> null, so the JSONL is standard JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def _spec_yaml(spec) -> str:
    import yaml

    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
