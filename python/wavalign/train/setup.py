"""Everything a run needs, built once, before the loop: `build_run(config) -> Run`.

    run = build_run(config, world=None, device=device, ranks=ranks)
    run.collector.collect_step(...)   # rollouts, rewards, group statistics (train/collect.py)
    learn(batch, run.logprob_fn, ...) # the loss (train/learn.py)
    run.evaluator.run(run.policy)     # held-out scores, through the same collector

The order of the steps below is the order the seeded RNG is consumed in (LoRA adapters draw
their initial weights), so a run is reproducible from its seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch

from wavalign.data import TrainExample, judge_prompt_text
from wavalign.logprobs import RowLogprobs, allowed_set_masks
from wavalign.train import distributed, fsdp
from wavalign.train.collect import Collector
from wavalign.train.data import check_columns, load_examples
from wavalign.train.distributed import Ranks, pick_device
from wavalign.train.evaluator import PolicyEvaluator, build_evaluator
from wavalign.train.model import LoadedPolicy, load_codec, load_policy
from wavalign.train.rewards import EVAL_JUDGE_SEED_OFFSET, REWARD_KINDS, build_reward

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The parts of a training run (see the module docstring)."""

    world: object | None  # the built-in world, when the data, the policy or a judge comes from it
    loaded: LoadedPolicy  # policy, tokenizer, spec, format, log-prob modules, reference
    codec: object | None  # the SpeechCodec rewards listen through (speech.codec; the world's by default)
    train_examples: list[TrainExample]
    eval_examples: list[TrainExample]
    skipped_lines: int  # malformed records skipped (data.skip_bad_lines)
    reward_fn: object | None  # the training judges (CompositeReward); None in sft mode
    collector: Collector  # rollout -> rewards -> group statistics, with its rollout engine
    evaluator: PolicyEvaluator  # the same path, greedy, with the evaluation judges
    logprob_fn: RowLogprobs  # rows -> log-probs under the trained policy
    ref_logprob_fn: RowLogprobs | None  # under the frozen reference (DPO, KL penalty), else None


def needs_world(config) -> bool:
    """Whether the run reads the built-in world: its data, its policy or one of its judges."""
    return (config.data.source == "world" or config.model.path == "world"
            or any(REWARD_KINDS[r.kind].needs_world for r in config.rewards.components))


def load_world_for(config, ranks: Ranks):
    """The world the config names (built once, cached), or None when the run needs none.
    Under torchrun one process builds it while the others wait, then they load the cache."""
    if not needs_world(config):
        return None
    from wavalign.world import load_world
    from wavalign.world.config import WorldConfig

    world_config = WorldConfig.named(config.data.world)
    if ranks.distributed:
        world = load_world(world_config) if ranks.is_main else None
        distributed.barrier()
        return world if ranks.is_main else load_world(world_config)
    return load_world(world_config)


def start_process(config) -> tuple[Ranks, torch.device]:
    """This process's place in the job and its device: joins the process group under torchrun,
    checks the prompt batch shards evenly, sets the CPU threads and seeds the RNG (before any
    model is built, so a run is reproducible from run.seed)."""
    ranks = Ranks.from_env()
    if ranks.distributed:
        distributed.init_process_group(config.distributed.backend, config.run.device,
                                       cpu_offload=config.distributed.cpu_offload)
    if config.optim.prompts_per_step % ranks.world_size:
        raise ValueError(f"optim.prompts_per_step={config.optim.prompts_per_step} must be divisible by the "
                         f"number of processes ({ranks.world_size})")
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    device = pick_device(config.run.device, ranks.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return ranks, device


def build_run(config, *, device: torch.device, ranks: Ranks | None = None, world=None,
              evaluator: PolicyEvaluator | None = None) -> Run:
    """world: an already loaded world (default: the one the config needs, if any); evaluator:
    one to use instead of the config's (tests, custom metrics)."""
    ranks = ranks or Ranks.from_env()
    world = world if world is not None else load_world_for(config, ranks)
    loaded = load_policy(config, world, device, ranks)
    codec = load_codec(config, world)  # speech.codec (default: the world's, if any)
    train_examples, eval_examples, skipped = load_examples(config, world, loaded.format, loaded.spec.vocab_size,
                                                           codec)
    if config.mode == "sft":
        train_examples = _with_gold(train_examples)
    reward_fn = None if config.mode == "sft" else build_reward(config.rewards, world, 0, codec=codec)
    eval_reward = (build_reward(config.rewards, world, EVAL_JUDGE_SEED_OFFSET, codec=codec)
                   if config.mode != "sft" or world is not None else None)
    # Every record must carry the columns its rewards read: fail now, naming file:line.
    if reward_fn is not None:
        check_columns(train_examples, reward_fn)
    if eval_reward is not None:
        check_columns(eval_examples, eval_reward)
    prompt_text = partial(judge_prompt_text, tokenizer=loaded.tokenizer)
    collector = Collector(config, policy=loaded.policy, spec=loaded.spec, pad_id=loaded.pad_id, format=loaded.format,
                          reward_fn=reward_fn, prompt_text=prompt_text, codec=codec, adapter=loaded.adapter,
                          gathered=lambda: fsdp.full_parameters(loaded.logprob_module))
    evaluator = evaluator or build_evaluator(config, examples=eval_examples, spec=loaded.spec,
                                             tokenizer=loaded.tokenizer, format=loaded.format, world=world,
                                             reward_fn=eval_reward, codec=codec, adapter=loaded.adapter,
                                             collector=collector)
    set_masks = None
    if config.scores_sampling_distribution:  # rollout rows are scored under their sampling sets
        set_masks = allowed_set_masks(loaded.spec, loaded.policy.get_output_embeddings().weight.shape[0])
    logprob_fn = RowLogprobs(loaded.trainable, loaded.pad_id, device, set_masks=set_masks, adapter=loaded.adapter)
    ref_logprob_fn = None
    if loaded.reference is not None:
        ref_logprob_fn = RowLogprobs(loaded.reference, loaded.pad_id, device, reshard=loaded.sharded,
                                     set_masks=set_masks, adapter=loaded.adapter)
    return Run(world=world, loaded=loaded, codec=codec, train_examples=train_examples, eval_examples=eval_examples,
               skipped_lines=skipped, reward_fn=reward_fn, collector=collector, evaluator=evaluator,
               logprob_fn=logprob_fn, ref_logprob_fn=ref_logprob_fn)


def _with_gold(examples: list[TrainExample]) -> list[TrainExample]:
    """SFT learns from gold only: prompt-only records have nothing to teach it."""
    with_gold = [e for e in examples if e.response_ids is not None]
    if not with_gold:
        raise ValueError("sft mode needs gold responses (response_* / sft_target_* fields); no training record has one")
    if len(with_gold) < len(examples):
        log.info("sft: %d of %d training records carry a gold response; the others are skipped",
                 len(with_gold), len(examples))
    return with_gold
