"""wavalign.world.config: WorldConfig validation, digest and YAML, and the world preset's spec."""

import pytest
import torch

from wavalign.world import config as world_config
from wavalign.world.config import JudgeNoise, WorldConfig


def test_world_digest_changes_with_the_build_environment(monkeypatch):
    # A world's SFT rounds differently under torch's AVX2 and AVX512 kernels (and would under
    # another torch), so a world cached on one machine must not be reused by another: the
    # digest (the cache directory's name) holds torch's version, its CPU capability and the
    # processor's vendor and model.
    here = WorldConfig.fast().digest()
    other = "AVX2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "AVX512"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    other_cpu = WorldConfig.fast().digest()
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    other_torch = WorldConfig.fast().digest()
    monkeypatch.undo()
    monkeypatch.setattr(world_config, "processor_name", lambda: "AnotherVendor Model 9")
    other_processor = WorldConfig.fast().digest()
    monkeypatch.undo()
    assert len({here, other_cpu, other_torch, other_processor}) == 4
    assert WorldConfig.fast().digest() == here


def test_world_config_validation_and_digest(tmp_path):
    assert WorldConfig().digest() == WorldConfig().digest() != WorldConfig(seed=1).digest()
    with pytest.raises(ValueError, match="n_units"):
        WorldConfig(n_units=2)
    with pytest.raises(ValueError, match="failure_rate"):
        JudgeNoise(noise_std=1.0, failure_rate=1.5)
    path = tmp_path / "w.yaml"
    path.write_text("seed: 3\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        WorldConfig.from_yaml(path)
    path.write_text("seed: 3\nacoustic_judge: {noise_std: 2.0}\n")
    config = WorldConfig.from_yaml(path)
    assert config.seed == 3 and config.acoustic_judge == JudgeNoise(noise_std=2.0)


def test_world_preset_matches_the_default_world_tokenizer():
    from wavalign.modality import load_preset
    from wavalign.world.build import world_tokenizer

    _, spec = world_tokenizer(WorldConfig())
    assert load_preset("world") == spec
