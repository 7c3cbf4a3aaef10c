"""HttpJudge: score spoken responses 1-5 with an OpenAI-compatible audio judge server.

Requests are sent concurrently (httpx, bounded by `concurrency`), retried with exponential
backoff and jitter on 429 (honouring Retry-After), 5xx, timeouts and dropped connections,
and cached on disk by a content hash so a rerun never pays twice. The score is read strictly
from a ``<score>N</score>`` tag and range-checked; anything else is a failure: the sample
gets ``None`` and the failure is counted by reason. The API key is read from an environment
variable at call time and never logged, cached or included in error messages.

`timeout_s` bounds each connect, write and read, so a server that trickles bytes could hold
a request for ever; `deadline_s` bounds the whole request instead: attempts, backoff sleeps
and waits for a slot to retry, counted from the moment its first attempt is sent (waiting
for a free slot before that does not count). Its default is ``(max_retries + 1) *
timeout_s + max_retries * backoff_max_s``. A request still running at the deadline is
abandoned; a retry whose backoff (or whose Retry-After) would end at or past the deadline
is not started. Either way the sample gets ``None`` and the failure is counted as
"deadline", like any other failed judge call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

PROMPTS = {
    "holistic": (
        "You are an expert evaluator of spoken dialogue systems. Rate the assistant's spoken reply "
        "to the user on a 1-5 scale, considering both whether the content correctly and helpfully "
        "answers the question and whether the voice fits the requested speaking style. "
        "Reply with a brief reason, then the score as <score>N</score>."
    ),
    "semantic": (
        "You are an expert evaluator of spoken dialogue systems. Rate only the CONTENT of the "
        "assistant's reply (correctness, helpfulness, agreement between transcript and speech) on a "
        "1-5 scale; ignore the voice. Reply with a brief reason, then <score>N</score>."
    ),
    "acoustic": (
        "You are an expert evaluator of speech. Rate only HOW the reply is spoken (whether pitch, "
        "pace, energy and voice quality match the requested style, and naturalness) on a 1-5 scale; "
        "ignore the content. Reply with a brief reason, then <score>N</score>."
    ),
}
_SCORE = re.compile(r"<score>\s*([-+]?\d+(?:\.\d+)?)\s*</score>")


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 ; /chat/completions is appended
    model: str = "judge"
    kind: str = "holistic"  # holistic | semantic | acoustic
    api_key_env: str | None = "OPENAI_API_KEY"  # name of the variable, never the key itself
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    concurrency: int = 16
    score_min: float = 1.0
    score_max: float = 5.0
    cache_dir: str | None = None
    deadline_s: float | None = None  # total per request; None: see total_deadline_s

    @property
    def total_deadline_s(self) -> float:
        """The per-request deadline in force: deadline_s, or one derived from the other fields."""
        if self.deadline_s is not None:
            return float(self.deadline_s)
        return (self.max_retries + 1) * self.timeout_s + self.max_retries * self.backoff_max_s

    def __post_init__(self):
        if self.kind not in PROMPTS:
            raise ValueError(f"judge kind must be one of {sorted(PROMPTS)}, got {self.kind!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        if not self.score_max > self.score_min:
            raise ValueError("score_max must be greater than score_min")
        if self.deadline_s is not None:
            try:
                ok = math.isfinite(float(self.deadline_s)) and float(self.deadline_s) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"deadline_s must be a finite number of seconds > 0 (or None), got {self.deadline_s!r}")


def wav_bytes(audio, sample_rate: int) -> bytes:
    """16-bit mono WAV of a 1-D float waveform in [-1, 1] (tensor, array or list)."""
    import numpy as np

    samples = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio, dtype=np.float32).reshape(-1)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def parse_score(text: str, low: float, high: float) -> float | None:
    """The single <score> tag's value if it is in [low, high]; otherwise None."""
    found = _SCORE.findall(text or "")
    if len(found) != 1:
        return None
    value = float(found[0])
    return value if low <= value <= high else None


