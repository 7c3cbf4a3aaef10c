"""HttpJudge against a local server that misbehaves: every case ends in a score or None,
counted, bounded in time; the cache prevents repeat requests; the key never leaks."""

import logging
import time

import pytest
import torch

from wavalign.rewards.fake_judge_server import JudgeServer
from wavalign.rewards import Completion, HttpJudge, JudgeConfig
from wavalign.rewards.http_judge import parse_score

SECRET = "sk-test-THIS-MUST-NOT-LEAK-123"


def judge_for(server, tmp_path=None, **overrides):
    fields = dict(base_url=server.url, api_key_env="WAVALIGN_TEST_JUDGE_KEY", timeout_s=0.5, max_retries=2,
                  backoff_base_s=0.05, backoff_max_s=0.3, concurrency=8, deadline_s=5.0,
                  cache_dir=str(tmp_path / "cache") if tmp_path else None)
    fields.update(overrides)
    return HttpJudge(JudgeConfig(**fields))


def test_every_misbehaviour_ends_in_score_or_none(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WAVALIGN_TEST_JUDGE_KEY", SECRET)
    cases = ["ok", "slow", "error500", "ratelimit", "malformed", "prose", "range", "two_scores", "drop", "bad_request"]
    audio = torch.sin(torch.linspace(0, 100, 1600))
    completions = [Completion(text=f"reply for case:{c}", audio=audio, sample_rate=16000) for c in cases]
    caplog.set_level(logging.DEBUG)
    with JudgeServer() as server:
        judge = judge_for(server)
        start = time.perf_counter()
        scores = judge([f"question case:{c}" for c in cases], completions)
        elapsed = time.perf_counter() - start
    expected = {"ok": 4.0, "error500": 3.0, "ratelimit": 2.5}
    assert dict(zip(cases, scores)) == {c: expected.get(c) for c in cases}
    failures = judge.stats["failures"]
    assert failures == {"timeout": 1, "malformed_response": 1, "no_valid_score": 3, "connection": 1, "http_400": 1}
    assert server.counts["error500"] == 2 and server.counts["ratelimit"] == 2
    assert server.counts["slow"] == 3 and server.counts["drop"] == 3  # retried, then given up
    assert server.counts["bad_request"] == 1  # a 4xx other than 429 is not retried
    assert elapsed < 6.0
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers)  # the key was sent...
    assert SECRET not in caplog.text  # ...and never logged
    summary = judge.summary()
    assert summary["judge/failures"] == 7 and summary["judge/scored"] == 3


def test_cache_prevents_second_request_and_stores_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WAVALIGN_TEST_JUDGE_KEY", SECRET)
    with JudgeServer() as server:
        judge = judge_for(server, tmp_path)
        first = judge(["q case:ok"], [Completion(text="a")])
        second = judge(["q case:ok"], [Completion(text="a")])
        assert first == second == [4.0]
        assert server.counts["ok"] == 1 and judge.stats["cache_hits"] == 1
        judge(["q case:ok"], [Completion(text="different")])
        assert server.counts["ok"] == 2
        judge(["q case:prose"], [Completion(text="a")])  # failures are not cached
        judge(["q case:prose"], [Completion(text="a")])
        assert server.counts["prose"] == 2
    for path in (tmp_path / "cache").iterdir():
        assert SECRET not in path.read_text()


def test_requests_run_concurrently_up_to_the_limit():
    # Behaviour, not timing (speed lives in benchmarks/bench_judge.py): the server sees
    # several requests in flight at once, never more than the configured limit.
    with JudgeServer(latency_s=0.2) as server:
        judge = judge_for(server, timeout_s=5.0, concurrency=4)
        scores = judge(["q case:ok"] * 12, [Completion(text=f"r{i}") for i in range(12)])
    assert scores == [4.0] * 12
    assert 2 <= server.max_in_flight <= 4


def test_parse_score_is_strict():
    assert parse_score("fine <score>5</score>", 1, 5) == 5.0
    assert parse_score("<score> 3.5 </score>", 1, 5) == 3.5
    assert parse_score("<score>0</score>", 1, 5) is None
    assert parse_score("score: 4", 1, 5) is None
    assert parse_score("<score>2</score><score>3</score>", 1, 5) is None


def test_config_validation():
    with pytest.raises(ValueError, match="judge kind must be one of"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", kind="vibes")
    with pytest.raises(ValueError, match="base_url must start with http"):
        JudgeConfig(base_url="127.0.0.1:1")
    for bad in (0, -1.0, float("nan"), float("inf"), "soon"):
        with pytest.raises(ValueError, match="deadline_s"):
            JudgeConfig(base_url="http://127.0.0.1:1/v1", deadline_s=bad)


def test_default_deadline_is_derived_from_timeout_and_retries():
    config = JudgeConfig(base_url="http://127.0.0.1:1/v1", timeout_s=2.0, max_retries=3, backoff_max_s=1.0)
    assert config.deadline_s is None and config.total_deadline_s == 4 * 2.0 + 3 * 1.0
    assert JudgeConfig(base_url="http://127.0.0.1:1/v1", deadline_s=7).total_deadline_s == 7.0


def test_trickling_server_is_cut_at_the_total_deadline(monkeypatch, caplog):
    # One byte every 200 ms never trips the 1 s per-read timeout; only the total deadline
    # stops it. The sample gets None (never the score the trickle would finally deliver),
    # the failure is counted, and the rest of the batch is scored. With one slot, "ok" is
    # only sent once the abandoned request has given its slot back.
    monkeypatch.setenv("WAVALIGN_TEST_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    deadline = 1.5
    with JudgeServer() as server:
        judge = judge_for(server, timeout_s=1.0, deadline_s=deadline, concurrency=1)
        start = time.perf_counter()
        scores = judge(["q case:trickle", "q case:ok"], [Completion(text="a"), Completion(text="b")])
        elapsed = time.perf_counter() - start
        assert judge(["q case:ok"], [Completion(text="c")]) == [4.0]  # the client moves on
    assert scores == [None, 4.0]
    assert elapsed < deadline + 1.0
    assert judge.stats["failures"] == {"deadline": 1}
    assert server.counts["trickle"] == 1  # the deadline left no time for a retry
    assert judge.summary()["judge/failures_deadline"] == 1.0
    assert "deadline" in caplog.text and SECRET not in caplog.text


def test_deadline_spans_retries():
    # Each attempt at the slow case times out after 0.5 s; the 0.8 s deadline ends the second.
    with JudgeServer() as server:
        judge = judge_for(server, timeout_s=0.5, max_retries=4, deadline_s=0.8)
        start = time.perf_counter()
        assert judge(["q case:slow"], [Completion(text="a")]) == [None]
        elapsed = time.perf_counter() - start
    assert elapsed < 0.8 + 1.0
    assert judge.stats["failures"] == {"deadline": 1}
    assert server.counts["slow"] == 2


def test_retry_after_past_the_deadline_fails_now():
    with JudgeServer() as server:
        judge = judge_for(server, deadline_s=2.0)
        start = time.perf_counter()
        assert judge(["q case:ratelimit_long"], [Completion(text="a")]) == [None]
        elapsed = time.perf_counter() - start
    assert server.counts["ratelimit_long"] == 1  # no retry into a wait the deadline cannot cover
    assert judge.stats["failures"] == {"deadline": 1}
    assert elapsed < 1.0
