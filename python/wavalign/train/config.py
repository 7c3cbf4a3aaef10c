"""TrainConfig: every knob of `python -m wavalign.train`, as frozen dataclasses.

Loaded from YAML (``safe_load``) and ``--set section.field=value`` overrides (the value is
parsed as YAML: ``--set optim.lr=1e-4``, ``--set rollout.group_size=8``,
``--set data.world=fast``). Every value is checked before any work starts and an invalid
one fails naming its field (``optim.lr must be > 0, got -1``).

    config = TrainConfig.load("configs/train/world.yaml", overrides=["optim.steps=20"])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from wavalign.sampling_params import ModalitySampling
from wavalign.train.gate import GateConfig
from wavalign.train.rewards import REWARD_KINDS
from wavalign.train.run_log import TRACKERS
from wavalign.train.losses import DPO_LOSS_TYPES, EMPTY_SCOPE, PG_NORMALIZATIONS, SCOPES, SFT_NORMALIZATIONS
from wavalign.yaml_config import load_mapping, safe_load  # noqa: F401  (safe_load re-exported)

MODES = ("hybrid", "grpo", "sft", "dpo")
DTYPES = ("float32", "bfloat16", "float16")
DATA_SOURCES = ("world", "jsonl", "hf_dataset")
DATA_FORMATS = ("auto", "wavalign", "public")
ADVANTAGES = ("grpo", "dr_grpo", "rloo")
# objective.loss_type -> the policy-gradient normalisation it uses (losses.PG_NORMALIZATIONS)
LOSS_TYPES = {"grpo": "sequence_mean", "dr_grpo": "constant", "dapo": "constant", "bnpo": "token_mean"}
SCALE_REWARDS = ("group", "batch", "none")
SCHEDULES = ("cosine", "linear", "constant")
PAIR_SOURCES = ("auto", "offline", "rollout", "gold")
STRATEGIES = ("ddp", "fsdp2")
ROLLOUT_BACKENDS = ("engine", "hf_generate")
KV_CACHES = ("auto", "static", "dynamic")
CODEC_KINDS = ("world", "python", "http", "onnx", "none")  # wavalign.codecs.build_codec


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(value, allowed: Sequence, name: str) -> None:
    _check(value in allowed, f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _positive(value, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    _check(ok, f"{name} must be {'an integer' if integer else 'a number'} {'>= 0' if allow_zero else '> 0'}, "
               f"got {value!r}")


def _fraction(value, name: str) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
           f"{name} must be a number in [0, 1], got {value!r}")


def _type_weights(value, name: str) -> None:
    if value is None:
        return
    _check(isinstance(value, (list, tuple)) and len(value) == 2
           and all(isinstance(w, (int, float)) and w >= 0 and math.isfinite(w) for w in value),
           f"{name} must be two numbers >= 0 (text, speech) or null, got {value!r}")


@dataclass(frozen=True)
class LoraConfig:
    """model.lora: train low-rank adapters (PEFT's LoRA) instead of the full weights. The
    reference for DPO / a KL penalty is then the base with its adapters disabled."""

    r: int = 8  # adapter rank
    alpha: float = 16.0  # scaling alpha / r
    dropout: float = 0.0  # dropout on the adapter input (training only)
    target_modules: tuple | str = "all-linear"  # module names (e.g. [q_proj, v_proj]) or "all-linear"

    def validate(self) -> None:
        _positive(self.r, "model.lora.r", integer=True)
        _positive(self.alpha, "model.lora.alpha")
        _check(isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
               and 0.0 <= self.dropout < 1.0, f"model.lora.dropout must be a number in [0, 1), got {self.dropout!r}")
        names = self.target_modules
        _check(names == "all-linear" or (isinstance(names, (list, tuple)) and len(names) > 0
                                         and all(isinstance(n, str) and n for n in names)),
               f"model.lora.target_modules must be 'all-linear' or a non-empty list of module names, got {names!r}")


@dataclass(frozen=True)
class ModelConfig:
    path: str = "world"  # "world": the built-in world's policy; else a local Hugging Face model directory
    dtype: str = "float32"
    # ModalitySpec: a YAML file or preset name; None = <model dir>/modality.yaml, else read off the tokenizer
    modality: str | None = None
    schedule: dict | None = None  # overrides the spec's interleave schedule, e.g. {kind: chunked, text: 13, speech: 26}
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None  # None: train every weight; {r, alpha, dropout, target_modules}: LoRA (peft)
    # Run the model directory's own modeling code (config.json auto_map), as VITA-Audio ships.
    # Only for directories you trust: it executes their Python files.
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 | ...; None: transformers' choice
    # A ModelAdapter for models that need more than input ids (audio features of a spoken prompt,
    # a custom loader): {factory: "package.module:name", init: {...}}; None: any HF causal LM.
    adapter: dict | None = None

    def validate(self) -> None:
        _one_of(self.dtype, DTYPES, "model.dtype")
        _check(isinstance(self.trust_remote_code, bool),
               f"model.trust_remote_code must be true or false, got {self.trust_remote_code!r}")
        _check(self.attn_implementation is None or (isinstance(self.attn_implementation, str)
                                                    and self.attn_implementation != ""),
               f"model.attn_implementation must be a name (eager, sdpa, flash_attention_2, ...) or null, "
               f"got {self.attn_implementation!r}")
        if self.adapter is not None:
            _check(isinstance(self.adapter, dict) and isinstance(self.adapter.get("factory"), str)
                   and self.adapter["factory"].count(":") == 1,
                   f"model.adapter must be {{factory: 'package.module:name', init: {{...}}}} or null, "
                   f"got {self.adapter!r}")
            unknown = sorted(set(self.adapter) - {"factory", "init"})
            _check(not unknown, f"model.adapter: unknown keys {unknown} (allowed: factory, init)")
            _check(isinstance(self.adapter.get("init", {}), dict), "model.adapter.init must be a mapping")
        if self.lora is not None:
            _check(isinstance(self.lora, LoraConfig), "model.lora must be a mapping {r, alpha, dropout, "
                                                      "target_modules} or null")
            self.lora.validate()
        if self.schedule is not None:
            from wavalign.modality import Schedule

            try:
                Schedule(**self.schedule)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"model.schedule: {error}") from None
        _check(isinstance(self.path, str) and self.path != "", "model.path must be 'world' or a model directory")


@dataclass(frozen=True)
class DataConfig:
    source: str = "world"  # world: the built-in world's splits; jsonl: train_path / eval_path; hf_dataset: path
    world: str = "default"  # default | fast | a WorldConfig YAML file
    train_path: str | None = None
    eval_path: str | None = None
    # hf_dataset (needs the [datasets] extra): a save_to_disk directory, a directory of data files
    # (parquet, json, csv, ...; splits from the file names) or one data file (its one split is "train")
    path: str | None = None
    split: str = "train"
    eval_split: str | None = None  # e.g. "test"; None: no evaluation examples
    format: str = "auto"  # auto | wavalign (docs/data_format.md) | public (the WavAlign release's records)
    skip_bad_lines: bool = False  # skip (and count) malformed records instead of failing at file:line
    max_prompt_tokens: int = 2048

    def validate(self) -> None:
        _one_of(self.source, DATA_SOURCES, "data.source")
        _one_of(self.format, DATA_FORMATS, "data.format")
        _positive(self.max_prompt_tokens, "data.max_prompt_tokens", integer=True)
        if self.source == "jsonl":
            _check(bool(self.train_path), "data.train_path is required when data.source is 'jsonl'")
        if self.source == "hf_dataset":
            _check(isinstance(self.path, str) and self.path != "",
                   "data.path is required when data.source is 'hf_dataset' (a datasets.save_to_disk directory, "
                   "a directory of data files or one data file)")
        _check(isinstance(self.split, str) and self.split != "", f"data.split must be a split name, got {self.split!r}")
        _check(self.eval_split is None or (isinstance(self.eval_split, str) and self.eval_split != ""),
               f"data.eval_split must be a split name or null, got {self.eval_split!r}")


def _text_sampling() -> ModalitySampling:
    return ModalitySampling(temperature=0.7)  # the public code's value; the paper says 0.9


# The speech section has the text section's fields, each None = "as for text".
SpeechSampling = dataclasses.make_dataclass(
    "SpeechSampling", [(f.name, f.type, field(default=None)) for f in dataclasses.fields(ModalitySampling)],
    frozen=True)
SpeechSampling.__doc__ = "Speech-token sampling: any field left None follows the text section."

# Keys of pre-1.0 configs that are errors now, and what to write instead (CHANGELOG.md).
_REPLACED_KEYS = {"rollout.temperature": "rollout.text.temperature", "rollout.top_p": "rollout.text.top_p",
                  "rollout.top_k": "rollout.text.top_k", "rollout.speech_temperature": "rollout.speech.temperature",
                  "objective.pg_normalization": "objective.loss_type (sequence_mean is grpo, token_mean is bnpo)"}


@dataclass(frozen=True)
class RolloutConfig:
    group_size: int = 4  # G samples per prompt
    max_new_tokens: int = 160
    num_iterations: int = 1  # PPO inner epochs: updates per batch of rollouts (behaviour log-probs stored)
    # engine: wavalign's batched decode loop (prefill once per prompt, native sampler);
    # hf_generate: the model's own generate() under InterleaveLogitsProcessor, for models whose
    # forward does not fit the engine's cache handling (log-probs recomputed by a forward).
    backend: str = "engine"
    # The engine's KV cache. static: buffers allocated once per rollout, each step writes one
    # slot (bit-identical to transformers' cache; Llama/Qwen2 with sdpa attention); dynamic:
    # transformers' own cache (any model); auto: static where the model allows it.
    kv_cache: str = "auto"
    # Capture the engine's decode step in CUDA graphs, one per batch-size bucket (CUDA only,
    # needs the static cache; agrees with the eager step up to rounding, not bit for bit).
    cuda_graphs: bool = False
    text: ModalitySampling = field(default_factory=_text_sampling)  # text-token sampling (all seven fields)
    speech: SpeechSampling = field(default_factory=SpeechSampling)  # speech-token sampling; None = as text

    def validate(self) -> None:
        _positive(self.group_size, "rollout.group_size", integer=True)
        _positive(self.max_new_tokens, "rollout.max_new_tokens", integer=True)
        _positive(self.num_iterations, "rollout.num_iterations", integer=True)
        _one_of(self.backend, ROLLOUT_BACKENDS, "rollout.backend")
        _one_of(self.kv_cache, KV_CACHES, "rollout.kv_cache")
        _check(isinstance(self.cuda_graphs, bool), f"rollout.cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        _check(not self.cuda_graphs or (self.backend == "engine" and self.kv_cache != "dynamic"),
               "rollout.cuda_graphs needs rollout.backend engine and a static kv_cache (auto or static)")
        _check(isinstance(self.text, ModalitySampling), "rollout.text must be a mapping of sampling fields")
        try:
            self.speech_sampling
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None

    @property
    def text_sampling(self) -> ModalitySampling:
        return self.text

    @property
    def speech_sampling(self) -> ModalitySampling:
        """The speech section over the text section."""
        given = {k: v for k, v in dataclasses.asdict(self.speech).items() if v is not None}
        return ModalitySampling.from_dict(given, where="rollout.speech", base=self.text)


@dataclass(frozen=True)
class RewardComponent:
    name: str
    kind: str  # a key of wavalign.train.rewards.REWARD_KINDS, which documents each
    weight: float = 1.0
    options: dict = field(default_factory=dict)  # the kind's constructor arguments (http_judge: JudgeConfig fields)

    def validate(self, where: str) -> None:
        _check(isinstance(self.name, str) and self.name, f"{where}.name must be a non-empty string")
        _one_of(self.kind, tuple(REWARD_KINDS), f"{where}.kind")
        _positive(self.weight, f"{where}.weight")
        _check(isinstance(self.options, dict), f"{where}.options must be a mapping")
        required = REWARD_KINDS[self.kind].required_option
        if required is not None:
            _check(required in self.options, f"{where}.options.{required} is required for a {self.kind} reward")
        if self.kind == "http_judge":
            _check("api_key" not in self.options,
                   f"{where}.options must not hold an API key; set api_key_env to the NAME of an environment variable")


def _default_rewards() -> tuple[RewardComponent, ...]:
    # The paper's split judgement: semantic 0.7 + acoustic 0.3, on the 1-5 scale.
    return (RewardComponent("semantic_judge", "world_semantic", 0.7),
            RewardComponent("acoustic_judge", "world_acoustic", 0.3))


@dataclass(frozen=True)
class RewardsConfig:
    components: tuple[RewardComponent, ...] = field(default_factory=_default_rewards)
    missing: str = "drop"  # a sample missing any component gets no reward ("renormalize": weights rescaled)
    normalize_weights: bool = True  # divide by the weight sum, keeping the judges' 1-5 scale for the gate
    max_failure_rate: float = 0.5  # stop when more than this fraction of a step's samples has no reward
    judge_seed: int = 0

    def validate(self) -> None:
        _check(len(self.components) > 0, "rewards.components must name at least one reward")
        names = [c.name for c in self.components]
        _check(len(set(names)) == len(names), f"rewards.components names must be unique, got {names}")
        for index, component in enumerate(self.components):
            component.validate(f"rewards.components[{index}]")
        _one_of(self.missing, ("drop", "renormalize"), "rewards.missing")
        _fraction(self.max_failure_rate, "rewards.max_failure_rate")


@dataclass(frozen=True)
class ObjectiveConfig:
    rl_scope: str = "text"  # WavAlign: preference RL on the semantic tokens only
    rl_type_weights: tuple | None = None  # (text, speech), overrides rl_scope
    sft_scope: str = "all"  # the public launch script anchors every gold token
    sft_type_weights: tuple | None = None
    # How the RL term is normalised (TRL's names): grpo = per-sequence token mean, then mean
    # over sequences; dr_grpo = sum / (rows x rollout.max_new_tokens); dapo = token mean over
    # the global batch (token counts summed over ranks and accumulation steps); bnpo = token
    # mean over this rank's batch.
    loss_type: str = "grpo"
    # Advantage scale (advantage grpo): group = (r - group mean) / (group std + eps); batch =
    # (r - group mean) / (std of the whole global batch + eps); none = r - group mean.
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False  # completions cut by max_new_tokens get no RL gradient
    epsilon: float = 0.2  # PPO clip (used when rollout.num_iterations > 1): ratio in [1 - eps, 1 + eps_high]
    epsilon_high: float | None = None  # None: same as epsilon
    # Which distribution rollout tokens are scored under in the RL term: raw = the model's
    # softmax at temperature 1 over the whole vocabulary (the default);
    # sampling = the distribution the sampler drew from (each token's phase temperature,
    # softmax over its interleave set's ids), as TRL scores at the rollout temperature.
    # top-k / top-p / min-p / penalties are not reproduced. auto: sampling when PPO inner
    # epochs are on (rollout.num_iterations > 1), else raw (the embedded default's table).
    logprobs: str = "auto"
    sft_normalization: str = "token_mean"
    advantage: str = "grpo"
    advantage_std: str = "population"
    advantage_eps: float = 1e-4
    kl_beta_text: float = 0.0  # > 0 loads a frozen reference model
    kl_beta_speech: float = 0.0
    empty_scope: str = "skip"

    def validate(self) -> None:
        _one_of(self.rl_scope, tuple(SCOPES), "objective.rl_scope")
        _one_of(self.sft_scope, tuple(SCOPES), "objective.sft_scope")
        _type_weights(self.rl_type_weights, "objective.rl_type_weights")
        _type_weights(self.sft_type_weights, "objective.sft_type_weights")
        _one_of(self.loss_type, tuple(LOSS_TYPES), "objective.loss_type")
        _one_of(self.logprobs, ("auto", "raw", "sampling"), "objective.logprobs")
        _one_of(self.scale_rewards, SCALE_REWARDS, "objective.scale_rewards")
        _check(self.scale_rewards == "group" or self.advantage == "grpo",
               f"objective.scale_rewards={self.scale_rewards!r} applies to objective.advantage 'grpo' only, "
               f"not {self.advantage!r}")
        _check(isinstance(self.mask_truncated_completions, bool),
               f"objective.mask_truncated_completions must be true or false, got {self.mask_truncated_completions!r}")
        _check(isinstance(self.epsilon, (int, float)) and not isinstance(self.epsilon, bool) and 0 < self.epsilon < 1,
               f"objective.epsilon must be in (0, 1), got {self.epsilon!r}")
        if self.epsilon_high is not None:
            _positive(self.epsilon_high, "objective.epsilon_high")
        _one_of(self.sft_normalization, SFT_NORMALIZATIONS, "objective.sft_normalization")
        _one_of(self.advantage, ADVANTAGES, "objective.advantage")
        _one_of(self.advantage_std, ("population", "sample"), "objective.advantage_std")
        _positive(self.advantage_eps, "objective.advantage_eps", allow_zero=True)
        _positive(self.kl_beta_text, "objective.kl_beta_text", allow_zero=True)
        _positive(self.kl_beta_speech, "objective.kl_beta_speech", allow_zero=True)
        _one_of(self.empty_scope, EMPTY_SCOPE, "objective.empty_scope")


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    scope: str = "text"
    type_weights: tuple | None = None
    pairs: str = "auto"  # auto: offline when records hold rejected_*, else rollout; gold: gold vs a sampled reject
    pair_score: str = "sum"  # sum | weighted | <reward component name>
    min_gap: float = 1.0

    def validate(self) -> None:
        _positive(self.beta, "dpo.beta")
        _one_of(self.loss_type, DPO_LOSS_TYPES, "dpo.loss_type")
        _check(isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 0.5,
               f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        _one_of(self.scope, tuple(SCOPES), "dpo.scope")
        _type_weights(self.type_weights, "dpo.type_weights")
        _one_of(self.pairs, PAIR_SOURCES, "dpo.pairs")
        _positive(self.min_gap, "dpo.min_gap", allow_zero=True)


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 80
    prompts_per_step: int = 16  # global batch of prompts (each gives group_size rollouts)
    lr: float = 2e-4
    warmup_steps: int = 10
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.2  # 0 = no clipping
    # rows (rollouts + gold, stacked) per forward/backward; 0 = all rows at once. Losses are
    # normalised over the whole step, so the gradient equals the one-batch gradient.
    micro_batch_size: int = 0
    gradient_accumulation_steps: int = 1  # prompt batches (optim.prompts_per_step each) per optimizer step

    def validate(self) -> None:
        _positive(self.steps, "optim.steps", integer=True)
        _positive(self.prompts_per_step, "optim.prompts_per_step", integer=True)
        _positive(self.lr, "optim.lr")
        _positive(self.warmup_steps, "optim.warmup_steps", integer=True, allow_zero=True)
        _one_of(self.schedule, SCHEDULES, "optim.schedule")
        _fraction(self.min_lr_ratio, "optim.min_lr_ratio")
        _check(isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
               and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
               f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        _positive(self.weight_decay, "optim.weight_decay", allow_zero=True)
        _positive(self.grad_clip, "optim.grad_clip", allow_zero=True)
        _positive(self.micro_batch_size, "optim.micro_batch_size", integer=True, allow_zero=True)
        _positive(self.gradient_accumulation_steps, "optim.gradient_accumulation_steps", integer=True)


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    limit: int | None = None  # first N examples only
    temperature: float = 0.0  # greedy
    before: bool = True  # evaluate the base policy before training
    after: bool = True
    every: int = 0  # also evaluate every N steps (0 = never), logged as eval/*
    # "sft": after training, also train the SFT-only baseline on the same gold (same steps,
    # prompts per step and learning rate, from the same base policy) and print base | SFT only |
    # trained with paired CIs of trained - SFT only (the CLI; the embedded default does this)
    baseline: str | None = None

    def validate(self) -> None:
        _one_of(self.split, ("train", "dev", "test"), "eval.split")
        _one_of(self.baseline, (None, "sft"), "eval.baseline")
        if self.limit is not None:
            _positive(self.limit, "eval.limit", integer=True)
        _positive(self.temperature, "eval.temperature", allow_zero=True)
        _positive(self.every, "eval.every", integer=True, allow_zero=True)


@dataclass(frozen=True)
class RunConfig:
    name: str | None = None  # None: "<mode>-<timestamp>"
    output_dir: str = "runs"
    seed: int = 0
    save_every: int = 50  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    # where scalars go besides metrics.jsonl (always written): tensorboard, wandb, trackio, mlflow
    report_to: tuple = ("tensorboard",)
    tensorboard: bool = True  # false drops "tensorboard" from report_to (the older switch, kept)
    project: str = "wavalign"  # the wandb / trackio project, the mlflow experiment
    log_completions_every: int = 0  # every N steps write completions/step_N.jsonl (+ WAVs); 0 = never
    plots: bool = True
    progress: bool = True
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default)

    def validate(self) -> None:
        if self.name is not None:
            _check(isinstance(self.name, str) and self.name and "/" not in self.name and self.name not in (".", ".."),
                   f"run.name must be a plain directory name, got {self.name!r}")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool), f"run.seed must be an int, got {self.seed!r}")
        _positive(self.save_every, "run.save_every", integer=True, allow_zero=True)
        _positive(self.keep_checkpoints, "run.keep_checkpoints", integer=True)
        _one_of(self.device, ("auto", "cpu", "cuda"), "run.device")
        _positive(self.threads, "run.threads", integer=True, allow_zero=True)
        _check(isinstance(self.report_to, (list, tuple)) and all(isinstance(t, str) for t in self.report_to),
               f"run.report_to must be a list drawn from {TRACKERS}, e.g. [tensorboard, wandb], got {self.report_to!r}")
        for tracker in self.report_to:
            _one_of(tracker, TRACKERS, "run.report_to")
        _check(len(set(self.report_to)) == len(self.report_to), f"run.report_to repeats a tracker: {self.report_to!r}")
        _check(isinstance(self.tensorboard, bool), f"run.tensorboard must be true or false, got {self.tensorboard!r}")
        _check(isinstance(self.project, str) and self.project != "", f"run.project must be a non-empty string, got "
                                                                        f"{self.project!r}")
        _positive(self.log_completions_every, "run.log_completions_every", integer=True, allow_zero=True)

    @property
    def trackers(self) -> tuple[str, ...]:
        """report_to, less "tensorboard" when run.tensorboard is false."""
        return tuple(t for t in self.report_to if t != "tensorboard" or self.tensorboard)


@dataclass(frozen=True)
class DistributedConfig:
    strategy: str = "ddp"  # under torchrun: ddp, or fsdp2 (parameters sharded) for large models
    backend: str = "auto"  # auto: nccl on GPU, gloo on CPU
    cpu_offload: bool = False  # fsdp2: keep parameters, gradients and optimizer state on the CPU between uses

    def validate(self) -> None:
        _one_of(self.strategy, STRATEGIES, "distributed.strategy")
        _one_of(self.backend, ("auto", "nccl", "gloo"), "distributed.backend")
        _check(isinstance(self.cpu_offload, bool), f"distributed.cpu_offload must be true or false, "
                                                   f"got {self.cpu_offload!r}")
        _check(not self.cpu_offload or self.strategy == "fsdp2",
               "distributed.cpu_offload needs distributed.strategy=fsdp2")


@dataclass(frozen=True)
class SpeechConfig:
    """The speech codec that turns the policy's speech units into audio (for rewards that
    listen, completion logs and rollout --wav-dir) and audio files into units (spoken prompts,
    gold answers of public-format records). wavalign.codecs documents each kind's options."""

    codec: str | None = None  # world | python | http | onnx | none; None: the world's when a world is loaded
    options: dict = field(default_factory=dict)  # the kind's options (python: {factory, init}; http: urls, ...)

    def validate(self) -> None:
        _check(self.codec is None or self.codec in CODEC_KINDS,
               f"speech.codec must be one of {list(CODEC_KINDS)} or null, got {self.codec!r}")
        _check(isinstance(self.options, dict), f"speech.options must be a mapping, got {self.options!r}")
        _check(not self.options or self.codec not in (None, "none", "world"),
               f"speech.options apply to the python, http and onnx codecs, not {self.codec!r}")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "hybrid"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)

    def __post_init__(self):
        _one_of(self.mode, MODES, "mode")
        for section in ("model", "data", "rollout", "rewards", "objective", "dpo", "optim", "eval", "run",
                        "distributed", "speech"):
            getattr(self, section).validate()
        if self.scores_sampling_distribution:
            for section, sampling in (("text", self.rollout.text_sampling), ("speech", self.rollout.speech_sampling)):
                _check(sampling.temperature > 0, f"objective.logprobs={self.objective.logprobs} scores tokens at their "
                                                 f"sampling temperature (rollout.num_iterations="
                                                 f"{self.rollout.num_iterations}); rollout.{section}.temperature "
                                                 f"must be > 0")
        _check(not (self.rollout.cuda_graphs and self.distributed.strategy == "fsdp2"),
               "rollout.cuda_graphs needs whole (unsharded) weights; it cannot run with distributed.strategy=fsdp2")
        if self.mode == "dpo" and self.dpo.pairs == "offline":
            _check(self.data.source in ("jsonl", "hf_dataset"),
                   "dpo.pairs 'offline' reads rejected responses from JSONL or hf_dataset data")

    # ------------------------------------------------------------------ building
    @property
    def scores_sampling_distribution(self) -> bool:
        """objective.logprobs resolved: are rollout tokens scored under the sampler's distribution?"""
        return self.objective.logprobs == "sampling" or (self.objective.logprobs == "auto"
                                                         and self.rollout.num_iterations > 1)

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is loaded only for DPO or a KL penalty."""
        return self.mode == "dpo" or (self.mode in ("hybrid", "grpo")
                                      and (self.objective.kl_beta_text > 0 or self.objective.kl_beta_speech > 0))

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def differences_from(self, saved: dict, ignore: Sequence[str] = ()) -> list[str]:
        """The fields (section.field, or 'mode') where a saved config dict differs from this one;
        a field the saved config lacks (added since) counts as its default."""
        now, default = self.to_dict(), TrainConfig().to_dict()
        changed = sorted(f"{s}.{k}" for s in now if isinstance(now[s], dict) and s not in ignore
                         for k in now[s] if saved.get(s, {}).get(k, default[s].get(k)) != now[s][k])
        return (["mode"] if saved.get("mode") != now["mode"] else []) + changed

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> "TrainConfig":
        """A YAML file (or the defaults when None), then `section.field=value` overrides."""
        data: dict = {}
        if path is not None:
            data = load_mapping(path, "config sections", allow_empty=True, kind="config file", error=ConfigError)
        for override in overrides:
            apply_override(data, override)
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def apply_override(data: dict, override: str) -> None:
    """`a.b.c=value` (value parsed as YAML) into the nested mapping `data`, in place."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.field=value, got {override!r}")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({error})") from None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build(cls, data: Any, where: str):
    """Recursively turn a mapping into the dataclass `cls`, naming unknown or mistyped fields."""
    label = where or "config"
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    for key in unknown:
        path = (where + "." if where else "") + key
        if path in _REPLACED_KEYS:
            raise ConfigError(f"{path} is not a config field; use {_REPLACED_KEYS[path]}")
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join((where + '.' if where else '') + u for u in unknown)}; "
                          f"{label} has: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        nested = _NESTED.get((cls, name))
        if nested is ModalitySampling and isinstance(value, dict):  # errors name rollout.text.<field>
            try:
                default = fields[name].default_factory()  # fields not given keep the section's defaults
                kwargs[name] = ModalitySampling.from_dict(value, where=path, base=default)
            except (TypeError, ValueError) as error:
                raise ConfigError(str(error)) from None
        elif nested is not None and value is not None:
            kwargs[name] = _build(nested, value, path)
        elif (cls, name) == (RewardsConfig, "components"):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{path} must be a list of reward components")
            kwargs[name] = tuple(_build(RewardComponent, v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # e.g. GateConfig's own checks
        raise ConfigError(f"{label}: {error}") from None


_NESTED = {
    (TrainConfig, "model"): ModelConfig, (ModelConfig, "lora"): LoraConfig, (TrainConfig, "data"): DataConfig,
    (TrainConfig, "rollout"): RolloutConfig, (TrainConfig, "rewards"): RewardsConfig,
    (TrainConfig, "speech"): SpeechConfig,
    (RolloutConfig, "text"): ModalitySampling, (RolloutConfig, "speech"): SpeechSampling,
    (TrainConfig, "objective"): ObjectiveConfig, (TrainConfig, "gate"): GateConfig,
    (TrainConfig, "dpo"): DPOConfig, (TrainConfig, "optim"): OptimConfig, (TrainConfig, "eval"): EvalConfig,
    (TrainConfig, "run"): RunConfig, (TrainConfig, "distributed"): DistributedConfig,
}
