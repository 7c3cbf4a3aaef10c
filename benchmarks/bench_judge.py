"""Benchmark: HttpJudge (concurrent, async) vs a serial request loop, same local server.

The server (wavalign.rewards.fake_judge_server) answers every request after a fixed latency
(50 ms by default), like a remote audio judge. Both clients send the same 64 requests in the
same run, alternating, each side's median over --repeats runs. Last line: RESULT
ratio=<serial time / HttpJudge time> ...

Usage: python benchmarks/bench_judge.py [--quick] [--requests N] [--latency S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import httpx

from wavalign.rewards import Completion, HttpJudge, JudgeConfig
from wavalign.rewards.fake_judge_server import JudgeServer


def serve(latency: float, urls, stop) -> None:
    # The server runs in its own process, as a remote judge would: it does not compete with
    # the client for this interpreter's GIL.
    with JudgeServer(latency_s=latency) as server:
        urls.put(server.url)
        stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 requests")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side; the median is reported")
    args = parser.parse_args()
    n = args.requests or (32 if args.quick else 64)
    prompts = ["question case:ok"] * n
    completions = [Completion(text=f"reply {i}") for i in range(n)]

    context = mp.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    process = context.Process(target=serve, args=(args.latency, urls, stop), daemon=True)
    process.start()
    try:
        url = urls.get(timeout=60)
        judge = HttpJudge(JudgeConfig(base_url=url, api_key_env=None, concurrency=args.concurrency))
        payloads = [judge._payload(p, c) for p, c in zip(prompts, completions)]
        serial_runs, judge_runs, judge_cpu = [], [], []
        for _ in range(max(1, args.repeats)):  # alternate the two, so load changes hit both
            start = time.perf_counter()
            with httpx.Client(timeout=30) as client:  # the serial loop users write today
                serial_ok = sum(client.post(url + "/chat/completions", json=p).status_code == 200 for p in payloads)
            serial_runs.append(time.perf_counter() - start)
            start, start_cpu = time.perf_counter(), time.process_time()
            scores = judge(prompts, completions)  # each call opens its own session, as a training step does
            judge_runs.append(time.perf_counter() - start)
            judge_cpu.append(time.process_time() - start_cpu)  # this client's own CPU, all its threads
        serial, concurrent = statistics.median(serial_runs), statistics.median(judge_runs)
    finally:
        stop.set()
        process.join(timeout=10)
    scored = sum(s is not None for s in scores)
    print(f"# {n} requests, server latency {args.latency * 1e3:.0f} ms, concurrency {args.concurrency}, "
          f"median of {len(judge_runs)} runs each")
    print(f"serial loop: {serial:.2f} s ({serial_ok}/{n} ok)   HttpJudge: {concurrent:.2f} s ({scored}/{n} scored)")
    print(f"# HttpJudge: {statistics.median(judge_cpu) * 1e3:.0f} ms of client CPU per batch "
          f"(the ideal wall time is one latency, {args.latency * 1e3:.0f} ms)")
    print(f"RESULT ratio={serial / concurrent:.1f} serial_s={serial:.3f} judge_s={concurrent:.3f} "
          f"requests={n} latency_ms={args.latency * 1e3:.0f}")


if __name__ == "__main__":
    main()
