"""`python -m wavalign.eval` — score a policy on the built-in world's test split (or, with a
config whose data is a JSONL file or HF dataset, on its eval records with its judges), with
bootstrap 95% confidence intervals, or compare two policies prompt by prompt.

    python -m wavalign.eval                                  # the world's base policy
    python -m wavalign.eval runs/my-run                      # a run's latest checkpoint
    python -m wavalign.eval runs/my-run/checkpoints/step_80 --out trained.json
    python -m wavalign.eval --compare base runs/my-run       # B - A per metric, judge win rate
    python -m wavalign.eval --config my_model.yaml           # model.path on data.eval_path, its judges

Metrics per prompt (greedy response): IQ (answer correct, %), EQ (style 1-5), text-speech
WER (consistency of the two channels), the composite judge reward and each judge. A run's
own config (world, judges, response budget) is used when the target is a run or checkpoint;
a comparison scores both policies with the same settings and judge noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from wavalign.eval.checkpoints import (Target, data_evaluator, load_model, load_world_for, resolve_target,
                                      world_evaluator)
from wavalign.eval.report import (comparison_table, compare, jsonable, records_from_json, summarize,
                                  summary_table)
from wavalign.eval.stats import DEFAULT_RESAMPLES
from wavalign.files import write_text_atomic
from wavalign.train.config import ConfigError, TrainConfig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wavalign.eval", description=__doc__.split("\n")[0])
    p.add_argument("target", nargs="?", default="base",
                   help="'base' (default), a run directory, a checkpoint directory or a result .json")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two targets prompt by prompt")
    p.add_argument("--config", help="TrainConfig YAML for the world, judges and response budget "
                   "(default: the target run's config.yaml, else the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set eval.limit=50 or --set data.world=fast")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default 2000)")
    p.add_argument("--out", help="write the result (summary, per-prompt records) as JSON here")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    return p.parse_args(argv)


def _config(args, targets: list[Target]) -> TrainConfig:
    path = args.config
    if path is None:
        path = next((t.run_config for t in targets if t.run_config is not None), None)
    return TrainConfig.load(path, list(args.overrides))


def _records(target: Target, config: TrainConfig, world, evaluator, device) -> list[dict]:
    if target.saved is not None:
        return records_from_json(target.saved["records"])
    own_data = config.data.source != "world"
    policy, spec = load_model(target.model_dir, device, config=config if own_data else None)
    if spec is not None and spec != evaluator.spec:
        raise ValueError(f"{target.label}: its modality layout differs from the "
                         f"{'evaluated model' if own_data else 'world'}'s")
    print(f"[eval] {target.label}: {len(evaluator.examples)} prompts ({config.eval.split} split)", flush=True)
    return evaluator.run(policy)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.resamples < 100:
        print("wavalign.eval: --resamples must be at least 100", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    names = list(args.compare) if args.compare else [args.target]
    try:
        resolved = {n: resolve_target(n) for n in names if n != "base"}  # 'base' needs the world first
        config = _config(args, list(resolved.values()))
        scoring = any(n == "base" or not n.endswith(".json") for n in names)  # saved results need nothing
        if config.data.source != "world":  # a real model on its own data: the world only if a judge needs it
            from wavalign.train.rewards import REWARD_KINDS

            needs_world = any(REWARD_KINDS[r.kind].needs_world for r in config.rewards.components)
            world = load_world_for(config) if scoring and needs_world else None
            targets = [resolved[n] if n in resolved else resolve_target(n, world, config) for n in names]
            evaluator = data_evaluator(config, world) if scoring else None
        else:
            world = load_world_for(config) if scoring else None
            targets = [resolved[n] if n in resolved else resolve_target(n, world) for n in names]
            evaluator = world_evaluator(config, world) if world is not None else None
        records = [_records(t, config, world, evaluator, device) for t in targets]
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"wavalign.eval: {error}", file=sys.stderr)
        return 2

    if args.compare:
        try:
            result = compare(records[0], records[1], resamples=args.resamples)
        except ValueError as error:
            print(f"wavalign.eval: {error}", file=sys.stderr)
            return 2
        table = comparison_table(result, targets[0].label, targets[1].label)
        output = {"a": targets[0].label, "b": targets[1].label, "split": config.eval.split, "n": len(records[0]),
                  **result, "records_a": records[0], "records_b": records[1]}
    else:
        summary = summarize(records[0], resamples=args.resamples)
        table = summary_table(summary)
        output = {"target": targets[0].label, "split": config.eval.split, "n": len(records[0]),
                  "metrics": summary, "records": records[0]}
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(jsonable(output), indent=1) + "\n")
        print(f"[eval] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
