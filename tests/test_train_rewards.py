"""Reward components from config: python functions, classifiers, audio listeners, clear errors."""

import math
import textwrap

import pytest
import torch

from wavalign.rewards import Completion
from wavalign.train.config import ConfigError, RewardComponent, RewardsConfig, TrainConfig
from wavalign.rewards.completions import make_completions
from wavalign.train.rewards import build_reward, load_python_reward

MODULE = textwrap.dedent('''
    def speech_length(prompts, completions, **columns):
        """1-5 by the number of speech units; None when there is no speech."""
        return [None if not c.speech_units else min(5.0, 1.0 + len(c.speech_units) / 10) for c in completions]

    class Keyword:
        def __init__(self, word, bonus=1.0):
            self.word, self.bonus = word, bonus
            self.__name__ = "keyword"

        def __call__(self, prompts, completions, **columns):
            return [1.0 + self.bonus * (self.word in c.text) for c in completions]

    NOT_CALLABLE = 3
''')


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def rewards_config(*components, **kwargs):
    config = RewardsConfig(components=tuple(RewardComponent(*c) for c in components), **kwargs)
    config.validate()
    return config


def test_python_rewards_plain_function_and_built_object(reward_module):
    config = rewards_config(("length", "python", 1.0, {"function": "my_rewards:speech_length"}),
                            ("keyword", "python", 3.0, {"function": "my_rewards:Keyword",
                                                       "init": {"word": "paris", "bonus": 2.0}}),
                            missing="renormalize")
    reward = build_reward(config, world=None)
    assert reward.needs_audio is False
    completions = [Completion(text="it is paris", speech_units=list(range(20))),
                   Completion(text="rome", speech_units=[]),
                   Completion(text="paris", speech_units=[1, 2, 3, 4, 5])]
    values = reward(["q"] * 3, completions)
    # weights normalised to 0.25 / 0.75; the second lacks `length`, so its weight moves to `keyword`
    assert values == pytest.approx([0.25 * 3.0 + 0.75 * 3.0, 1.0, 0.25 * 1.5 + 0.75 * 3.0])


@pytest.mark.parametrize("options, message", [
    ({"function": "my_rewards.speech_length"}, "must look like 'package.module:name'"),
    ({"function": "no_such_module_here:fn"}, "cannot import module 'no_such_module_here'"),
    ({"function": "my_rewards:missing"}, "has no attribute 'missing'"),
    ({"function": "my_rewards:NOT_CALLABLE"}, "is not callable"),
    ({"function": "my_rewards:Keyword", "init": ["x"]}, "options.init must be a mapping"),
])
def test_python_reward_errors_name_the_problem(reward_module, options, message):
    with pytest.raises(ValueError, match=message):
        load_python_reward(options, "reward component 'r'")


@pytest.mark.parametrize("kind, option", [("python", "function"), ("hf_classifier", "model"),
                                          ("hf_audio_classifier", "model"), ("onnx", "path"),
                                          ("http_judge", "base_url")])
def test_config_names_the_missing_option(kind, option):
    with pytest.raises(ConfigError, match=rf"rewards.components\[0\].options.{option} is required for a {kind}"):
        rewards_config(("r", kind, 1.0, {}))


def test_audio_rewards_need_a_speech_decoder(tmp_path):
    config = rewards_config(("style", "hf_audio_classifier", 1.0, {"model": str(tmp_path)}))
    with pytest.raises(ValueError, match=r"\['style'\] listen to audio, but this run has no speech codec"):
        build_reward(config, world=None)


def tiny_audio_classifier(path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, classifier_proj_size=8, feat_extract_norm="layer",
                            do_stable_layer_norm=True, apply_spec_augment=False, num_labels=2)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(path)
    return path


def test_world_completions_carry_decoded_audio_for_listeners(fast_world, tmp_path):
    from wavalign.world.audio import SAMPLE_RATE

    model_dir = tiny_audio_classifier(tmp_path / "classifier")
    config = rewards_config(("style", "hf_audio_classifier", 1.0, {"model": str(model_dir), "label": 1}))
    reward = build_reward(config, fast_world)
    assert reward.needs_audio is True
    examples = fast_world.examples("test")[:3]
    responses = [e["response_ids"] for e in examples]
    completions = make_completions(fast_world.format, responses, fast_world.codec)
    for completion in completions:
        assert completion.sample_rate == SAMPLE_RATE
        assert torch.equal(completion.audio, fast_world.scorer.wave(completion.speech_units))
    values = reward(["q"] * 3, completions)
    assert all(v is not None and 1.0 <= v <= 5.0 and math.isfinite(v) for v in values)
    # without the codec there is no audio, so the listener honestly has no score
    assert reward(["q"] * 3, make_completions(fast_world.format, responses)) == [None] * 3


def test_trainer_runs_with_a_python_reward(fast_world, tmp_path, reward_module):
    from wavalign.train.run_log import read_metrics
    from wavalign.train.trainer import Trainer

    config_file = tmp_path / "config.yaml"
    config_file.write_text(textwrap.dedent('''
        rewards:
          components:
            - {name: semantic_judge, kind: world_semantic, weight: 0.7}
            - {name: length, kind: python, weight: 0.3, options: {function: "my_rewards:speech_length"}}
    '''))
    config = TrainConfig.load(config_file, [
        "data.world=fast", "optim.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=40",
        "optim.steps=2", "eval.before=false", "eval.after=false", "run.progress=false", "run.plots=false",
        "run.tensorboard=false", "run.save_every=0", "optim.warmup_steps=1", f"run.output_dir={tmp_path}",
        "run.name=python-reward"])
    trainer = Trainer(config, world=fast_world)
    try:
        trainer.fit()
    finally:
        trainer.close()
    records = [r for r in read_metrics(tmp_path / "python-reward") if r["kind"] == "train"]
    assert len(records) == 2
    assert all(r["reward/length"] is not None and 1.0 <= r["reward/length"] <= 5.0 for r in records)
