"""OnnxCodec: a vocoder (and optionally a speech tokenizer) exported to ONNX.

    build_codec("onnx", options) with these options (YAML shown):

        decoder: /models/vocoder.onnx      # int64 [1, U] units -> float [1, S] or [S] waveform
        encoder: /models/tokenizer.onnx    # float [1, S] waveform -> int64 [1, U] or [U] units (optional)
        sample_rate: 24000                 # the rate the decoder produces and the encoder expects
        providers: [CUDAExecutionProvider, CPUExecutionProvider]   # optional

Each model's first input and first output are used. Their types and ranks are checked when the
codec is built, so a wrong export fails at start-up naming the file. Without `providers`, CUDA
is requested only when torch sees a GPU (onnxruntime-gpu lists CUDA as "available" even on
machines without one); `provider` reports the execution provider actually in use.

A decode whose run fails (e.g. a unit outside the model's table) or whose waveform holds
NaN / inf gives None for that sample, counted in ``stats["failures"][reason]`` and logged at
warning level. Audio given to `encode` at another rate is resampled to `sample_rate`.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from wavalign.audio_io import resample

log = logging.getLogger(__name__)


def _session(path, role: str, providers):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"onnx codec: {role} model not found: {path}")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime's own exception types do not share a base class
        raise ValueError(f"onnx codec: cannot load the {role} model {path} ({type(error).__name__}: {error})") from None


def _check_io(session, path, role: str, input_type: str, output_type: str, output_ranks: tuple[int, ...]):
    """The first input / output's element type and rank, as the codec will feed and read them."""
    first_in, first_out = session.get_inputs()[0], session.get_outputs()[0]
    if first_in.type != input_type or len(first_in.shape) != 2:
        raise ValueError(f"onnx codec: the {role} model {path} must take a {input_type} [1, N] input; its input "
                         f"{first_in.name!r} is {first_in.type} with shape {first_in.shape}")
    if first_out.type != output_type or len(first_out.shape) not in output_ranks:
        raise ValueError(f"onnx codec: the {role} model {path} must return {output_type} of rank "
                         f"{' or '.join(map(str, output_ranks))}; its output {first_out.name!r} is {first_out.type} "
                         f"with shape {first_out.shape}")


class OnnxCodec:
    """A SpeechCodec running ONNX models with onnxruntime; see the module docstring."""

    def __init__(self, decoder: str | Path, sample_rate: int, encoder: str | Path | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
            raise ValueError(f"onnx codec: sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        elif not (isinstance(providers, (list, tuple)) and providers and all(isinstance(p, str) for p in providers)):
            raise ValueError(f"onnx codec: providers must be a non-empty list of provider names, got {providers!r}")
        self.sample_rate = int(sample_rate)
        self.decoder = _session(decoder, "decoder", list(providers))
        _check_io(self.decoder, decoder, "decoder", "tensor(int64)", "tensor(float)", (1, 2))
        self.encoder = None
        if encoder is not None:
            self.encoder = _session(encoder, "encoder", list(providers))
            _check_io(self.encoder, encoder, "encoder", "tensor(float)", "tensor(int64)", (1, 2))
        self.provider = self.decoder.get_providers()[0]
        self.name = Path(decoder).name
        self.reset_stats()
        log.info("OnnxCodec %s runs on %s", self.name, self.provider)

    @property
    def can_encode(self) -> bool:
        return self.encoder is not None

    def reset_stats(self) -> None:
        self.stats = {"decoded": 0, "encoded": 0, "failures": {}}

    def _fail(self, reason: str, detail: str) -> None:
        self.stats["failures"][reason] = self.stats["failures"].get(reason, 0) + 1
        log.warning("speech codec decode failed (%s): %s", reason, detail)

    def decode(self, units: Sequence[int]) -> torch.Tensor | None:
        """Units -> [S] float32 waveform at sample_rate, or None (counted) when the model fails."""
        if len(units) == 0:
            raise ValueError("onnx codec: decode needs at least one unit")
        feed = {self.decoder.get_inputs()[0].name: np.asarray(list(units), dtype=np.int64).reshape(1, -1)}
        try:
            out = np.asarray(self.decoder.run(None, feed)[0])
        except Exception as error:  # onnxruntime's Fail / InvalidArgument / RuntimeException
            self._fail("model_error", f"{self.name}: {type(error).__name__}: {str(error)[:200]}")
            return None
        if out.ndim == 2 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 1 or out.size == 0:
            self._fail("bad_output", f"{self.name} returned shape {list(out.shape)}, expected [1, S] or [S]")
            return None
        if not np.isfinite(out).all():
            self._fail("non_finite_audio", f"{self.name} returned NaN or inf samples")
            return None
        self.stats["decoded"] += 1
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> list[int]:
        """[S] float waveform at sample_rate (resampled to the codec's) -> units. Errors raise."""
        if self.encoder is None:
            raise ValueError("onnx codec: no encoder model was given (the encoder option), "
                             "so it cannot tokenize audio")
        wave = waveform if isinstance(waveform, torch.Tensor) else torch.as_tensor(waveform, dtype=torch.float32)
        wave = resample(wave.float(), sample_rate, self.sample_rate)
        feed = {self.encoder.get_inputs()[0].name: wave.numpy().reshape(1, -1)}
        out = np.asarray(self.encoder.run(None, feed)[0])
        if out.ndim == 2 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 1:
            raise ValueError(f"onnx codec: the encoder returned shape {list(out.shape)}, expected [1, U] or [U]")
        self.stats["encoded"] += 1
        return [int(u) for u in out.tolist()]
