"""python -m wavalign.world build | demo | show

  build            build (or reuse) the world; prints where it lives and its report table
  demo --out DIR   write gold vs policy WAV files and a table a person can listen to and read
  show             print the cached world's path and report
Options: --fast (a small world that builds in seconds), --config YAML (WorldConfig fields),
--seed N, --force (rebuild even if cached). Cache: $WAVALIGN_CACHE or ~/.cache/wavalign.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _config(args):
    from wavalign.world.config import WorldConfig

    overrides = {} if args.seed is None else {"seed": args.seed}
    if args.config:
        base = WorldConfig.from_yaml(args.config).to_dict()
        return WorldConfig.from_dict({**base, **overrides})
    return WorldConfig.fast(**overrides) if args.fast else WorldConfig(**overrides)


def report_table(report: dict) -> str:
    rows = [("gold (detokenised units)", report["gold_test"]), ("base policy, greedy", report["base_test_greedy"]),
            ("base policy, sampled T=1", report["base_test_sampled_t1"])]
    lines = ["| test split | IQ % | EQ (1-5) | WER text vs speech |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['IQ']:.1f} | {m['EQ']:.2f} | {m['WER']:.3f} |" for name, m in rows]
    rho = report["judge_spearman_dev"]
    lines.append("")
    lines.append(f"Judge reliability (Spearman with the exact score, dev, n={rho['n']}): "
                 f"semantic {rho['semantic_judge']:.2f}, acoustic {rho['acoustic_judge']:.2f}")
    return "\n".join(lines)


def demo(world, out: Path, count: int) -> str:
    from wavalign.world import tasks
    from wavalign.world.audio import SAMPLE_RATE, write_wav
    from wavalign.world.espeak import synthesize

    out.mkdir(parents=True, exist_ok=True)
    test = world.examples("test")
    picked, seen = [], set()
    for example in test:  # one per style first, then the rest in order
        if example["style"] not in seen:
            picked.append(example)
            seen.add(example["style"])
    picked += [e for e in test if e not in picked]
    picked = picked[:count]
    policy = world.load_policy()
    _, channels = world.generate(policy, picked, temperature=0.0)
    lines = ["| # | style | prompt | gold text | policy text | policy speech heard as | IQ | EQ |",
             "|---|---|---|---|---|---|---|---|"]
    for index, (example, (text, units)) in enumerate(zip(picked, channels)):
        stem = f"{index:02d}_{example['style']}"
        write_wav(out / f"{stem}_gold_espeak.wav",
                  synthesize(example["response_text"], tasks.example_voice(example["style"], example["id"])),
                  SAMPLE_RATE)
        write_wav(out / f"{stem}_gold_units.wav", world.scorer.wave(example["response_units"]), SAMPLE_RATE)
        if units:
            write_wav(out / f"{stem}_policy.wav", world.scorer.wave(units), SAMPLE_RATE)
        a = world.scorer.assess(text, units, example["answer"], example["style"])
        lines.append(f"| {index} | {example['style']} | {example['prompt_text']} | {example['response_text']} | "
                     f"{text} | {a.recognized or '(no speech)'} | {'yes' if a.correct else 'no'} | {a.eq:.2f} |")
    table = "\n".join(lines) + "\n\n" + report_table(world.report) + "\n"
    (out / "table.md").write_text(table)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wavalign.world", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "demo", "show"])
    parser.add_argument("--out", type=Path, help="demo: output directory")
    parser.add_argument("-n", "--count", type=int, default=6, help="demo: number of test prompts")
    parser.add_argument("--fast", action="store_true", help="the small world used by the tests")
    parser.add_argument("--config", help="YAML file of WorldConfig fields")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.out is None:
        parser.error("demo needs --out DIR")
    if args.count < 1:
        parser.error("--count must be >= 1")

    from wavalign.world import World, build_world, world_dir

    try:
        config = _config(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "show":
        path = world_dir(config)
        if not (path / "world.json").is_file():
            print(f"no world built for this config at {path}; run: python -m wavalign.world build", file=sys.stderr)
            return 1
    else:
        path = build_world(config, force=args.force)
    world = World(path)
    print(f"world: {path}")
    if args.command == "demo":
        print(demo(world, args.out, args.count))
        print(f"wrote WAV files and table.md to {args.out}")
    else:
        print(report_table(world.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
