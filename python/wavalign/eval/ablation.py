"""`python -m wavalign.eval.ablation` — the paper's comparison on the built-in world.

Every arm trains the same base policy (the world's) with its own TrainConfig overrides, for
each seed; every trained policy is scored on the test split by the same evaluator (greedy,
the same judge noise per prompt). The base policy is scored once. Results go to OUT:

    OUT/base/eval.json                 base policy, per-prompt records
    OUT/<arm>/seed_<s>/                the training run (config, metrics.jsonl, checkpoint)
    OUT/<arm>/seed_<s>/eval.json       its per-prompt records
    OUT/results.json, OUT/table.md     means over seeds and prompts with 95% CIs, and the
                                       change from the base policy (paired), per arm
    OUT/plots/*.png                    reward curves, gate lambda, per-channel entropy, IQ/EQ per arm

A finished (arm, seed) is not trained again when its eval.json exists and was made with the
same config, so an interrupted ablation continues where it stopped.

    python -m wavalign.eval.ablation                               # CPU profile (configs/ablation/cpu.yaml)
    python -m wavalign.eval.ablation --config configs/ablation/gpu.yaml
    python -m wavalign.eval.ablation --arms sft wavalign --seeds 0  # a subset
    python -m wavalign.eval.ablation --report-only                  # re-aggregate finished runs

This module runs the arms; the aggregation, tables and plots are in wavalign.eval.ablation_report.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from wavalign.eval.ablation_report import (TABLE_METRICS, aggregate, format_tables, plot,  # noqa: F401
                                           question_supervision)
from wavalign.eval.core import mean_summary
from wavalign.eval.report import jsonable
from wavalign.train.checkpoint import write_text_atomic
from wavalign.train.config import ConfigError, TrainConfig
from wavalign.yaml_config import load_mapping

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ablation" / "cpu.yaml"


@dataclass(frozen=True)
class Arm:
    name: str
    mode: str
    overrides: tuple[str, ...] = ()
    description: str = ""
    paper: str = ""  # the paper's row this arm stands for


SELECTION_METRICS = ("reward", "IQ", "EQ")  # higher is better


@dataclass(frozen=True)
class Comparison:
    """One of the questions the ablation answers: `arm` − `against`, paired by seed and prompt."""

    arm: str
    against: str
    claim: str = ""  # what the paper says the difference shows


@dataclass(frozen=True)
class LrSelection:
    """Each arm's learning rate, chosen on the dev split: one run per grid value (the same
    steps and seed for every arm), scored greedily on `split`; the best `metric` wins (ties:
    the smaller rate). The test split is never looked at."""

    grid: tuple[float, ...]
    steps: int
    seed: int = 0
    split: str = "dev"
    metric: str = "reward"

    @classmethod
    def from_dict(cls, data, where: str) -> "LrSelection":
        if not isinstance(data, dict) or set(data) - {"grid", "steps", "seed", "split", "metric"}:
            raise ConfigError(f"{where}: lr_selection takes grid, steps, seed, split and metric")
        grid = data.get("grid")
        if not (isinstance(grid, list) and grid and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and v > 0 for v in grid)):
            raise ConfigError(f"{where}: lr_selection.grid must be a non-empty list of learning rates > 0")
        steps, seed = data.get("steps"), data.get("seed", 0)
        if not (isinstance(steps, int) and steps >= 1) or not (isinstance(seed, int) and seed >= 0):
            raise ConfigError(f"{where}: lr_selection.steps must be an integer >= 1 and seed an integer >= 0")
        split, metric = data.get("split", "dev"), data.get("metric", "reward")
        if split not in ("dev", "train"):
            raise ConfigError(f"{where}: lr_selection.split must be dev or train (never test), got {split!r}")
        if metric not in SELECTION_METRICS:
            raise ConfigError(f"{where}: lr_selection.metric must be one of {SELECTION_METRICS}, got {metric!r}")
        return cls(tuple(sorted(float(v) for v in grid)), steps, seed, split, metric)


@dataclass(frozen=True)
class AblationConfig:
    name: str
    seeds: tuple[int, ...]
    common: tuple[str, ...]  # TrainConfig overrides for every arm
    arms: tuple[Arm, ...] = field(default_factory=tuple)
    reference: str | None = None  # the arm every other arm is also compared with
    lr_selection: LrSelection | None = None  # None: every arm uses the common learning rate
    comparisons: tuple[Comparison, ...] = ()  # arm-against-arm differences the report shows

    @classmethod
    def load(cls, path: str | Path) -> "AblationConfig":
        path = Path(path)
        data = load_mapping(path, "ablation settings", allow_empty=True, kind="ablation config", error=ConfigError)
        unknown = set(data) - {"name", "seeds", "common", "arms", "reference", "lr_selection", "comparisons"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        seeds = data.get("seeds", [0, 1, 2])
        if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
            raise ConfigError(f"{path}: seeds must be a non-empty list of integers >= 0")
        common = data.get("common", [])
        if not (isinstance(common, list) and all(isinstance(s, str) for s in common)):
            raise ConfigError(f"{path}: common must be a list of 'section.field=value' strings")
        arms = []
        for index, raw in enumerate(data.get("arms") or []):
            if not isinstance(raw, dict) or "name" not in raw or "mode" not in raw:
                raise ConfigError(f"{path}: arms[{index}] needs at least a name and a mode")
            extra = set(raw) - {"name", "mode", "set", "description", "paper"}
            if extra:
                raise ConfigError(f"{path}: arms[{index}] ({raw['name']}) has unknown keys {sorted(extra)}")
            overrides = raw.get("set", [])
            if not (isinstance(overrides, list) and all(isinstance(s, str) for s in overrides)):
                raise ConfigError(f"{path}: arms[{index}].set must be a list of 'section.field=value' strings")
            arms.append(Arm(str(raw["name"]), str(raw["mode"]), tuple(overrides), str(raw.get("description", "")),
                            str(raw.get("paper", ""))))
        if not arms:
            raise ConfigError(f"{path}: no arms")
        names = [a.name for a in arms]
        if len(set(names)) != len(names) or "base" in names:
            raise ConfigError(f"{path}: arm names must be unique and not 'base', got {names}")
        reference = data.get("reference")
        if reference is not None and reference not in names:
            raise ConfigError(f"{path}: reference {reference!r} is not one of the arms {names}")
        selection = data.get("lr_selection")
        selection = None if selection is None else LrSelection.from_dict(selection, str(path))
        comparisons = []
        for index, raw in enumerate(data.get("comparisons") or []):
            if not isinstance(raw, dict) or set(raw) - {"arm", "against", "claim"} or not {"arm", "against"} <= set(raw):
                raise ConfigError(f"{path}: comparisons[{index}] takes arm, against and an optional claim")
            for key in ("arm", "against"):
                if raw[key] not in names:
                    raise ConfigError(f"{path}: comparisons[{index}].{key} {raw[key]!r} is not one of the arms {names}")
            if raw["arm"] == raw["against"]:
                raise ConfigError(f"{path}: comparisons[{index}] compares {raw['arm']!r} with itself")
            comparisons.append(Comparison(str(raw["arm"]), str(raw["against"]), str(raw.get("claim", ""))))
        config = cls(str(data.get("name", path.stem)), tuple(seeds), tuple(common), tuple(arms), reference, selection,
                     tuple(comparisons))
        for arm in config.arms:  # fail on a bad override before hours of training
            for seed in config.seeds:
                config.train_config(arm, seed, Path("."))
            for lr in (selection.grid if selection else ()):
                config.selection_config(arm, lr, Path("."))
        return config

    def with_overrides(self, overrides: Sequence[str]) -> "AblationConfig":
        return AblationConfig(self.name, self.seeds, self.common + tuple(overrides), self.arms, self.reference,
                              self.lr_selection, self.comparisons)

    def train_config(self, arm: Arm, seed: int, out: Path, lr: float | None = None) -> TrainConfig:
        """The arm's final run for `seed` (at the selected learning rate `lr`, if any)."""
        chosen = [] if lr is None else [f"optim.lr={lr!r}"]
        overrides = list(self.common) + list(arm.overrides) + chosen + [
            f"mode={arm.mode}", f"run.seed={seed}", f"run.output_dir={out / arm.name}", f"run.name=seed_{seed}",
            "eval.before=false", "eval.after=false"]
        return self._load(arm, overrides)

    def selection_config(self, arm: Arm, lr: float, out: Path) -> TrainConfig:
        """The arm's learning-rate trial at `lr`: lr_selection's steps and seed, scored on its split."""
        s = self.lr_selection
        overrides = list(self.common) + list(arm.overrides) + [
            f"optim.lr={lr!r}", f"optim.steps={s.steps}", f"eval.split={s.split}", f"mode={arm.mode}",
            f"run.seed={s.seed}", f"run.output_dir={out / 'lr_selection' / arm.name}", f"run.name=lr_{lr:g}",
            "eval.before=false", "eval.after=false"]
        return self._load(arm, overrides)

    @staticmethod
    def _load(arm: Arm, overrides: list[str]) -> TrainConfig:
        try:
            return TrainConfig.load(None, overrides)
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"arm {arm.name}: {error}") from None


