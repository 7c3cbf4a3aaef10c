"""Concurrent HTTP for judges and codec servers: one session per batch of requests, each
request retried with backoff under a total deadline. HttpJudge and HttpCodec share it.

Why aiohttp: a batch is many small requests in flight at once, so the client's own CPU per
request decides how close a batch gets to the server's latency. Measured on 2 cores, 64
concurrent requests to a 50 ms loopback server: aiohttp ~23 ms of client CPU and ~85 ms
wall, httpx ~66 ms and ~115 ms, a hand-written asyncio client ~13 ms and ~75 ms
(benchmarks/RESULTS.md, "Judge client"). The SSL context (loading the CA bundle, ~30 ms) is
built once per process, not once per batch.

Retry rules (both clients): 429, 5xx, timeouts and dropped connections are retried with
exponential backoff and full jitter, honouring Retry-After; other 4xx are not. `deadline_s`
bounds a whole request — attempts, backoff sleeps and waits for a slot to retry — from the
moment its first attempt holds a slot; a retry that could not finish in time is not started.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import ssl
import time
from dataclasses import dataclass

import aiohttp


@functools.lru_cache(maxsize=1)
def ssl_context() -> ssl.SSLContext:
    """The default verifying SSL context, built once per process: certifi's CA bundle when
    certifi is installed (as with httpx and requests), else the system's."""
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def session(config, headers: dict | None = None) -> aiohttp.ClientSession:
    """A session for a client config (timeout_s, concurrency, api_key_env): up to
    `concurrency` simultaneous connections (kept alive between requests), every connect and
    read waiting at most `timeout_s` (a server that trickles bytes is bounded by the caller's
    deadline instead), and `Authorization: Bearer <key>` when the variable api_key_env names
    is set (read now, never logged). Use as `async with`."""
    headers = dict(headers or {})
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout_s, concurrency = config.timeout_s, config.concurrency
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ssl_context())
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    return aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout)


def total_deadline_s(config) -> float:
    """The per-request deadline a client config (JudgeConfig, HttpCodecConfig) puts in force:
    its deadline_s, else every attempt timing out plus the longest backoffs between them."""
    if config.deadline_s is not None:
        return float(config.deadline_s)
    return (config.max_retries + 1) * config.timeout_s + config.max_retries * config.backoff_max_s


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    deadline_s: float  # total per request

    @classmethod
    def of(cls, config) -> "RetryPolicy":
        """The policy of a client config with max_retries, backoff_*_s, timeout_s, deadline_s."""
        return cls(config.max_retries, config.backoff_base_s, config.backoff_max_s, total_deadline_s(config))


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes


CLIENT_ERROR, RETRIES_SPENT = "client_error", "retries_spent"  # Outcome.when besides a deadline's moment


@dataclass
class Outcome:
    """How one request ended: `reply` (status 200), or None with the failure `reason`
    (timeout, connection, http_NNN, deadline), the attempts made, and `when`: CLIENT_ERROR
    (a 4xx, not retried), RETRIES_SPENT, or for a deadline the moment it struck."""

    reply: Reply | None
    reason: str | None = None
    attempts: int = 0
    when: str = ""
    last: str | None = None  # the last attempt's failure, for a deadline's message


async def _attempt(client: aiohttp.ClientSession, url: str, body: bytes, headers: dict | None) -> Reply:
    async with client.post(url, data=body, headers=headers) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def post(client: aiohttp.ClientSession, semaphore: asyncio.Semaphore, url: str, body: bytes, *,
               policy: RetryPolicy, headers: dict | None = None, stats: dict | None = None) -> Outcome:
    """POST `body` with retries under policy.deadline_s. stats (optional): "requests" counts
    attempts and, when stats holds a "latencies" list, each attempt's seconds go there."""
    loop = asyncio.get_running_loop()
    deadline, reason = None, None
    for attempt in range(policy.max_retries + 1):
        delay = wanted = None
        if deadline is None:
            await semaphore.acquire()
            deadline = loop.time() + policy.deadline_s
        else:
            try:  # waiting for a slot to retry counts against the deadline
                await asyncio.wait_for(semaphore.acquire(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return Outcome(None, "deadline", attempt, "while waiting for a slot to retry", reason)
        try:
            if stats is not None:
                stats["requests"] = stats.get("requests", 0) + 1
            start = time.perf_counter()
            try:
                reply = await _within(_attempt(client, url, body, headers), deadline)
            except aiohttp.ServerTimeoutError:  # a connect or read over timeout_s (before the deadline)
                reason = "timeout"
            except aiohttp.ClientError:  # refused, dropped, or a broken answer
                reason = "connection"
            except asyncio.TimeoutError:  # the deadline, mid-request
                _latency(stats, start)
                return Outcome(None, "deadline", attempt + 1, "during a request", reason)
            else:
                _latency(stats, start)
                if reply.status == 200:
                    return Outcome(reply, attempts=attempt + 1)
                reason = f"http_{reply.status}"
                if reply.status != 429 and reply.status < 500:  # a client error: retrying won't help
                    return Outcome(None, reason, attempt + 1, CLIENT_ERROR)
                retry_after = reply.headers.get("Retry-After")
                if retry_after is not None:
                    try:
                        wanted = max(0.0, float(retry_after))
                        delay = min(wanted, policy.backoff_max_s)
                    except ValueError:
                        delay = wanted = None
            if reason in ("timeout", "connection"):
                _latency(stats, start)
        finally:
            semaphore.release()
        if attempt == policy.max_retries:
            return Outcome(None, reason, attempt + 1, RETRIES_SPENT)
        if delay is None:  # exponential backoff with full jitter
            delay = random.uniform(0, min(policy.backoff_max_s, policy.backoff_base_s * 2**attempt))
        wait = max(delay, wanted or 0.0)  # a Retry-After past the deadline: give up now
        if wait >= deadline - loop.time():
            return Outcome(None, "deadline", attempt + 1, f"before a retry (it would wait {wait:.2f} s)", reason)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _within(coroutine, deadline: float):
    """Await `coroutine`, cancelled at loop time `deadline` (asyncio.TimeoutError). Python 3.11+
    does it in place (asyncio.timeout_at); older versions wrap it in a task (wait_for)."""
    if hasattr(asyncio, "timeout_at"):
        async with asyncio.timeout_at(deadline):
            return await coroutine
    return await asyncio.wait_for(coroutine, max(0.0, deadline - asyncio.get_running_loop().time()))


def _latency(stats: dict | None, start: float) -> None:
    if stats is not None and "latencies" in stats:  # kept only by callers that ask (a list in stats)
        stats["latencies"].append(time.perf_counter() - start)
