"""`python -m wavalign.train [MODE]` — post-train a spoken dialogue model.

With no arguments: the embedded default. It builds (once, ~2 min, then cached) or reuses the
built-in world, evaluates its base policy on the test split, trains it in hybrid (WavAlign)
mode on CPU, trains the SFT-only baseline on the same gold (eval.baseline: sft) and prints one
table: base | SFT only | WavAlign, with paired CIs of WavAlign - SFT only.

    python -m wavalign.train                                   # embedded default
    python -m wavalign.train grpo --set objective.rl_scope=all # full-token GRPO
    python -m wavalign.train --config configs/train/world.yaml --set optim.steps=50 --name my-run
    python -m wavalign.train --resume runs/my-run              # continue exactly where it stopped
    torchrun --nproc-per-node 2 -m wavalign.train --set run.device=cpu   # data parallel
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from wavalign.train.baseline import MODE_LABELS
from wavalign.train.config import MODES, ConfigError, TrainConfig
from wavalign.train import distributed


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wavalign.train",
        description="WavAlign hybrid post-training (and grpo / sft / dpo). No arguments: the embedded default "
                    "on the built-in world.")
    parser.add_argument("mode", nargs="?", choices=MODES, help="training mode (default: the config's, hybrid)")
    parser.add_argument("--config", help="a TrainConfig YAML (see configs/train/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--name", help="run name: the run directory is <run.output_dir>/<name>")
    parser.add_argument("--fast", action="store_true",
                        help="the small test world and a short run (a smoke test in about a minute)")
    parser.add_argument("--resume", metavar="RUN_DIR", nargs="?", const="",
                        help="continue the run in RUN_DIR (or the one named by --name) from its latest checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


FAST_OVERRIDES = ["data.world=fast", "optim.steps=12", "optim.prompts_per_step=8", "run.save_every=0",
                  "rollout.max_new_tokens=96"]


def resolve_config(args) -> tuple[TrainConfig, Path | None]:
    overrides = (FAST_OVERRIDES if args.fast else []) + list(args.overrides)
    if args.mode:
        overrides.append(f"mode={args.mode}")
    if args.name:
        overrides.append(f"run.name={args.name}")
    run_dir = None
    config_path = args.config
    if args.resume is not None:
        if args.resume:
            run_dir = Path(args.resume)
        elif args.name:
            run_dir = None  # resolved from run.output_dir / name below
        else:
            raise ConfigError("--resume needs the run directory (or --name)")
        if run_dir is not None and config_path is None:
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(f"--resume: {run_dir} has no config.yaml; is it a run directory?")
            config_path = run_dir / "config.yaml"
    config = TrainConfig.load(config_path, overrides)
    if args.resume is not None and run_dir is None:
        run_dir = Path(config.run.output_dir) / config.run.name
    return config, run_dir


def format_table(evaluations: dict) -> str:
    from wavalign.train.evaluator import metric_digits, table_label

    before, after = evaluations.get("before", {}), evaluations.get("after", {})
    names = ["IQ", "EQ", "WER", "reward"] + sorted({k for k in list(before) + list(after) if k.startswith("reward/")})
    lines = ["| metric (test split, greedy) | base | trained | change |", "|---|---|---|---|"]
    for key in names:
        if key not in before and key not in after:
            continue
        label = table_label(key)
        fmt = "{:.%df}" % metric_digits(key)
        b, a = before.get(key, math.nan), after.get(key, math.nan)
        b = math.nan if b is None else b
        a = math.nan if a is None else a
        change = a - b
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} | {'+' if change >= 0 else ''}"
                     f"{fmt.format(change)} |")
    return "\n".join(lines)


# `python -m wavalign.train` with no arguments: the embedded default (configs/train/world.yaml)
# also trains the SFT-only baseline and prints the three-column comparison.
EMBEDDED_DEFAULT_OVERRIDES = ["eval.baseline=sft"]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not argv:
        args.overrides = list(EMBEDDED_DEFAULT_OVERRIDES)
    try:
        config, run_dir = resolve_config(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"wavalign.train: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0

    from wavalign.train.collect import JudgeFailureError
    from wavalign.train.trainer import Trainer

    try:
        trainer = Trainer(config, resume=args.resume is not None, run_dir=run_dir)
    except (FileNotFoundError, ValueError, NotImplementedError) as error:  # bad paths, data or checkpoint
        print(f"wavalign.train: {error}", file=sys.stderr)
        return 2
    try:
        trainer._say(f"mode {config.mode}, {config.optim.steps} steps x {config.optim.prompts_per_step} prompts x "
                     f"{config.rollout.group_size} samples; run directory {trainer.run_dir}")
        summary = trainer.fit()
        distributed.barrier()  # every rank finished before any tears its process group down
    except JudgeFailureError as error:
        print(f"wavalign.train: stopped: {error}", file=sys.stderr)
        return 3
    finally:
        trainer.close()
    if summary.get("interrupted"):
        return 130
    comparison = None
    if config.eval.baseline == "sft" and config.mode != "sft":
        code, comparison = train_baseline(config, Path(summary["run_dir"]), trainer.is_main)
        if code:
            return code
    if trainer.is_main:
        # with the SFT-only baseline, its three-column comparison replaces the before/after table
        table = comparison or format_table(summary["evaluations"])
        print()
        if comparison:
            print(f"{MODE_LABELS[config.mode]} and the SFT-only baseline on the same gold ({config.optim.steps} "
                  f"steps each; the baseline in {summary['run_dir']}/sft_only), paired over prompts:\n")
        print(table)
        counters = summary["counters"]
        print(f"\njudge calls without a score: {counters['judge_failures']} of {counters['samples_scored']}; "
              f"skipped non-finite steps: {counters['skipped_nonfinite_steps']}")
        print(f"run directory: {summary['run_dir']} (metrics.jsonl, plots/, tensorboard/, checkpoints/)")
        (Path(summary["run_dir"]) / "table.md").write_text(table + "\n")
    return 0


def train_baseline(config: TrainConfig, run_dir: Path, is_main: bool) -> tuple[int, str | None]:
    """Train (or reuse, or resume) the SFT-only baseline inside run_dir (eval.baseline: sft).
    -> (exit code, the comparison table or None)."""
    from wavalign.train.baseline import BASELINE_DIR, baseline_config, comparison_table, read_records
    from wavalign.train.trainer import Trainer

    baseline = baseline_config(config, run_dir)
    out = run_dir / BASELINE_DIR
    if not (out / "eval" / "after.jsonl").is_file():
        resume = (out / "checkpoints").is_dir()
        if is_main:
            print(f"[train] the SFT-only baseline: mode sft, {config.optim.steps} steps on the gold-bearing records, "
                  f"run directory {out}{' (resumed)' if resume else ''}", flush=True)
        try:
            trainer = Trainer(baseline, resume=resume, run_dir=out if resume else None)
        except (FileNotFoundError, ValueError, NotImplementedError) as error:
            print(f"wavalign.train: the SFT-only baseline: {error}", file=sys.stderr)
            return 2, None
        try:
            summary = trainer.fit()
            distributed.barrier()
        finally:
            trainer.close()
        if summary.get("interrupted"):
            return 130, None
    if not is_main:
        return 0, None
    try:
        table = comparison_table(read_records(run_dir / "eval" / "before.jsonl"),
                                 read_records(out / "eval" / "after.jsonl"),
                                 read_records(run_dir / "eval" / "after.jsonl"), MODE_LABELS[config.mode])
    except (FileNotFoundError, ValueError) as error:  # e.g. eval.before: false
        logging.getLogger("wavalign.train").warning("no comparison with the SFT-only baseline: %s", error)
        return 0, None
    return 0, table


if __name__ == "__main__":
    sys.exit(main())
