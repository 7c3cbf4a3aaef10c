"""The training loop: `fit`, optimizer steps, checkpoints, resume and signals. A step is

    batch = collector.collect_step(...)            rollout -> rewards -> group stats -> gate (collect.py)
    loss, stats = learn(batch, logprob_fn, config) one pure function per mode (learn.py)
    optimizer step                                 non-finite loss or gradient: skipped on every rank, counted
    log                                            stats become numbers here, once per step

Everything the loop uses is built once by train/setup.py (build_run); the modes' losses are in
train/learn.py, their math in PAPER.md §3-§7. Under torchrun the global prompt batch is sharded
across ranks.
"""

from __future__ import annotations

import json
import logging
import operator
import signal
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from wavalign.data import TrainExample
from wavalign.train import checkpoint as ckpt
from wavalign.train import distributed, fsdp
from wavalign.train.collect import StepBatch, collect_metrics
from wavalign.train.config import TrainConfig
from wavalign.train.data import PromptSampler
from wavalign.train.evaluator import PolicyEvaluator, evaluate_to_file
from wavalign.train.gate import AdaptiveGate
from wavalign.train.learn import learn
from wavalign.train.model import build_optimizer, full_states, load_states
from wavalign.train.run_dir import RunDirLock, check_free_space, checkpoint_bytes
from wavalign.train.run_dir import prepare as prepare_run_dir
from wavalign.train.run_log import RunLog, as_numbers, completion_rows, plot_run, progress_postfix, require_trackers
from wavalign.train.setup import build_run, start_process

log = logging.getLogger(__name__)


def _part(path: str) -> property:
    """A read-only attribute of the trainer that is one of its Run's parts."""
    get = operator.attrgetter(path)
    return property(lambda self: get(self.run))