def _write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(jsonable(data), indent=1) + "\n")


def _finished(path: Path, config: TrainConfig) -> bool:
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())
    return saved.get("config") == config.to_dict()


def run_arm(arm: Arm, seed: int, config: TrainConfig, world, out: Path, run_dir: Path | None = None) -> dict:
    """Train one (arm, seed) and score it with the trainer's evaluator (config.eval.split);
    -> the result, also written to <run_dir>/eval.json (default run_dir: out/<arm>/seed_<seed>)."""
    from wavalign.train.trainer import Trainer

    run_dir = run_dir or out / arm.name / f"seed_{seed}"
    start = time.perf_counter()
    trainer = Trainer(config, world=world, run_dir=run_dir)
    try:
        trainer.fit()
        train_seconds = time.perf_counter() - start
        records = trainer.evaluator.run(trainer.policy)  # the run's own evaluator (train/setup.py)
    finally:
        trainer.close()
    result = {"arm": arm.name, "seed": seed, "config": config.to_dict(), "train_seconds": train_seconds,
              "eval_seconds": time.perf_counter() - start - train_seconds, "records": records}
    _write_json(run_dir / "eval.json", result)
    return result


def select_lr(ablation: AblationConfig, arm: Arm, world, out: Path) -> dict:
    """Run (or reuse) the arm's learning-rate trials; -> {"lr": chosen, "trials": {lr: metric}},
    also written to out/lr_selection/<arm>/selection.json."""
    s = ablation.lr_selection
    trials = {}
    for lr in s.grid:
        config = ablation.selection_config(arm, lr, out)
        run_dir = out / "lr_selection" / arm.name / f"lr_{lr:g}"
        if _finished(run_dir / "eval.json", config):
            result = json.loads((run_dir / "eval.json").read_text())
        else:
            print(f"[ablation] {arm.name}: learning-rate trial {lr:g} ({s.steps} steps, scored on {s.split})",
                  flush=True)
            result = run_arm(arm, s.seed, config, world, out, run_dir=run_dir)
        trials[lr] = mean_summary(result["records"]).get(s.metric, math.nan)
    finite = {lr: v for lr, v in trials.items() if not math.isnan(v)}
    if not finite:
        raise ValueError(f"arm {arm.name}: no learning-rate trial has a {s.metric} score")
    best = max(finite.values())
    chosen = min(lr for lr, v in finite.items() if v == best)  # ties: the smaller rate
    selection = {"lr": chosen, "metric": s.metric, "split": s.split, "steps": s.steps, "seed": s.seed,
                 "trials": {f"{lr:g}": v for lr, v in trials.items()}}
    _write_json(out / "lr_selection" / arm.name / "selection.json", selection)
    print(f"[ablation] {arm.name}: learning rate {chosen:g} ({s.split} {s.metric}: "
          + ", ".join(f"{lr:g} -> {v:.3f}" for lr, v in trials.items()) + ")", flush=True)
    return selection


