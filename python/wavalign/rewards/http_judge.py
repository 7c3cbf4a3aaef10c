"""HttpJudge: score spoken responses 1-5 with an OpenAI-compatible audio judge server.

Requests are sent concurrently (aiohttp through wavalign.net, bounded by `concurrency`), retried with exponential
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

The judge hears the reply (`audio: true`, the default): each request carries the transcript
and the completion's decoded waveform as a base64 WAV (resampled to `sample_rate` when set;
otherwise at the codec's rate), in the public WavAlign request shape. A completion with speech
units but no audio (its decode failed) gets ``None``, counted as "no_audio": it is never judged
on its transcript alone. With `audio: false` only the transcript is sent. `prompt_template` /
`user_template` name text files replacing the system prompt / the user text; they may use the
fields {question}, {transcript} and {kind} (str.format_map; write ``{{`` for a literal brace).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path

from wavalign import net
from wavalign.audio_io import wav_bytes
from wavalign.rewards.audio import as_waveform

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
#: the fields prompt_template / user_template may name
TEMPLATE_FIELDS = ("question", "transcript", "kind")


def user_text(question: str, transcript: str) -> str:
    """The default user text part (the public WavAlign request shape)."""
    return f"Question:\n{question}\n\nTranscript of answer:\n{transcript or '[empty]'}"


def load_template(path, option: str) -> str:
    """A template file's text, checked: it exists, parses, and names only TEMPLATE_FIELDS."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"judge {option}: template file not found: {file}")
    text = file.read_text(encoding="utf-8")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as error:  # an unmatched brace
        raise ValueError(f"judge {option} {file}: not a valid template ({error}); write {{{{ and }}}} for "
                         "literal braces") from None
    for name in fields:
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"judge {option} {file}: unknown field {{{name}}}; the fields are "
                             f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    return text


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
    audio: bool = True  # send the decoded reply audio (False: the transcript only)
    sample_rate: int | None = None  # resample the audio to this rate; None: the codec's
    prompt_template: str | None = None  # file: the system prompt, with {question} {transcript} {kind}
    user_template: str | None = None  # file: the user text part, same fields

    @property
    def total_deadline_s(self) -> float:
        """The per-request deadline in force: deadline_s, or one derived from the other fields."""
        return net.total_deadline_s(self)

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
        if not isinstance(self.audio, bool):
            raise ValueError(f"audio must be true or false, got {self.audio!r}")
        rate = self.sample_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0):
            raise ValueError(f"sample_rate must be a positive integer (Hz) or None, got {self.sample_rate!r}")
        for option in ("prompt_template", "user_template"):
            if getattr(self, option) is not None:
                load_template(getattr(self, option), option)


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
        # loaded once (and checked again) so every request of the run uses the same prompt
        self.system_template = load_template(config.prompt_template, "prompt_template") \
            if config.prompt_template else None
        self.user_template = load_template(config.user_template, "user_template") if config.user_template else None
        self.reset_stats()

    @property
    def needs_audio(self) -> bool:
        """An audio judge listens to the decoded reply; a transcript-only one does not."""
        return self.config.audio

    def reset_stats(self) -> None:
        self.stats = {"requests": 0, "scored": 0, "cache_hits": 0, "failures": {}, "latencies": []}

    # ------------------------------------------------------------------ public
    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        questions = [self._question(p, c) for p, c in zip(prompts, completions)]
        unheard = sum(1 for c in completions if self.config.audio and c.audio is None and c.speech_units)
        if unheard:
            log.warning("judge: %d of %d replies have speech units but no decoded audio; they get no score "
                        "(no_audio)", unheard, len(completions))
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
        fields = {"question": question, "transcript": completion.text or "[empty]", "kind": self.config.kind}
        text = self.user_template.format_map(fields) if self.user_template else user_text(question, completion.text)
        system = self.system_template.format_map(fields) if self.system_template else PROMPTS[self.config.kind]
        content = [{"type": "text", "text": text}]
        if self.config.audio and completion.audio is not None:
            # as_waveform raises for audio without a sample_rate (a caller's bug, not a missing score)
            rate = self.config.sample_rate or completion.sample_rate
            wave = as_waveform(completion.audio, completion.sample_rate, rate, "http_judge")
            data = base64.b64encode(wav_bytes(wave, rate)).decode("ascii")
            content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
        return {
            "model": self.config.model,
            "temperature": 0.0,
            "messages": [{"role": "system", "content": system},
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
        semaphore = asyncio.Semaphore(self.config.concurrency)
        async with net.session(self.config, {"Content-Type": "application/json"}) as client:
            tasks = [self._score_one(client, semaphore, q, c) for q, c in zip(questions, completions)]
            return list(await asyncio.gather(*tasks))

    async def _score_one(self, client, semaphore, question, completion) -> float | None:
        if self.config.audio and completion.audio is None and completion.speech_units:
            # the reply spoke but its speech could not be decoded: judging the transcript
            # alone would score a different reply, so there is no score (counted)
            self._fail("no_audio")
            return None
        payload = self._payload(question, completion)
        cache = self._cache_path(payload)
        if cache is not None and cache.is_file():
            self.stats["cache_hits"] += 1
            return json.loads(cache.read_text())["score"]
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        outcome = await net.post(client, semaphore, url, json.dumps(payload).encode(),
                                 policy=net.RetryPolicy.of(self.config),
                                 stats=self.stats)
        if outcome.reply is not None:
            return self._accept(outcome.reply.body, cache)
        self._fail(outcome.reason)
        if outcome.reason == "deadline":
            log.warning("judge request gave up at its %.2f s deadline %s, after %d attempt(s) (last error: %s)",
                        self.config.total_deadline_s, outcome.when, outcome.attempts, outcome.last or "none")
        elif outcome.when == net.CLIENT_ERROR:
            log.warning("judge request rejected with HTTP %s", outcome.reason[5:])  # retrying won't help
        else:
            log.warning("judge request failed after %d attempts (%s)", outcome.attempts, outcome.reason)
        return None

    def _accept(self, body: bytes, cache: Path | None) -> float | None:
        try:
            text = json.loads(body)["choices"][0]["message"]["content"]
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