class Trainer:
    """world: an already loaded world; evaluator: a PolicyEvaluator to score the policy
    before/after (default: the one the config describes, train.evaluator.build_evaluator)."""

    def __init__(self, config: TrainConfig, *, world=None, resume: bool = False, run_dir: str | Path | None = None,
                 evaluator: PolicyEvaluator | None = None):
        self.config = config
        require_trackers(config.run.trackers)  # before any work: a missing tracker package names its extra
        self.ranks, self.device = start_process(config)
        self.run = build_run(config, device=self.device, ranks=self.ranks, world=world, evaluator=evaluator)
        self.gate = AdaptiveGate(config.gate, device=self.device)
        self.sampler = PromptSampler(len(self.train_examples), config.run.seed)
        self.optimizer, self.scheduler = build_optimizer(self.policy, config)  # with model.lora: the adapters
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

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    # ------------------------------------------------------------------ the run's parts (train/setup.py), read-only
    loaded, policy, tokenizer = _part("loaded"), _part("loaded.policy"), _part("loaded.tokenizer")
    spec, pad_id = _part("loaded.spec"), _part("loaded.pad_id")
    # the frozen reference (ResponseLogprobs; with LoRA the policy's own module with its adapters
    # disabled, lora.AdapterDisabledReference), or None unless DPO or a KL penalty
    reference = _part("loaded.reference")
    world, codec, reward_fn = _part("world"), _part("codec"), _part("reward_fn")
    train_examples, eval_examples = _part("train_examples"), _part("eval_examples")
    skipped_lines = _part("skipped_lines")
    collector, evaluator = _part("collector"), _part("evaluator")
    logprob_fn, ref_logprob_fn = _part("logprob_fn"), _part("ref_logprob_fn")

    def _run_dir(self) -> Path:
        name = self.config.run.name or f"{self.config.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        return Path(self.config.run.output_dir) / distributed.broadcast_object(name)  # every rank agrees

    def _prompt_text(self, example: TrainExample) -> str:
        return self.collector.prompt_text(example)

    def _local_batches(self) -> list[tuple[list[TrainExample], int]]:
        """This rank's prompt batches of the next step (gradient accumulation: several)."""
        o = self.config.optim
        return [([self.train_examples[i] for i in mine], first) for mine, first in self.sampler.rank_batches(
            o.prompts_per_step, o.gradient_accumulation_steps, self.ranks.rank, self.ranks.world_size)]

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step (rollout.num_iterations of them when PPO inner epochs are on)."""
        c = self.config
        start = time.perf_counter()
        self.policy.train()  # the rollout switches to eval mode while it decodes, then back
        inner_epochs = c.rollout.num_iterations > 1 and c.mode in ("hybrid", "grpo")
        batch = self.collector.collect_step(
            self._local_batches(), step=self.step, gate=self.gate, world_size=self.ranks.world_size,
            all_reduce=lambda values: distributed.all_reduce(values, "sum", self.device),
            with_kl=self.ref_logprob_fn is not None,
            behaviour=(lambda rows: self.logprob_fn(rows)[0]) if inner_epochs else None)
        self.counters["judge_failures"] += batch.samples_missing
        self.counters["samples_scored"] += batch.samples_scored
        metrics = collect_metrics(batch)
        timings = dict(batch.timings)
        t0 = time.perf_counter()
        iterations = c.rollout.num_iterations if batch.rows is not None and inner_epochs else 1
        # Micro-batches, accumulation and inner epochs hand each loss share to backward as it is
        # formed; a plain step keeps the one-graph path (and its outputs, bit for bit).
        streamed = c.optim.micro_batch_size > 0 or c.optim.gradient_accumulation_steps > 1 or iterations > 1
        for iteration in range(iterations):
            if streamed:
                self.optimizer.zero_grad(set_to_none=True)
            loss, stats = learn(batch, self.logprob_fn, c, self.ref_logprob_fn,
                                backward=self._backward if streamed else None)
            timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - t0
            # the LR schedule counts train steps (rollout batches), not inner updates
            outcome = self._optimize(loss, timings, backward_done=streamed, schedule=iteration == iterations - 1)
            t0 = time.perf_counter()
        learned = as_numbers(stats)
        metrics.update(learned)
        metrics.update(outcome)
        self._log_completions(batch, learned)
        timings["step"] = time.perf_counter() - start
        metrics = distributed.mean_over_ranks(metrics)
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

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

    def _optimize(self, loss: torch.Tensor, timings: dict[str, float], *, backward_done: bool = False,
                  schedule: bool = True) -> dict[str, float]:
        """Backward (unless the step already ran it, micro-batch by micro-batch), clip, AdamW,
        LR schedule. A non-finite loss or gradient norm skips the update on every rank."""
        t0 = time.perf_counter()
        finite = distributed.all_reduce([float(torch.isfinite(loss.detach()).all())], "min", self.device)[0]
        if not backward_done:
            self.optimizer.zero_grad(set_to_none=True)
        out = {}

        def skip(why: str) -> None:
            self.counters["skipped_nonfinite_steps"] += 1
            log.warning("step %d: %s; step skipped", self.step + 1, why)
            out["skipped_nonfinite"] = 1.0

        if not finite:  # every rank skips together, so DDP never waits on a missing backward
            skip(f"non-finite loss ({float(loss.detach())})")
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
                skip("non-finite gradient norm")
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
            if self.is_main:  # per-prompt records go to eval/<label>.jsonl (paired comparisons between runs)
                result = evaluate_to_file(self.evaluator, self.policy, self.run_dir / "eval" / f"{label}.jsonl")
        result = distributed.broadcast_object(result)
        self.evaluations[label] = result
        self.run_log.write({"step": self.step, "kind": "eval", "label": label, **result})
        return result

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self, optimizer_state: dict | None) -> dict:
        """optimizer_state: the full optimizer state (FSDP2 gathers it), None: this process's own."""
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
            extra = {"modality.yaml": yaml.safe_dump(self.spec.to_dict(), sort_keys=False)}
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
        ckpt.check_resumable(path, state, self.config, self.ranks.world_size)
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
                bar.set_postfix(progress_postfix(metrics), refresh=False)
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

    def _say(self, message: str) -> None:
        if self.is_main:
            print(f"[train] {message}", flush=True)

    def close(self) -> None:
        self.lock.release()
        distributed.destroy()
