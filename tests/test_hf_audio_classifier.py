"""HFAudioClassifierReward on a tiny random wav2vec2 classifier, and the sinc resampler it uses."""

import logging
import math

import numpy as np
import pytest
import torch

from wavalign.rewards import Completion, HFAudioClassifierReward
from wavalign.rewards.audio import resample


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, classifier_proj_size=8, feat_extract_norm="layer",
                            do_stable_layer_norm=True, apply_spec_augment=False, num_labels=2,
                            id2label={0: "calm", 1: "tense"}, label2id={"calm": 0, "tense": 1})
    model = Wav2Vec2ForSequenceClassification(config)
    with torch.no_grad():  # spread the probabilities away from 0.5 so the comparison means something
        model.classifier.weight.mul_(50.0)
    # layer norm + attention mask: padding a batch does not change any row's logits
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    path = tmp_path_factory.mktemp("audio-classifier")
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def _direct_probability(reward, wave, label):
    """P(label) for one [S] waveform at 16 kHz, unbatched: the reference the reward must match."""
    with torch.no_grad():
        inputs = reward.feature_extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")
        return float(torch.softmax(reward.model(**inputs).logits, dim=-1)[0, label])


def test_scores_are_label_probability_and_missing_audio_is_counted(classifier_dir, caplog):
    reward = HFAudioClassifierReward(classifier_dir, label="tense", score_min=1.0, score_max=5.0, batch_size=2)
    generator = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(1600, generator=generator),  # different kinds of sound, different lengths
             0.5 * torch.sin(2 * math.pi * 200 * torch.arange(2400) / 16000),
             0.3 * torch.sign(torch.sin(2 * math.pi * 1000 * torch.arange(3200) / 16000))]
    completions = [Completion(audio=waves[0], sample_rate=16000),
                   Completion(text="no speech"),  # no audio at all
                   Completion(audio=waves[1].numpy().astype(np.float64), sample_rate=16000),  # numpy float64
                   Completion(audio=torch.zeros(0), sample_rate=16000),  # empty audio
                   Completion(audio=waves[2], sample_rate=16000)]
    with caplog.at_level(logging.WARNING):
        scores = reward(["q"] * 5, completions)
    expected = [1.0 + 4.0 * _direct_probability(reward, w, label=1) for w in waves]
    assert [scores[i] for i in (0, 2, 4)] == pytest.approx(expected, abs=1e-5)
    assert min(abs(a - b) for a, b in zip(expected, expected[1:] + expected[:1])) > 1e-3  # rows tell apart
    assert scores[1] is None and scores[3] is None  # nothing to classify: no score, not a made-up one
    assert reward.missing == 2 and "2 of 5 completions have no audio" in caplog.text
    reward(["q"], [Completion()])
    assert reward.missing == 3


def test_audio_at_another_rate_is_resampled(classifier_dir):
    reward = HFAudioClassifierReward(classifier_dir, label=0)
    wave_8k = 0.3 * torch.sin(2 * math.pi * 300 * torch.arange(1200) / 8000)
    scores = reward(["q"] * 2, [Completion(audio=wave_8k, sample_rate=8000),
                                Completion(audio=resample(wave_8k, 8000, 16000), sample_rate=16000)])
    assert scores[0] == scores[1]
    assert scores[0] == pytest.approx(1.0 + 4.0 * _direct_probability(reward, resample(wave_8k, 8000, 16000), 0),
                                      abs=1e-5)


def test_resample_keeps_the_passband_and_removes_what_would_alias():
    tone_8k = torch.sin(2 * math.pi * 440 * torch.arange(8000) / 8000)
    up = resample(tone_8k, 8000, 16000)
    assert up.shape == (16000,)
    exact = torch.sin(2 * math.pi * 440 * torch.arange(16000) / 16000)
    assert (up - exact)[200:-200].abs().max() < 2e-3  # edges see the zero padding
    tone_22k = torch.sin(2 * math.pi * 440 * torch.arange(22050) / 22050)
    down = resample(tone_22k, 22050, 16000)
    assert down.shape == (16000,) and (down - exact)[200:-200].abs().max() < 2e-3
    high = torch.sin(2 * math.pi * 7000 * torch.arange(22050) / 22050)  # above 8 kHz audio's 4 kHz Nyquist
    assert resample(high, 22050, 8000)[200:-200].pow(2).mean().sqrt() < 1e-2  # filtered, not folded to 1 kHz
    assert resample(tone_8k, 8000, 8000) is tone_8k
    with pytest.raises(ValueError, match="new_rate must be a positive integer"):
        resample(tone_8k, 8000, 0)


def test_bad_configuration_and_input(classifier_dir, tmp_path):
    with pytest.raises(ValueError, match=r"label 'angry' not in the classifier's labels \['calm', 'tense'\]"):
        HFAudioClassifierReward(classifier_dir, label="angry")
    with pytest.raises(ValueError, match=r"label index 2 outside \[0, 2\)"):
        HFAudioClassifierReward(classifier_dir, label=2)
    with pytest.raises(ValueError, match="need finite score_min < score_max"):
        HFAudioClassifierReward(classifier_dir, score_min=5.0, score_max=1.0)
    with pytest.raises(FileNotFoundError, match="audio classifier directory not found"):
        HFAudioClassifierReward(tmp_path / "missing")
    reward = HFAudioClassifierReward(classifier_dir)
    with pytest.raises(ValueError, match="pass the feature extractor together with a model object"):
        HFAudioClassifierReward(reward.model)
    with pytest.raises(ValueError, match="completion 1: audio given without a sample_rate"):
        reward(["q"] * 2, [Completion(), Completion(audio=torch.zeros(800))])
    with pytest.raises(ValueError, match=r"completion 0: audio must be a 1-D mono waveform, got shape \[2, 800\]"):
        reward(["q"], [Completion(audio=torch.zeros(2, 800), sample_rate=16000)])
