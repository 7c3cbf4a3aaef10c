"""wavalign.train.config: TrainConfig defaults, overrides, validation naming the field, presets,
and the rollout sampling sections with their deprecated flat keys."""

import pytest

from wavalign.train.config import ConfigError, TrainConfig, apply_override


# ---------------------------------------------------------------------------- config
def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = TrainConfig()
    assert config.mode == "hybrid" and config.objective.rl_scope == "text" and config.objective.sft_scope == "all"
    assert not config.needs_reference
    config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == config


def test_overrides_parse_values_as_yaml():
    config = TrainConfig.load(None, ["optim.lr=1e-4", "rollout.group_size=8", "gate.mode=fixed",
                                     "objective.rl_type_weights=[1, 0.5]", "mode=grpo"])
    assert config.optim.lr == 1e-4 and config.rollout.group_size == 8 and config.gate.mode == "fixed"
    assert config.objective.rl_type_weights == (1, 0.5) and config.mode == "grpo"


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"), ("rollout.group_size=0", "rollout.group_size"),
    ("rollout.top_p=1.5", "rollout.text.top_p"), ("rollout.speech.top_k=-1", "rollout.speech.top_k"),
    ("rollout.text.tempreature=1", "rollout.text.tempreature"), ("objective.rl_scope=speechy", "objective.rl_scope"),
    ("mode=ppo", "mode"), ("gate.ema=1.0", "gate.ema"), ("optim.betas=[0.9]", "optim.betas"),
    ("rewards.max_failure_rate=2", "rewards.max_failure_rate"), ("optim.nosuch=1", "optim.nosuch"),
    ("run.name=a/b", "run.name"), ("data.source=jsonl", "data.train_path"),
    ("rollout.kv_cache=paged", "rollout.kv_cache"), ("rollout.cuda_graphs=1", "rollout.cuda_graphs"),
])
def test_invalid_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.load(None, [override])


def test_cuda_graphs_need_the_engine_and_the_static_cache():
    for override in ("rollout.backend=hf_generate", "rollout.kv_cache=dynamic"):
        with pytest.raises(ConfigError, match="rollout.cuda_graphs needs rollout.backend engine"):
            TrainConfig.load(None, ["rollout.cuda_graphs=true", override])
    assert TrainConfig.load(None, ["rollout.cuda_graphs=true"]).rollout.cuda_graphs
    with pytest.raises(ConfigError, match="cannot run with distributed.strategy=fsdp2"):
        TrainConfig.load(None, ["rollout.cuda_graphs=true", "distributed.strategy=fsdp2"])


def test_reward_options_refuse_an_api_key():
    with pytest.raises(ConfigError, match="api_key_env"):
        TrainConfig.from_dict({"data": {"source": "jsonl", "train_path": "x.jsonl"}, "model": {"path": "/m"},
                               "rewards": {"components": [{"name": "j", "kind": "http_judge",
                                                           "options": {"base_url": "http://x", "api_key": "sk-1"}}]}})


def test_override_syntax_errors_are_clear():
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_override({}, "optim.lr")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"optim": 3}, "optim.lr=1")


@pytest.mark.parametrize("preset", ["world", "vita_audio_balance", "glm4_voice", "kimi_like"])
def test_train_presets_load(preset):
    from pathlib import Path

    import wavalign

    path = Path(wavalign.__file__).parent / "configs" / "train" / f"{preset}.yaml"
    config = TrainConfig.load(path)
    assert config.mode == "hybrid" and config.objective.rl_scope == "text"
    if preset == "world":
        from wavalign.train.__main__ import EMBEDDED_DEFAULT_OVERRIDES

        # the preset spells out the embedded default: the defaults plus the SFT-only baseline
        assert config == TrainConfig.load(None, EMBEDDED_DEFAULT_OVERRIDES) and config.eval.baseline == "sft"
    else:
        assert config.data.source == "jsonl" and config.rewards.components[0].kind == "http_judge"


def test_real_model_preset_without_the_model_fails_clearly(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "wavalign.train", "--config", "configs/train/vita_audio_balance.yaml",
                           "--set", f"run.output_dir={tmp_path}", "--set", "run.device=cpu"],
                          capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.returncode == 2 and "no such model directory" in proc.stderr, proc.stderr


def test_reference_model_only_when_needed():
    assert TrainConfig(mode="dpo").needs_reference
    assert TrainConfig.load(None, ["objective.kl_beta_speech=0.1"]).needs_reference
    assert not TrainConfig(mode="sft").needs_reference


def test_rollout_sampling_sections_and_the_replaced_keys():
    config = TrainConfig.load(None, ["rollout.text.top_p=0.9", "rollout.speech.temperature=0.5"])
    text, speech = config.rollout.text_sampling, config.rollout.speech_sampling
    assert (text.temperature, text.top_p) == (0.7, 0.9)
    assert (speech.temperature, speech.top_p) == (0.5, 0.9)  # unset speech fields follow text
    assert TrainConfig.from_dict(config.to_dict()) == config
    # pre-1.0 keys are errors that name the key to write instead
    for old, new in [("rollout.temperature=0.9", r"rollout\.text\.temperature"), ("rollout.top_k=5", r"rollout\.text\.top_k"),
                     ("rollout.speech_temperature=0.3", r"rollout\.speech\.temperature"),
                     ("objective.pg_normalization=token_mean", r"objective\.loss_type \(.*token_mean is bnpo")]:
        with pytest.raises(ConfigError, match=rf"{old.split('=')[0]} is not a config field; use {new}"):
            TrainConfig.load(None, [old])