def run_base(config: TrainConfig, world, out: Path) -> dict:
    from wavalign.eval.checkpoints import load_model, world_evaluator

    path = out / "base" / "eval.json"
    reference = {"eval": config.to_dict()["eval"], "rewards": config.to_dict()["rewards"],
                 "max_new_tokens": config.rollout.max_new_tokens, "world": config.data.world}
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None and saved.get("config") == reference:
        return saved
    policy, _ = load_model(world.policy_path, device=_device(config))
    records = world_evaluator(config, world).run(policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"arm": "base", "seed": None, "config": reference, "records": records}
    _write_json(path, result)
    return result


def _built_world_supervision(config: TrainConfig) -> dict[str, str]:
    """question_supervision of the config's world when it is built; {} otherwise (--report-only
    never builds a world: without it the report only lacks the per-supervision table)."""
    from wavalign.world import World, WorldConfig, world_dir

    path = world_dir(WorldConfig.named(config.data.world))
    if not (path / "world.json").is_file():
        print(f"[ablation] the world is not built ({path}): the report leaves out IQ by supervision", flush=True)
        return {}
    return question_supervision(World(path))


def _device(config: TrainConfig):
    from wavalign.train.distributed import pick_device

    return pick_device(config.run.device)


# ---------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m wavalign.eval.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="ablation YAML (default: the CPU profile)")
    p.add_argument("--out", help="output directory (default: runs/ablation-<name>)")
    p.add_argument("--arms", nargs="+", help="run only these arms")
    p.add_argument("--seeds", nargs="+", type=int, help="run only these seeds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TrainConfig override for every arm (e.g. run.device=cuda)")
    p.add_argument("--report-only", action="store_true", help="aggregate the finished runs; train nothing")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        ablation = AblationConfig.load(args.config)
        if args.overrides:
            ablation = ablation.with_overrides(args.overrides)
        arms = [a for a in ablation.arms if not args.arms or a.name in args.arms]
        unknown = set(args.arms or []) - {a.name for a in ablation.arms}
        if unknown:
            raise ConfigError(f"--arms: no such arm {sorted(unknown)}; the config has {[a.name for a in ablation.arms]}")
        seeds = [s for s in (args.seeds or ablation.seeds)]
        out = Path(args.out or f"runs/ablation-{ablation.name}")
        base_config = TrainConfig.load(None, list(ablation.common))
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"wavalign.eval.ablation: {error}", file=sys.stderr)
        return 2

    if not args.report_only:
        from wavalign.eval.checkpoints import load_world_for

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Writing model shards" bar per run drowns the log
        world = load_world_for(base_config)
        start = time.perf_counter()
        run_base(base_config, world, out)
        jobs = [(arm, seed) for arm in arms for seed in seeds]
        chosen: dict[str, float | None] = {}
        for index, (arm, seed) in enumerate(jobs, 1):
            if arm.name not in chosen:  # the arm's learning rate, from its dev trials, before its seeds
                chosen[arm.name] = select_lr(ablation, arm, world, out)["lr"] if ablation.lr_selection else None
            config = ablation.train_config(arm, seed, out, chosen[arm.name])
            done = out / arm.name / f"seed_{seed}" / "eval.json"
            elapsed = (time.perf_counter() - start) / 60
            if _finished(done, config):
                print(f"[ablation] {index}/{len(jobs)} {arm.name} seed {seed}: done before, kept", flush=True)
                continue
            print(f"[ablation] {index}/{len(jobs)} {arm.name} seed {seed} ({elapsed:.1f} min so far)", flush=True)
            result = run_arm(arm, seed, config, world, out)
            means = mean_summary(result["records"])
            print(f"[ablation]   IQ {means.get('IQ', math.nan):.1f}  EQ {means.get('EQ', math.nan):.2f}  "
                  f"reward {means.get('reward', math.nan):.2f}  ({result['train_seconds']:.0f} s training, "
                  f"{result['eval_seconds']:.0f} s eval)", flush=True)
        print(f"[ablation] all runs finished in {(time.perf_counter() - start) / 60:.1f} min", flush=True)

    try:
        supervision = question_supervision(world) if not args.report_only else _built_world_supervision(base_config)
        summary = aggregate(ablation, out, resamples=args.resamples, supervision=supervision)
    except (FileNotFoundError, ValueError) as error:
        print(f"wavalign.eval.ablation: {error}", file=sys.stderr)
        return 2
    table = format_tables(summary)
    (out / "table.md").write_text(table + "\n")
    _write_json(out / "results.json", summary)
    plot(ablation, summary, out)
    print(table)
    print(f"[ablation] wrote {out}/results.json, table.md, plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