class HttpJudge:
    """A RewardFn: judge(prompts, completions, **columns) -> list[float | None]."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.__name__ = f"http_judge_{config.kind}"
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {"requests": 0, "scored": 0, "cache_hits": 0, "failures": {}, "latencies": []}

    # ------------------------------------------------------------------ public
    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        questions = [self._question(p, c) for p, c in zip(prompts, completions)]
        return asyncio.run(self._score_all(questions, completions))

    def summary(self) -> dict[str, float]:
        latencies = sorted(self.stats["latencies"])

        def pct(q):
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

        out = {
            "judge/requests": float(self.stats["requests"]),
            "judge/scored": float(self.stats["scored"]),
            "judge/cache_hits": float(self.stats["cache_hits"]),
            "judge/failures": float(sum(self.stats["failures"].values())),
            "judge/latency_p50_s": pct(0.5),
            "judge/latency_p95_s": pct(0.95),
        }
        out.update({f"judge/failures_{reason}": float(n) for reason, n in self.stats["failures"].items()})
        return out

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _question(prompt, completion) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)

    def _payload(self, question: str, completion) -> dict:
        content = [{"type": "text", "text": f"User request:\n{question}\n\nTranscript of the reply:\n{completion.text}"}]
        if completion.audio is not None:
            if not completion.sample_rate:
                raise ValueError("a completion with audio needs its sample_rate")
            data = base64.b64encode(wav_bytes(completion.audio, completion.sample_rate)).decode("ascii")
            content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
        return {
            "model": self.config.model,
            "temperature": 0.0,
            "messages": [{"role": "system", "content": PROMPTS[self.config.kind]},
                         {"role": "user", "content": content}],
        }

    def _cache_path(self, payload: dict) -> Path | None:
        if not self.config.cache_dir:
            return None
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return Path(self.config.cache_dir) / f"{digest}.json"

    def _fail(self, reason: str) -> None:
        self.stats["failures"][reason] = self.stats["failures"].get(reason, 0) + 1

    async def _score_all(self, questions, completions) -> list[float | None]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=self.config.concurrency)
        semaphore = asyncio.Semaphore(self.config.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=self.config.timeout_s, limits=limits) as client:
            tasks = [self._score_one(client, semaphore, q, c) for q, c in zip(questions, completions)]
            return list(await asyncio.gather(*tasks))

    async def _score_one(self, client, semaphore, question, completion) -> float | None:
        payload = self._payload(question, completion)
        cache = self._cache_path(payload)
        if cache is not None and cache.is_file():
            self.stats["cache_hits"] += 1
            return json.loads(cache.read_text())["score"]
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        loop = asyncio.get_running_loop()
        deadline = None  # loop time; set when the first attempt holds a slot
        reason = None  # the last attempt's failure
        for attempt in range(self.config.max_retries + 1):
            delay = wanted = None
            if deadline is None:
                await semaphore.acquire()
                deadline = loop.time() + self.config.total_deadline_s
            else:
                try:  # waiting for a slot to retry counts against the deadline
                    await asyncio.wait_for(semaphore.acquire(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    return self._past_deadline(attempt, reason, "while waiting for a slot to retry")
            try:
                self.stats["requests"] += 1
                start = time.perf_counter()
                try:
                    response = await asyncio.wait_for(client.post(url, json=payload),
                                                      max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    self.stats["latencies"].append(time.perf_counter() - start)
                    return self._past_deadline(attempt + 1, reason, "during a request")
                except (httpx.TimeoutException, httpx.TransportError) as error:
                    reason = "timeout" if isinstance(error, httpx.TimeoutException) else "connection"
                    self.stats["latencies"].append(time.perf_counter() - start)
                else:
                    self.stats["latencies"].append(time.perf_counter() - start)
                    if response.status_code == 200:
                        return self._accept(response, cache)
                    if response.status_code != 429 and response.status_code < 500:
                        self._fail(f"http_{response.status_code}")  # a client error: retrying won't help
                        log.warning("judge request rejected with HTTP %d", response.status_code)
                        return None
                    reason = f"http_{response.status_code}"
                    retry_after = response.headers.get("Retry-After")
                    if retry_after is not None:
                        try:
                            wanted = max(0.0, float(retry_after))
                            delay = min(wanted, self.config.backoff_max_s)
                        except ValueError:
                            delay = wanted = None
            finally:
                semaphore.release()
            if attempt == self.config.max_retries:
                self._fail(reason)
                log.warning("judge request failed after %d attempts (%s)", attempt + 1, reason)
                return None
            if delay is None:  # exponential backoff with full jitter
                delay = random.uniform(0, min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt))
            wait = max(delay, wanted or 0.0)  # a Retry-After past the deadline: give up now
            if wait >= deadline - loop.time():
                return self._past_deadline(attempt + 1, reason, f"before a retry (it would wait {wait:.2f} s)")
            await asyncio.sleep(delay)
        return None

    def _past_deadline(self, attempts: int, last: str | None, when: str) -> None:
        self._fail("deadline")
        log.warning("judge request gave up at its %.2f s deadline %s, after %d attempt(s) (last error: %s)",
                    self.config.total_deadline_s, when, attempts, last or "none")
        return None

    def _accept(self, response, cache: Path | None) -> float | None:
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._fail("malformed_response")
            return None
        score = parse_score(text if isinstance(text, str) else "", self.config.score_min, self.config.score_max)
        if score is None:
            self._fail("no_valid_score")
            return None
        self.stats["scored"] += 1
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"score": score}))
            tmp.replace(cache)
        return score
