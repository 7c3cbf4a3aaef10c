"""HFClassifierReward: a local transformers sequence classifier as a reward on the text channel.

score = score_min + (score_max - score_min) * P(label | text), so a classifier of "good
answer" vs "bad answer" becomes a 1-5 reward. Loads from a local directory only.
The audio twin, for the spoken channel, is wavalign.rewards.hf_audio_classifier.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def label_index(config, label: int | str) -> int:
    """A label given by name (config.id2label) or index -> its index, checked against num_labels."""
    if isinstance(label, str):
        mapping = {name: index for index, name in config.id2label.items()}
        if label not in mapping:
            raise ValueError(f"label {label!r} not in the classifier's labels {sorted(mapping)}")
        label = mapping[label]
    if not 0 <= label < config.num_labels:
        raise ValueError(f"label index {label} outside [0, {config.num_labels})")
    return label


def check_scale(score_min: float, score_max: float) -> None:
    if not (math.isfinite(score_min) and math.isfinite(score_max) and score_max > score_min):
        raise ValueError(f"need finite score_min < score_max, got {score_min} and {score_max}")


class HFClassifierReward:
    def __init__(self, model, tokenizer=None, *, label: int | str = 1, score_min: float = 1.0,
                 score_max: float = 5.0, batch_size: int = 32, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_dir():
                raise FileNotFoundError(f"classifier directory not found: {path}")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
            from wavalign.adapters import without_hub_kernels  # nothing fetched from the Hub

            model = AutoModelForSequenceClassification.from_pretrained(path,
                                                                     **without_hub_kernels({"local_files_only": True}))
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a model object")
        self.label = label_index(model.config, label)
        check_scale(score_min, score_max)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.score_min, self.score_max = score_min, score_max
        self.batch_size, self.max_length = batch_size, max_length
        self.__name__ = "hf_classifier_reward"

    @torch.no_grad()
    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        texts = [c.text for c in completions]
        scores: list[float | None] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start: start + self.batch_size]
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(device)
            probs = torch.softmax(self.model(**encoded).logits.float(), dim=-1)[:, self.label]
            values = self.score_min + (self.score_max - self.score_min) * probs
            scores.extend(None if not text else float(v) for text, v in zip(batch, values.tolist()))
        return scores
