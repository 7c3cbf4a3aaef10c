"""The composite reward a RewardsConfig describes, and the completions it is called with.

Component kinds (`rewards.components[i].kind`, options in `.options`):

    world_semantic, world_acoustic          the built-in world's noisy 1-5 judges
    world_semantic_exact, world_acoustic_exact   their noise-free targets (diagnostics)
    http_judge           HttpJudge; options are JudgeConfig fields (base_url, model, kind, ...)
    python               your own reward function: {function: "package.module:name"}; with
                         {init: {...}} the named object is called with those keyword arguments
                         to build the reward (a class or a factory)
    hf_classifier        HFClassifierReward on the text channel: {model: DIR, label, ...}
    hf_audio_classifier  HFAudioClassifierReward on the decoded speech: {model: DIR, label, ...}
    onnx                 OnnxReward: {path: FILE.onnx, input: audio | units, ...}

Rewards that listen to audio (hf_audio_classifier, onnx with input=audio) get each
completion's waveform decoded from its speech units by the built-in world's vocoder, the only
speech decoder wavalign ships; with any other model they are refused before training starts.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from wavalign.rewards.base import Completion, CompositeReward

#: world judges draw their noise from judge_seed + offset; evaluation uses its own draws
EVAL_JUDGE_SEED_OFFSET = 10_000


def load_python_reward(options: dict, where: str = "python reward") -> Callable:
    """options {function: "package.module:name", init: {...} (optional)} -> the reward callable."""
    target = options.get("function")
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"{where}: options.function must look like 'package.module:name', got {target!r}")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: cannot import module {module_name!r} ({error})") from None
    if not hasattr(module, attr):
        raise ValueError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if "init" in options:
        if not isinstance(options["init"], dict):
            raise ValueError(f"{where}: options.init must be a mapping of keyword arguments")
        fn = fn(**options["init"])
    if not callable(fn):
        raise ValueError(f"{where}: {target} is not callable")
    return fn


def component_needs_audio(kind: str, options: dict) -> bool:
    return kind == "hf_audio_classifier" or (kind == "onnx" and options.get("input", "audio") == "audio")


def _build_component(component, world, judges: dict) -> Callable:
    kind, options = component.kind, dict(component.options)
    if kind.startswith("world_") and world is None:
        raise ValueError(f"reward component {component.name!r} ({kind}) needs the built-in world")
    if kind == "world_semantic":
        return judges["semantic_judge"]
    if kind == "world_acoustic":
        return judges["acoustic_judge"]
    if kind in ("world_semantic_exact", "world_acoustic_exact"):
        from wavalign.world.judges import ExactScore

        return ExactScore(world.scorer, kind.split("_")[1])
    if kind == "http_judge":
        from wavalign.rewards.http_judge import HttpJudge, JudgeConfig

        return HttpJudge(JudgeConfig(**options))
    if kind == "python":
        return load_python_reward(options, f"reward component {component.name!r}")
    if kind == "hf_classifier":
        from wavalign.rewards.hf_classifier import HFClassifierReward

        return HFClassifierReward(**options)
    if kind == "hf_audio_classifier":
        from wavalign.rewards.hf_audio_classifier import HFAudioClassifierReward

        return HFAudioClassifierReward(**options)
    if kind == "onnx":
        from wavalign.rewards.onnx_reward import OnnxReward

        return OnnxReward(**options)
    raise ValueError(f"reward component {component.name!r}: unknown kind {kind!r}")


def build_reward(rc, world, seed_offset: int = 0) -> CompositeReward:
    """The composite reward a RewardsConfig describes. World judges draw their noise from
    rc.judge_seed + seed_offset (training uses offset 0, evaluation EVAL_JUDGE_SEED_OFFSET).
    The result's `needs_audio` says whether completions must carry decoded audio."""
    listeners = [c.name for c in rc.components if component_needs_audio(c.kind, c.options)]
    if listeners and world is None:
        raise ValueError(f"reward components {listeners} listen to audio, but wavalign ships a speech decoder only "
                         "for the built-in world; score your model's speech units instead (onnx with input=units) "
                         "or wrap your own decoder in a python reward")
    total = sum(c.weight for c in rc.components) if rc.normalize_weights else 1.0
    judges = world.judges(seed=rc.judge_seed + seed_offset) if world is not None else {}
    components = {c.name: (_build_component(c, world, judges), c.weight / total) for c in rc.components}
    composite = CompositeReward(components, missing=rc.missing)
    composite.needs_audio = bool(listeners)
    return composite


def make_completions(format, responses: Sequence[Sequence[int]], scorer=None) -> list[Completion]:
    """Response ids -> Completions (text channel and speech units). With the world's scorer,
    each completion with speech also carries its waveform, decoded by the world's vocoder."""
    from wavalign.world.audio import SAMPLE_RATE

    completions = []
    for ids in responses:
        ids = list(ids)
        text, units = format.split(ids)
        completion = Completion(text=text, speech_units=units, ids=ids)
        if scorer is not None and units:
            completion.audio, completion.sample_rate = scorer.wave(units), SAMPLE_RATE  # [S] float32
        completions.append(completion)
    return completions
