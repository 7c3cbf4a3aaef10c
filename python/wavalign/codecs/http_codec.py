"""HttpCodec: a speech codec served over HTTP (a token2wav / wav2token server).

    build_codec("http", options) with these options (YAML shown):

        decode_url: http://127.0.0.1:9000/token2wav   # POST {"units": [...]} -> WAV bytes
        encode_url: http://127.0.0.1:9000/wav2token   # POST WAV bytes (audio/wav) -> {"units": [...]}
        sample_rate: 22050                            # the rate the server speaks and listens at
        timeout_s: 30          # each connect / write / read
        max_retries: 3         # on 5xx, 429, timeouts and dropped connections
        backoff_base_s: 0.5    # exponential backoff with full jitter, capped at backoff_max_s
        backoff_max_s: 8
        deadline_s: null       # total per call (attempts + backoff); null: derived, as HttpJudge
        concurrency: 8         # requests in flight at once (decode_many)
        api_key_env: null      # name of an env var holding a Bearer token (never the token itself)

Only `decode_url` and `sample_rate` are required; without `encode_url` the codec cannot
tokenize audio (`can_encode` is False and `encode` raises).

A decode that fails (HTTP error after the retries, the total deadline, a body that is not a
WAV file, a WAV at another sample rate, no or non-finite samples) gives ``None`` for that
sample, counted in ``stats["failures"][reason]`` and logged at warning level; the codec never
stands in silence or noise for audio it did not get. A failed encode raises
:class:`CodecError` (after counting), since a dataset record whose audio cannot be tokenized
must not silently lose its speech. The API key is read from the environment at call time and
never logged; URLs are not logged either (they may carry credentials).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from wavalign import net
from wavalign.audio_io import read_wav_bytes, resample, wav_bytes

log = logging.getLogger(__name__)


class CodecError(RuntimeError):
    """A codec call failed; `reason` is the counted failure reason (e.g. "http_500")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HttpCodecConfig:
    decode_url: str
    sample_rate: int
    encode_url: str | None = None
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    deadline_s: float | None = None  # total per call; None: see total_deadline_s
    concurrency: int = 8
    api_key_env: str | None = None  # name of the variable, never the key itself

    @property
    def total_deadline_s(self) -> float:
        """The per-call deadline in force: deadline_s, or one derived from the other fields."""
        return net.total_deadline_s(self)

    def __post_init__(self):
        for name in ("decode_url", "encode_url"):
            url = getattr(self, name)
            if url is None and name == "encode_url":
                continue
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                # the value is not echoed: a URL may carry credentials
                raise ValueError(f"http codec: {name} must be a URL starting with http:// or https://")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, numbers.Integral) \
                or self.sample_rate <= 0:
            raise ValueError(f"http codec: sample_rate must be a positive integer (Hz), got {self.sample_rate!r}")
        positive = {"timeout_s": self.timeout_s, "backoff_max_s": self.backoff_max_s}
        if self.deadline_s is not None:
            positive["deadline_s"] = self.deadline_s
        for name, value in positive.items():
            if not _finite_number(value) or value <= 0:
                raise ValueError(f"http codec: {name} must be a finite number of seconds > 0, got {value!r}")
        if not _finite_number(self.backoff_base_s) or self.backoff_base_s < 0:
            raise ValueError(f"http codec: backoff_base_s must be a finite number >= 0, got {self.backoff_base_s!r}")
        for name, low in (("max_retries", 0), ("concurrency", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"http codec: {name} must be an integer >= {low}, got {value!r}")
        if self.api_key_env is not None and not (isinstance(self.api_key_env, str) and self.api_key_env):
            raise ValueError("http codec: api_key_env must name an environment variable (or be null)")


def _finite_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


class HttpCodec:
    """A SpeechCodec whose decode / encode are requests to a server; see the module docstring."""

    def __init__(self, config: HttpCodecConfig):
        self.config = config
        self.sample_rate = int(config.sample_rate)
        self.reset_stats()

    @property
    def can_encode(self) -> bool:
        return self.config.encode_url is not None

    def reset_stats(self) -> None:
        self.stats = {"requests": 0, "decoded": 0, "encoded": 0, "failures": {}}

    # ------------------------------------------------------------------ public
    def decode(self, units: Sequence[int]) -> torch.Tensor | None:
        """Units -> [S] float32 waveform at sample_rate, or None (counted) when the server fails."""
        return self.decode_many([units])[0]

    def decode_many(self, batch: Sequence[Sequence[int]]) -> list[torch.Tensor | None]:
        """One waveform (or None, counted) per units list; the requests run concurrently."""
        payloads = [{"units": [int(u) for u in units]} for units in batch]
        if any(not p["units"] for p in payloads):
            raise ValueError("http codec: decode needs at least one unit per sample")
        return asyncio.run(self._run_all([lambda c, s, p=p: self._decode_one(c, s, p) for p in payloads]))

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> list[int]:
        """[S] float waveform at sample_rate (resampled to the server's rate) -> its units.
        Raises CodecError (counted) when the server fails, ValueError without an encode_url."""
        if not self.can_encode:
            raise ValueError("http codec: this codec has no encode_url, so it cannot tokenize audio; "
                             "give the codec an encode_url option")
        wave = waveform if isinstance(waveform, torch.Tensor) else torch.as_tensor(waveform, dtype=torch.float32)
        body = wav_bytes(resample(wave.float(), sample_rate, self.sample_rate), self.sample_rate)
        units = asyncio.run(self._run_all([lambda c, s: self._encode_one(c, s, body)]))[0]
        if isinstance(units, CodecError):
            raise units
        return units

    # ------------------------------------------------------------------ internals
    def _fail(self, reason: str, what: str, detail: str) -> None:
        self.stats["failures"][reason] = self.stats["failures"].get(reason, 0) + 1
        log.warning("speech codec %s failed (%s): %s", what, reason, detail)

    async def _run_all(self, jobs):
        """Run each job(client, semaphore) -> coroutine on one client, `concurrency` at a time."""
        semaphore = asyncio.Semaphore(self.config.concurrency)
        async with net.session(self.config) as client:
            return list(await asyncio.gather(*(job(client, semaphore) for job in jobs)))

    async def _decode_one(self, client, semaphore, payload: dict) -> torch.Tensor | None:
        body, reason, detail = await self._post(client, semaphore, self.config.decode_url, json.dumps(payload).encode(),
                                                {"Content-Type": "application/json"})
        if body is None:
            self._fail(reason, "decode", detail)
            return None
        try:
            wave, rate = read_wav_bytes(body)
        except ValueError:
            self._fail("not_wav", "decode", f"the server's {len(body)}-byte answer is not a WAV file")
            return None
        if rate != self.sample_rate:
            self._fail("wrong_sample_rate", "decode", f"the server sent {rate} Hz audio, the codec is configured "
                       f"for {self.sample_rate} Hz (its sample_rate option)")
            return None
        if wave.numel() == 0:
            self._fail("empty_audio", "decode", f"no samples for {len(payload['units'])} units")
            return None
        if not torch.isfinite(wave).all():
            self._fail("non_finite_audio", "decode", "the waveform holds NaN or inf")
            return None
        self.stats["decoded"] += 1
        return wave

    async def _encode_one(self, client, semaphore, body: bytes) -> list[int] | CodecError:
        answer, reason, detail = await self._post(client, semaphore, self.config.encode_url, body,
                                                  {"Content-Type": "audio/wav"})
        if answer is None:
            self._fail(reason, "encode", detail)
            return CodecError(reason, f"http codec: encode failed ({reason}): {detail}")
        try:
            units = json.loads(answer)["units"]
            ok = isinstance(units, list) and all(
                isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in units)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            detail = 'the answer is not JSON {"units": [non-negative integers]}'
            self._fail("malformed_response", "encode", detail)
            return CodecError("malformed_response", f"http codec: encode failed: {detail}")
        self.stats["encoded"] += 1
        return units

    async def _post(self, client, semaphore, url: str, body: bytes, headers: dict) -> tuple[bytes | None, str | None, str]:
        """POST with retries, backoff and the total deadline (wavalign.net.post) -> (the 200
        answer's body, None, "") or (None, failure reason, what happened)."""
        outcome = await net.post(client, semaphore, url, body, headers=headers, stats=self.stats,
                                 policy=net.RetryPolicy.of(self.config))
        if outcome.reply is not None:
            return outcome.reply.body, None, ""
        if outcome.reason == "deadline":
            return None, "deadline", self._deadline_detail(outcome.attempts, outcome.last)
        if outcome.when == net.CLIENT_ERROR:
            return None, outcome.reason, "a client error; not retried"
        return None, outcome.reason, f"gave up after {outcome.attempts} attempts"

    def _deadline_detail(self, attempts: int, last: str | None) -> str:
        return (f"gave up at its {self.config.total_deadline_s:.2f} s deadline after {attempts} attempt(s) "
                f"(last error: {last or 'none'})")
