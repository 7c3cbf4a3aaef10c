"""The composite reward a RewardsConfig describes, and the completions it is called with.

Component kinds (`rewards.components[i].kind`, options in `.options`):

    world_semantic, world_acoustic          the built-in world's noisy 1-5 judges
    world_semantic_exact, world_acoustic_exact   their noise-free targets (diagnostics)
    http_judge           HttpJudge; options are JudgeConfig fields (base_url, model, kind, audio,
                         sample_rate, prompt_template, ...); it hears the reply unless audio: false
    python               your own reward function: {function: "package.module:name"}; with
                         {init: {...}} the named object is called with those keyword arguments
                         to build the reward (a class or a factory)
    hf_classifier        HFClassifierReward on the text channel: {model: DIR, label, ...}
    hf_audio_classifier  HFAudioClassifierReward on the decoded speech: {model: DIR, label, ...}
    onnx                 OnnxReward: {path: FILE.onnx, input: audio | units, ...}

Rewards that listen to audio (they declare `needs_audio`: http_judge unless audio: false,
hf_audio_classifier, onnx with input=audio) get each completion's waveform decoded from its
speech units by the run's SpeechCodec (`speech.codec`: the built-in world's, or a python,
http or onnx codec, wavalign.codecs.build_codec); without a codec they are refused before
training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from wavalign.imports import import_object
from wavalign.rewards.base import CompositeReward, needs_audio

#: world judges draw their noise from judge_seed + offset; evaluation uses its own draws
EVAL_JUDGE_SEED_OFFSET = 10_000


def load_python_reward(options: dict, where: str = "python reward") -> Callable:
    """options {function: "package.module:name", init: {...} (optional)} -> the reward callable."""
    target = options.get("function")
    fn = import_object(target, where, "options.function")
    if "init" in options:
        if not isinstance(options["init"], dict):
            raise ValueError(f"{where}: options.init must be a mapping of keyword arguments")
        fn = fn(**options["init"])
    if not callable(fn):
        raise ValueError(f"{where}: {target} is not callable")
    return fn


@dataclass(frozen=True)
class RewardKind:
    """One entry of the reward-kind registry: what config validation and construction need."""

    build: Callable  # (options, component name, world, world judges) -> reward callable
    required_option: str | None = None  # the option the kind cannot do without
    needs_world: bool = False
    # Does a component of this kind listen to audio, judged from its options before it is
    # built (so a run without a codec is refused before any model loads)? The built reward's
    # own `needs_audio` is checked again afterwards.
    listens: Callable[[dict], bool] = lambda options: False


def _world_judge(name: str):
    return lambda options, component, world, judges: judges[name]


def _world_exact(part: str):
    def build(options, component, world, judges):
        return world.exact_judge(part)
    return build


def _http_judge(options, component, world, judges):
    from wavalign.rewards.http_judge import HttpJudge, JudgeConfig

    return HttpJudge(JudgeConfig(**options))


def _python(options, component, world, judges):
    return load_python_reward(options, f"reward component {component!r}")


def _hf_classifier(options, component, world, judges):
    from wavalign.rewards.hf_classifier import HFClassifierReward

    return HFClassifierReward(**options)


def _hf_audio_classifier(options, component, world, judges):
    from wavalign.rewards.hf_audio_classifier import HFAudioClassifierReward

    return HFAudioClassifierReward(**options)


def _onnx(options, component, world, judges):
    from wavalign.rewards.onnx_reward import OnnxReward

    return OnnxReward(**options)


#: The one registry of reward kinds: config validation and construction both read it.
#: world_*_exact: the exact quantity the world judge estimates, without its noise and rounding
#: (an oracle, to tell the algorithm apart from judge noise; real models have no such thing).
REWARD_KINDS: dict[str, RewardKind] = {
    "world_semantic": RewardKind(_world_judge("semantic_judge"), needs_world=True),
    "world_acoustic": RewardKind(_world_judge("acoustic_judge"), needs_world=True),
    "world_semantic_exact": RewardKind(_world_exact("semantic"), needs_world=True),
    "world_acoustic_exact": RewardKind(_world_exact("acoustic"), needs_world=True),
    "http_judge": RewardKind(_http_judge, required_option="base_url", listens=lambda o: o.get("audio", True)),
    "python": RewardKind(_python, required_option="function"),
    "hf_classifier": RewardKind(_hf_classifier, required_option="model"),
    "hf_audio_classifier": RewardKind(_hf_audio_classifier, required_option="model", listens=lambda o: True),
    "onnx": RewardKind(_onnx, required_option="path", listens=lambda o: o.get("input", "audio") == "audio"),
}


def build_component(component, world, judges: dict) -> Callable:
    kind = REWARD_KINDS.get(component.kind)
    if kind is None:
        raise ValueError(f"reward component {component.name!r}: unknown kind {component.kind!r}")
    if kind.needs_world and world is None:
        raise ValueError(f"reward component {component.name!r} ({component.kind}) needs the built-in world")
    return kind.build(dict(component.options), component.name, world, judges)


def build_reward(rc, world, seed_offset: int = 0, *, codec=None) -> CompositeReward:
    """The composite reward a RewardsConfig describes. World judges draw their noise from
    rc.judge_seed + seed_offset (training uses offset 0, evaluation EVAL_JUDGE_SEED_OFFSET).

    codec: the SpeechCodec that decodes the policy's units for rewards that listen (default:
    the world's, when there is a world). A composite with a listener and no codec is refused.
    """
    if codec is None and world is not None:
        codec = world.codec

    def refuse(listeners):
        raise ValueError(f"reward components {listeners} listen to audio, but this run has no speech codec to "
                         "decode the policy's units: set speech.codec (world, python, http or onnx) to decode "
                         "them, give an http_judge audio: false to judge the transcript only, or score the "
                         "speech units instead (onnx with input=units)")

    if codec is None:
        early = [c.name for c in rc.components if c.kind in REWARD_KINDS and REWARD_KINDS[c.kind].listens(c.options)]
        if early:
            refuse(early)
    total = sum(c.weight for c in rc.components) if rc.normalize_weights else 1.0
    judges = world.judges(seed=rc.judge_seed + seed_offset) if world is not None else {}
    components = {c.name: (build_component(c, world, judges), c.weight / total) for c in rc.components}
    listeners = [name for name, (fn, _) in components.items() if needs_audio(fn)]
    if listeners and codec is None:
        refuse(listeners)
    return CompositeReward(components, missing=rc.missing)
