"""OnnxReward: a model exported by the test from a tiny torch module scores like torch."""

import logging

import pytest
import torch

from wavalign.rewards import Completion, score_batch
from wavalign.rewards.onnx_reward import OnnxReward


class EnergyScore(torch.nn.Module):
    """1 + 4 * sigmoid(w * log mean energy + b): a toy 'expressiveness' meter on audio."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.b = torch.nn.Parameter(torch.tensor(1.3))

    def forward(self, audio):  # [1, T] float32
        energy = (audio * audio).mean(dim=1) + 1e-8
        return 1.0 + 4.0 * torch.sigmoid(self.w * torch.log(energy) + self.b)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "energy.onnx"
    module = EnergyScore().eval()
    torch.onnx.export(module, (torch.randn(1, 1600),), str(path), input_names=["audio"], output_names=["score"],
                      dynamic_shapes=({1: torch.export.Dim("samples")},))
    return module, path


def test_scores_equal_torch_and_provider_is_reported(exported, caplog):
    module, path = exported
    caplog.set_level(logging.INFO)
    reward = OnnxReward(path, input="audio", score_min=1.0, score_max=5.0)
    assert reward.provider == "CPUExecutionProvider"  # no GPU here: reported honestly
    g = torch.Generator().manual_seed(0)
    completions = [Completion(audio=torch.randn(n, generator=g) * s, sample_rate=16000)
                   for n, s in ((800, 0.1), (1600, 1.0), (3000, 0.01))]
    scores = score_batch(reward, ["q"] * 3, completions)
    with torch.no_grad():
        expected = torch.stack([module(c.audio[None]) for c in completions]).flatten()
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert "runs on CPUExecutionProvider" in caplog.text


def test_missing_input_and_out_of_range_become_none(exported):
    _, path = exported
    reward = OnnxReward(path, input="audio", score_min=1.0, score_max=2.0)
    loud = Completion(audio=torch.ones(100), sample_rate=16000)  # scores ~4.5: out of range
    out = reward(["q", "q"], [Completion(text="no audio"), loud])
    assert out == [None, None]
    assert reward.stats == {"scored": 0, "missing_input": 1, "invalid_score": 1}


def test_bad_arguments(exported, tmp_path):
    _, path = exported
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxReward(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="input must be one of"):
        OnnxReward(path, input="video")
