"""WorldConfig: every knob of the built-in world, its hash (the cache key) and the cache root."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from wavalign.yaml_config import load_mapping

# Bump when code changes what a build produces, so old caches are not reused.
WORLD_FORMAT = 2


@dataclass(frozen=True)
class JudgeNoise:
    """A judge's error model: score = clip(round(exact + bias + N(0, noise_std)), 1, 5);
    with probability failure_rate the call fails and returns None (counted, never invented)."""

    noise_std: float
    bias: float = 0.0
    failure_rate: float = 0.0

    def __post_init__(self):
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0 <= self.failure_rate < 1:
            raise ValueError(f"failure_rate must be in [0, 1), got {self.failure_rate}")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    max_questions: int | None = None  # None: all 240 questions; fewer for a fast world
    dev_fraction: float = 0.08
    test_fraction: float = 0.12
    # long-tail styles: fraction of their training pairs kept (the SFT policy sees them rarely)
    rare_styles: dict = field(default_factory=lambda: {"excited": 0.15, "calm": 0.15})
    n_units: int = 256  # speech unit vocabulary (k-means clusters)
    text_vocab_size: int = 250
    schedule: dict = field(default_factory=lambda: {"kind": "sequential"})
    # supervision (world/supervision.py): gold_fraction = share of train questions whose records
    # carry a gold response (the others are prompt-only); gold_errors = share of those gold
    # questions answered by a weaker teacher (a wrong answer or a wrong style); base_questions =
    # share of train questions whose clean gold the base policy's own SFT saw. Defaults chosen by
    # measurement (REPORT.md, "positive control"): with all gold (1.0 / 0.0) continued SFT gets
    # the reward's maximiser for free and no RL arm can beat it; with a quarter of the questions
    # supervised and a fifth of those by a weak teacher, text RL + anchor with the exact reward
    # beats SFT-only on the same gold on every seed.
    gold_fraction: float = 0.25
    gold_errors: float = 0.2
    base_questions: float = 1.0
    # policy (tiny Llama) and its SFT
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    sft_steps: int = 270
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    # judges: the acoustic judge is much noisier than the semantic one (as real audio judges are)
    semantic_judge: JudgeNoise = JudgeNoise(noise_std=0.35)
    acoustic_judge: JudgeNoise = JudgeNoise(noise_std=1.2, bias=0.4)

    def __post_init__(self):
        if self.max_questions is not None and self.max_questions < 4:
            raise ValueError(f"max_questions must be None or >= 4, got {self.max_questions}")
        if self.n_units < 8:
            raise ValueError(f"n_units must be >= 8, got {self.n_units}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("sft_steps", "sft_batch_size", "num_layers", "text_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gold_fraction", "base_questions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
        if isinstance(self.gold_errors, bool) or not isinstance(self.gold_errors, (int, float)) \
                or not 0 <= self.gold_errors < 1:
            raise ValueError(f"gold_errors must be a number in [0, 1), got {self.gold_errors!r}")
        for name in ("semantic_judge", "acoustic_judge"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, JudgeNoise(**value))

    @classmethod
    def fast(cls, **overrides) -> "WorldConfig":
        """A world that builds in seconds, for tests: 24 questions, 128 units, a smaller policy,
        every train record with clean gold (tests of the supervision knobs set them)."""
        base = dict(max_questions=24, dev_fraction=0.15, test_fraction=0.2, n_units=128, text_vocab_size=200,
                    hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, sft_steps=30,
                    sft_batch_size=16, rare_styles={}, gold_fraction=1.0, gold_errors=0.0)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorldConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown world config fields {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**data)

    @classmethod
    def named(cls, choice: str | Path) -> "WorldConfig":
        """'default', 'fast', or the path of a YAML file of WorldConfig fields."""
        if choice == "default":
            return cls()
        if choice == "fast":
            return cls.fast()
        return cls.from_yaml(choice)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "WorldConfig":
        path = Path(path)
        data = load_mapping(path, "WorldConfig fields", allow_empty=True, kind="world config")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error

    def digest(self) -> str:
        """Cache key: a hash of every field, the build format and the build environment."""
        payload = json.dumps({"format": WORLD_FORMAT, "environment": build_environment(), **self.to_dict()},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_environment() -> dict:
    """What a world's bits depend on besides its config, so it belongs in the cache key.

    The audio, units, BPE vocabulary and initial policy weights were measured identical across
    transformers 4.57-5.25, tokenizers 0.20-0.23, numpy 1.26-2.4 and espeakng-loader 0.2.0-0.2.4
    (a whole default world is bit-identical between transformers 5.24 and 5.25). What changes
    it is the CPU code torch runs: the policy SFT rounds differently under ATen's AVX512, AVX2
    and default kernels (weights apart by up to 3.9e-6 after the default world's 270 steps),
    and the BLAS library may pick per-processor paths. So the key holds torch's version, the
    CPU capability its kernels dispatch to and the processor's vendor and model: a cached world
    is not reused by another kind of machine, which builds its own (docs/world.md)."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "processor": processor_name()}


def processor_name() -> str:
    """The CPU's vendor and model as the OS reports them (Linux: /proc/cpuinfo), else
    platform.processor(); '' when neither says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        fields = {}
    names = {key.strip(): value.strip() for key, value in fields.items()}
    found = " ".join(v for v in (names.get("vendor_id"), names.get("model name")) if v)
    return found or platform.processor()


def cache_root() -> Path:
    """$WAVALIGN_CACHE, else ~/.cache/wavalign."""
    root = os.environ.get("WAVALIGN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "wavalign"


def world_dir(config: WorldConfig) -> Path:
    return cache_root() / "world" / config.digest()
