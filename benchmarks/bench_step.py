"""Benchmark: the default training step and the world's scoring, on this machine.

1. Scoring: the world's exact assessment of 64 sampled responses (16 train prompts x 4, the
   base policy at T=0.7), a fresh cache each run: WorldScorer.assess_many (native DTW,
   batched, threads) against the named baseline measured in the same run: one response at a
   time with a pure-PyTorch DTW (vectorised over templates, torch.cdist frame distances).
   Median of --repeats alternating runs.
2. Step: `python -m wavalign.train` steps of the default config (16 prompts x 4 samples), the
   trainer's own time/* metrics averaged over the steps after the first two.

Last line: RESULT step_s=<mean step> reward_s=<mean reward phase> scoring_ratio=<baseline / native>

Usage: python benchmarks/bench_step.py [--quick] [--steps N] [--world default|fast|YAML] [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cdist_dtw_distances(query, templates, lengths):
    """The baseline DTW the native op is measured against, in PyTorch: query [Tq, C],
    templates [K, Tmax, C] -> [K] path cost / Tq, one cost-matrix row per step, vectorised over
    templates, frame distances by torch.cdist."""
    import torch

    tq = query.shape[0]
    k, tmax = templates.shape[:2]
    cost = torch.cdist(query[None].expand(k, -1, -1), templates)  # [K, Tq, Tmax]
    padded = torch.full((k, tmax + 2), math.inf)
    total = padded[:, 2:]
    total[:, 0] = cost[:, 0, 0]
    for i in range(1, tq):
        best = torch.minimum(torch.minimum(padded[:, 2:], padded[:, 1:-1]), padded[:, :-2])
        torch.add(cost[:, i], best, out=total)
    return total.gather(1, (lengths - 1).clamp_min(0)[:, None]).squeeze(1) / tq


def baseline_assess(scorer, text, units, answer, style):
    """One response at a time, recognised by the baseline (cdist) DTW."""
    import torch

    from wavalign.world.audio import analyze
    from wavalign.world.metrics import MIN_SPEECH_UNITS
    from wavalign.world.recognizer import cepstra

    if len(units) < MIN_SPEECH_UNITS:
        return scorer._judge(text, None, None, answer, style)
    frames = analyze(scorer.wave(units))
    query = cepstra(frames)
    recognizer = scorer.recognizer
    if query.shape[0] < 2:
        return scorer._judge(text, frames, "", answer, style)
    distances = cdist_dtw_distances(query, recognizer.templates, recognizer.lengths)
    heard = recognizer.sentences[int(recognizer.owners[int(torch.argmin(distances))])]
    return scorer._judge(text, frames, heard, answer, style)


def bench_scoring(world, repeats: int) -> tuple[float, float, int]:
    from wavalign.world.metrics import WorldScorer

    examples = world.examples("train")[:16]
    _, channels = world.generate(world.load_policy(), examples, n=4, temperature=0.7, seed=1)
    items = [(text, units, examples[row // 4]["answer"], examples[row // 4]["style"])
             for row, (text, units) in enumerate(channels)]
    base = world.scorer
    native, twin = [], []
    for _ in range(repeats):
        fresh = WorldScorer(base.units, base.recognizer, base.meter)
        start = time.perf_counter()
        fresh.assess_many(items)
        native.append(time.perf_counter() - start)
        start = time.perf_counter()
        for item in items:
            baseline_assess(base, *item)
        twin.append(time.perf_counter() - start)
    return statistics.median(native), statistics.median(twin), len(items)


def bench_steps(steps: int, world: str, overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "wavalign.train", "--name", "bench", "--set", f"run.output_dir={out}",
                   "--set", f"optim.steps={steps}", "--set", f"data.world={world}", "--set", "run.progress=false",
                   "--set", "run.plots=false", "--set", "run.tensorboard=false", "--set", "eval.before=false",
                   "--set", "eval.after=false", "--set", "run.save_every=0"]
        for override in overrides:
            command += ["--set", override]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (Path(out) / "bench" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "train"][2:]
    keys = sorted({k for r in rows for k in r if k.startswith("time/")})
    return {k: statistics.mean(r[k] for r in rows if k in r) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 steps, 1 scoring repeat")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--world", default="default", help="default | fast | a WorldConfig YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    steps = args.steps or (6 if args.quick else 14)
    repeats = args.repeats or (1 if args.quick else 3)

    import torch

    from wavalign.world import World, WorldConfig, build_world

    world = World(build_world(WorldConfig.named(args.world), progress=False))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    native, twin, n = bench_scoring(world, repeats)
    print(f"scoring {n} responses: native batched {native:.3f} s, PyTorch DTW one at a time {twin:.3f} s "
          f"({twin / native:.2f}x)")
    times = bench_steps(steps, args.world, args.overrides)
    print(f"training step ({steps} steps, first two dropped): " + ", ".join(f"{k[5:]} {v:.3f} s" for k, v in times.items()))
    print(f"RESULT step_s={times.get('time/step', math.nan):.3f} reward_s={times.get('time/reward', math.nan):.3f} "
          f"scoring_ratio={twin / native:.2f}")


if __name__ == "__main__":
    main()
