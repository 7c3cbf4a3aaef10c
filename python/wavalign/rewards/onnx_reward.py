"""OnnxReward: a reward model exported to ONNX, scoring audio or speech units.

Runs with onnxruntime (the onnxruntime-gpu wheel also runs on CPU). The CUDA provider is
requested only when torch sees a GPU; `provider` reports the one that actually runs, since
onnxruntime lists CUDA as "available" even on machines without a GPU.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from wavalign.rewards.base import Completion

log = logging.getLogger(__name__)
INPUTS = ("audio", "units")


class OnnxReward:
    """A RewardFn running one ONNX model per completion.

    The model takes one input, [1, T] float32 audio samples or [1, T] int64 speech units, and
    its first output's first element is the score. A completion without that input, a
    non-finite score, or one outside [score_min, score_max] (when given) gets None, counted in
    `stats`.
    """

    @property
    def needs_audio(self) -> bool:
        """An audio model listens to the waveform; a units model reads the speech units."""
        return self.input == "audio"

    def __init__(self, path: str | Path, *, input: str = "audio", score_min: float | None = None,
                 score_max: float | None = None, providers: list[str] | None = None):
        import onnxruntime as ort
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.input, self.score_min, self.score_max = input, score_min, score_max
        self.__name__ = f"onnx_reward({path.name})"
        self.stats = {"scored": 0, "missing_input": 0, "invalid_score": 0}
        log.info("OnnxReward %s runs on %s", path.name, self.provider)

    def _array(self, completion: Completion) -> np.ndarray | None:
        if self.input == "audio":
            if completion.audio is None:
                return None
            audio = completion.audio
            audio = audio.detach().cpu().numpy() if hasattr(audio, "detach") else np.asarray(audio)
            return audio.astype(np.float32).reshape(1, -1)
        if not completion.speech_units:
            return None
        return np.asarray(completion.speech_units, dtype=np.int64).reshape(1, -1)

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        scores: list[float | None] = []
        for completion in completions:
            array = self._array(completion)
            if array is None:
                self.stats["missing_input"] += 1
                scores.append(None)
                continue
            value = float(np.asarray(self.session.run(None, {self.input_name: array})[0]).reshape(-1)[0])
            in_range = ((self.score_min is None or value >= self.score_min)
                        and (self.score_max is None or value <= self.score_max))
            if not math.isfinite(value) or not in_range:
                self.stats["invalid_score"] += 1
                scores.append(None)
                continue
            self.stats["scored"] += 1
            scores.append(value)
        return scores
