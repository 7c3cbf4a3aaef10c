"""HFAudioClassifierReward: a local transformers audio classifier as a reward on the spoken channel.

score = score_min + (score_max - score_min) * P(label | audio), the audio twin of
HFClassifierReward: a classifier of, say, "calm" vs "tense" speech becomes a 1-5 style reward.
It listens to ``Completion.audio`` (the policy's own decoded waveform) at
``Completion.sample_rate``, resampled to the feature extractor's ``sampling_rate`` with
wavalign.audio_io.resample (band-limited, soxr). A completion without
audio gets None — counted in ``missing`` and logged — never a made-up score.
Loads from a local directory only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from wavalign.rewards.audio import as_waveform
from wavalign.rewards.hf_classifier import check_scale, label_index

log = logging.getLogger(__name__)


class HFAudioClassifierReward:
    """A RewardFn over ``Completion.audio``.

    `model` is a local directory holding an AutoModelForAudioClassification and its feature
    extractor, or a model object passed with its `feature_extractor`. `label` is an index or a
    name from ``config.id2label``. Completions are scored `batch_size` at a time, padded by the
    feature extractor (`padding`: True pads to the batch's longest; "max_length" for fixed-size
    inputs such as Whisper's), which adds an attention mask when its config says the model
    takes one (``return_attention_mask``). A model without one (e.g. wav2vec2-base) hears the
    zero padding, as in its training, so its scores may depend on the batch; use batch_size=1
    where that matters.
    """

    needs_audio = True  # scores the waveform: completions must carry decoded audio

    def __init__(self, model, feature_extractor=None, *, label: int | str = 1, score_min: float = 1.0,
                 score_max: float = 5.0, batch_size: int = 8, padding: bool | str = True):
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_dir():
                raise FileNotFoundError(f"audio classifier directory not found: {path}")
            if feature_extractor is None:
                feature_extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
            from wavalign.adapters import without_hub_kernels  # nothing fetched from the Hub

            model = AutoModelForAudioClassification.from_pretrained(path,
                                                                  **without_hub_kernels({"local_files_only": True}))
        if feature_extractor is None:
            raise ValueError("pass the feature extractor together with a model object")
        if not isinstance(getattr(feature_extractor, "sampling_rate", None), int):
            raise ValueError(f"feature extractor {type(feature_extractor).__name__} has no integer sampling_rate")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.label = label_index(model.config, label)
        check_scale(score_min, score_max)
        self.model, self.feature_extractor = model.eval(), feature_extractor
        self.sampling_rate = feature_extractor.sampling_rate
        self.score_min, self.score_max = score_min, score_max
        self.batch_size, self.padding = batch_size, padding
        self.missing = 0  # completions without audio, over the reward's lifetime
        self.__name__ = "hf_audio_classifier_reward"

    @torch.no_grad()
    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        waves = [None if c.audio is None
                 else as_waveform(c.audio, c.sample_rate, self.sampling_rate, f"{self.__name__}: completion {i}")
                 for i, c in enumerate(completions)]  # each [S_i] float32 at self.sampling_rate
        # Empty audio counts as no audio: there is nothing to classify.
        present = [i for i, wave in enumerate(waves) if wave is not None and wave.numel() > 0]
        missing = len(completions) - len(present)
        if missing:
            self.missing += missing
            log.warning("%s: %d of %d completions have no audio; no score (%d so far)",
                        self.__name__, missing, len(completions), self.missing)
        scores: list[float | None] = [None] * len(completions)
        device = self.model.device
        for start in range(0, len(present), self.batch_size):
            rows = present[start: start + self.batch_size]
            inputs = self.feature_extractor([waves[i].numpy() for i in rows], sampling_rate=self.sampling_rate,
                                            padding=self.padding, return_tensors="pt")  # [B, S_max] (+ mask)
            inputs = inputs.to(device=device, dtype=self.model.dtype)  # casts only the float tensors
            logits = self.model(**inputs).logits.float()  # [B, num_labels]
            probs = torch.softmax(logits, dim=-1)[:, self.label]  # [B]
            values = self.score_min + (self.score_max - self.score_min) * probs
            for i, value in zip(rows, values.tolist()):
                scores[i] = float(value)
        return scores
