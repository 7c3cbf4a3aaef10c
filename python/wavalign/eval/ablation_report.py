"""The ablation's report: aggregation over seeds and prompts, the markdown tables, the plots.

    summary = aggregate(ablation, out)          # means with 95% CIs, paired changes from base
    print(format_tables(summary))
    plot(ablation, summary, out)                # out/plots/*.png

`python -m wavalign.eval.ablation --report-only` runs these on finished runs (see ablation.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from wavalign.eval.core import METRICS
from wavalign.eval.report import digits, records_from_json, verdict
from wavalign.stats import Interval, nanmean, seeded_mean_ci

TABLE_METRICS = ("IQ", "EQ", "WER", "reward")
# training-time series summarised per arm (start and end of training, mean over seeds)
DYNAMICS = {"gate/lambda": "λ (RL weight)", "rollout/text_entropy": "text entropy",
            "rollout/speech_entropy": "speech entropy"}
DYNAMICS_WINDOW = 0.1  # start / end: the mean of the first / last 10% of logged steps
# what the post-training data says about a test prompt's question (the train records'
# `supervision` column, one value per question), in the order the table shows them
SUPERVISION = {"gold": "clean gold", "wrong_answer": "weak teacher, wrong answer",
               "wrong_style": "weak teacher, wrong style", "prompt_only": "no gold (prompt only)"}
_MARKS = {"better": " ↑", "worse": " ↓"}


def question_supervision(world) -> dict[str, str]:
    """{test prompt id: its question's supervision in the train split}; {} for a world whose
    records carry no supervision column (or a test question never asked in train)."""
    by_question = {r["question"]: r["supervision"] for r in world.examples("train") if "supervision" in r}
    return {r["id"]: by_question[r["question"]] for r in world.examples("test") if r.get("question") in by_question}


def _mark(change: Interval, metric: str) -> str:
    """' ↑' / ' ↓' when the change's 95% CI excludes 0 (better / worse), else ''."""
    return _MARKS.get(verdict(change.low, change.high, METRICS[metric]), "")


def aggregate(ablation, out: Path, resamples: int = 2000,
              supervision: dict[str, str] | None = None) -> dict:
    """Means over seeds and prompts with two-level bootstrap CIs, and paired changes from base.
    ablation: the eval.ablation.AblationConfig that ran (its name, arms, seeds); supervision ({test prompt id: category}, from question_supervision): also the mean IQ and
    EQ per category, to show which questions an arm gains or loses on."""
    base_path = out / "base" / "eval.json"
    if not base_path.is_file():
        raise FileNotFoundError(f"{base_path} is missing: run the ablation first")
    base_saved = json.loads(base_path.read_text())
    base = records_from_json(base_saved["records"])
    base_rewards = base_saved.get("config", {}).get("rewards")
    ids = [r["id"] for r in base]
    summary = {"name": ablation.name, "seeds": [], "n_prompts": len(base),
               "base": {m: seeded_mean_ci([[r[m] for r in base]], resamples=resamples) for m in TABLE_METRICS},
               "arms": {}}
    matrices: dict[str, dict[int, list[dict]]] = {}
    for arm in ablation.arms:
        runs = []
        for seed in ablation.seeds:
            path = out / arm.name / f"seed_{seed}" / "eval.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                records = records_from_json(saved["records"])
                if [r["id"] for r in records] != ids:
                    raise ValueError(f"{path}: scored on other prompts than the base evaluation")
                if saved.get("config", {}).get("rewards") != base_rewards:
                    # judged by other reward functions than the base: its reward is not comparable
                    for record in records:
                        record["reward"] = math.nan
                runs.append((seed, records, saved.get("train_seconds", math.nan)))
        if not runs:
            continue
        matrices[arm.name] = {seed: records for seed, records, _ in runs}
        entry = {"description": arm.description, "paper": arm.paper, "mode": arm.mode,
                 "overrides": list(arm.overrides), "seeds": [s for s, _, _ in runs],
                 "train_seconds": sum(t for _, _, t in runs) / len(runs), "metrics": {}}
        entry["dynamics"] = training_dynamics([out / arm.name / f"seed_{s}" for s, _, _ in runs])
        selection = out / "lr_selection" / arm.name / "selection.json"
        if selection.is_file():
            entry["lr_selection"] = json.loads(selection.read_text())
        for metric in TABLE_METRICS:
            matrix = [[r[metric] for r in records] for _, records, _ in runs]  # [seeds, prompts]
            baseline = [r[metric] for r in base]
            per_seed = [nanmean(row) for row in matrix]
            entry["metrics"][metric] = {
                "value": seeded_mean_ci(matrix, resamples=resamples),
                "change": seeded_mean_ci(matrix, baseline=baseline, resamples=resamples),
                "per_seed": per_seed}
        summary["arms"][arm.name] = entry
        summary["seeds"] = sorted(set(summary["seeds"]) | set(entry["seeds"]))
    if supervision:
        summary["by_supervision"] = _by_supervision(base, matrices, supervision)
    reference = ablation.reference
    if reference in matrices:
        summary["reference"] = reference
        for name, by_seed in matrices.items():
            if name == reference:
                continue
            summary["arms"][name]["versus_reference"] = _paired(by_seed, matrices[reference], resamples)
    summary["comparisons"] = [  # {} difference: one of the two arms has not run (the table says so)
        {"arm": c.arm, "against": c.against, "claim": c.claim,
         "difference": _paired(matrices[c.arm], matrices[c.against], resamples)
         if c.arm in matrices and c.against in matrices else {}}
        for c in ablation.comparisons]
    return summary


def _paired(arm: dict[int, list[dict]], against: dict[int, list[dict]], resamples: int) -> dict:
    """{metric: CI of arm − against}, seed k of one arm against seed k of the other, paired by
    prompt; {} when they share no seed."""
    seeds = sorted(set(arm) & set(against))
    if not seeds:
        return {}
    return {metric: seeded_mean_ci([[x[metric] - y[metric] for x, y in zip(arm[s], against[s])] for s in seeds],
                                   resamples=resamples)
            for metric in TABLE_METRICS}


def _by_supervision(base: list[dict], matrices: dict[str, dict[int, list[dict]]],
                    supervision: dict[str, str]) -> dict:
    """{category: {"n": prompts, "base": {metric: mean}, "arms": {arm: {metric: mean over seeds and prompts}}}}."""
    table = {}
    categories = list(SUPERVISION) + sorted(set(supervision.values()) - set(SUPERVISION))  # unknown ones last
    for category in categories:
        rows = [i for i, r in enumerate(base) if supervision.get(r["id"]) == category]
        if not rows:
            continue
        table[category] = {
            "n": len(rows), "base": {m: nanmean([base[i][m] for i in rows]) for m in ("IQ", "EQ")},
            "arms": {name: {m: nanmean([records[i][m] for records in by_seed.values() for i in rows])
                            for m in ("IQ", "EQ")} for name, by_seed in matrices.items()}}
    return table


def _format_by_supervision(summary: dict) -> list[str]:
    table = summary.get("by_supervision")
    if not table:
        return []
    arms = list(summary["arms"])
    lines = ["", "IQ by what the train data says about the test prompt's question (mean over seeds and "
                 "prompts; EQ in brackets):", "",
             "| test prompts (n) | base | " + " | ".join(arms) + " |", "|---" * (len(arms) + 2) + "|"]
    for category, row in table.items():
        cells = [f"{row['base']['IQ']:.1f} ({row['base']['EQ']:.2f})"]
        cells += [f"{row['arms'][a]['IQ']:.1f} ({row['arms'][a]['EQ']:.2f})" if a in row["arms"] else "—" for a in arms]
        lines.append(f"| {SUPERVISION.get(category, category)} ({row['n']}) | " + " | ".join(cells) + " |")
    return lines


def training_dynamics(run_dirs: list[Path]) -> dict:
    """{series: {"mean", "start", "end"}} over each run's training steps, then averaged over the
    runs (each seed weighs the same); series an arm never logs (SFT samples nothing, so it has no
    entropies) are left out. GRPO and DPO log λ = 1 (all RL)."""
    from wavalign.train.run_log import read_metrics

    per_run: dict[str, list[dict]] = {key: [] for key in DYNAMICS}
    for run_dir in run_dirs:
        train = [r for r in read_metrics(run_dir) if r.get("kind") == "train"]
        for key in DYNAMICS:
            values = [float(r[key]) for r in train if r.get(key) is not None and not math.isnan(float(r[key]))]
            if not values:
                continue
            width = max(1, round(DYNAMICS_WINDOW * len(values)))
            per_run[key].append({"mean": sum(values) / len(values), "start": sum(values[:width]) / width,
                                 "end": sum(values[-width:]) / width})
    return {key: {part: sum(run[part] for run in runs) / len(runs) for part in ("mean", "start", "end")}
            for key, runs in per_run.items() if runs}


def _format_dynamics(summary: dict) -> list[str]:
    rows = [(name, entry["dynamics"]) for name, entry in summary["arms"].items() if entry.get("dynamics")]
    if not rows:
        return []
    lines = ["", f"Training dynamics (mean over seeds; start / end: the first / last {DYNAMICS_WINDOW:.0%} of "
                 "steps; entropy: mean -log p of the sampled tokens, nats per token):", "",
             "| arm | " + " | ".join(f"{label} start -> end" for label in DYNAMICS.values()) + " | mean λ |",
             "|---" * (len(DYNAMICS) + 2) + "|"]
    for name, dynamics in rows:
        cells = [f"{dynamics[key]['start']:.3f} -> {dynamics[key]['end']:.3f}" if key in dynamics else "—"
                 for key in DYNAMICS]
        lam = dynamics.get("gate/lambda")
        mean_lambda = f"{lam['mean']:.3f}" if lam else "—"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_lambda} |")
    return lines


def _difference_cells(differences: dict[str, Interval]) -> list[str]:
    """One cell per table metric: the signed interval, marked when it excludes 0."""
    return [differences[m].format(digits(m), signed=True) + _mark(differences[m], m) for m in TABLE_METRICS]


def format_tables(summary: dict) -> str:
    lines = [f"Ablation '{summary['name']}': {summary['n_prompts']} test prompts, greedy; means over seeds "
             f"{summary['seeds']} and prompts, 95% bootstrap CIs (seeds and prompts resampled).", ""]
    header = "| arm | " + " | ".join(f"{m}" for m in TABLE_METRICS) + " |"
    lines += [header, "|---" * (len(TABLE_METRICS) + 1) + "|"]
    base = summary["base"]
    lines.append("| base policy | " + " | ".join(base[m].format(digits(m)) for m in TABLE_METRICS) + " |")
    for name, entry in summary["arms"].items():
        cells = [entry["metrics"][m]["value"].format(digits(m)) for m in TABLE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Change from the base policy (paired by prompt):", "",
              "| arm | " + " | ".join(f"Δ{m}" for m in TABLE_METRICS) + " | per-seed ΔIQ / ΔEQ | s/run |",
              "|---" * (len(TABLE_METRICS) + 3) + "|"]
    for name, entry in summary["arms"].items():
        cells = _difference_cells({m: entry["metrics"][m]["change"] for m in TABLE_METRICS})
        base_iq, base_eq = base["IQ"].mean, base["EQ"].mean
        per_seed = ", ".join(f"{iq - base_iq:+.1f}/{eq - base_eq:+.2f}" for iq, eq in
                             zip(entry["metrics"]["IQ"]["per_seed"], entry["metrics"]["EQ"]["per_seed"]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_seed} | {entry['train_seconds']:.0f} |")
    lines += ["", "↑ / ↓: the 95% CI of the change excludes 0 (better / worse than base; lower WER is better).",
              "n/a reward: the arm trains and is scored with other reward functions than the base policy."]
    selected = {name: e["lr_selection"] for name, e in summary["arms"].items() if "lr_selection" in e}
    if selected:
        first = next(iter(selected.values()))
        lines += ["", f"Learning rates, chosen per arm on the {first['split']} split by {first['metric']} "
                      f"({first['steps']} steps, seed {first['seed']}; the test split not looked at):", "",
                  "| arm | chosen | trials (lr -> dev score) |", "|---|---|---|"]
        for name, choice in selected.items():
            trials = ", ".join(f"{lr} -> {v:.3f}" for lr, v in choice["trials"].items())
            lines.append(f"| {name} | {choice['lr']:g} | {trials} |")
    reference = summary.get("reference")
    if reference:
        lines += ["", f"Difference from {reference} (seed k against seed k, paired by prompt):", "",
                  "| arm | " + " | ".join(f"Δ{m}" for m in TABLE_METRICS) + " |",
                  "|---" * (len(TABLE_METRICS) + 1) + "|"]
        for name, entry in summary["arms"].items():
            versus = entry.get("versus_reference")
            if not versus:
                continue
            cells = _difference_cells(versus)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"↑ / ↓: better / worse than {reference}, the 95% CI excluding 0."]
    comparisons = summary.get("comparisons", [])
    if comparisons:
        lines += ["", "The questions (arm − against, seed k against seed k, paired by prompt):", "",
                  "| claim | arm − against | " + " | ".join(f"Δ{m}" for m in TABLE_METRICS) + " |",
                  "|---" * (len(TABLE_METRICS) + 2) + "|"]
        for c in comparisons:
            cells = _difference_cells(c["difference"]) if c["difference"] else ["not run"] * len(TABLE_METRICS)
            lines.append(f"| {c['claim']} | {c['arm']} − {c['against']} | " + " | ".join(cells) + " |")
        lines += ["", "↑ / ↓: the arm is better / worse than the one it is compared with, the 95% CI excluding 0."]
    lines += _format_by_supervision(summary)
    lines += _format_dynamics(summary)
    return "\n".join(lines)


def plot(ablation, summary: dict, out: Path) -> list[Path]:
    """ablation: the eval.ablation.AblationConfig that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wavalign.train.run_log import read_metrics, save_step_plot

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []

    def draw_curves(axis, key: str) -> bool:
        """One line per arm: the series' mean over seeds, smoothed; -> whether any arm logs it."""
        drawn = False
        for arm in ablation.arms:
            curves = []
            for seed in ablation.seeds:
                train = [r for r in read_metrics(out / arm.name / f"seed_{seed}") if r.get("kind") == "train"]
                points = {r["step"]: r[key] for r in train if r.get(key) is not None}
                if points:
                    curves.append(points)
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [sum(c[s] for c in curves) / len(curves) for s in steps]
            window = 5  # moving average: rollout rewards are noisy step to step
            smooth = [sum(mean[max(0, i - window + 1):i + 1]) / len(mean[max(0, i - window + 1):i + 1])
                      for i in range(len(mean))]
            axis.plot(steps, smooth, label=arm.name, linewidth=1.3)
            drawn = True
        return drawn

    for key, filename, title in (("reward/mean", "reward_curves.png", "training reward (mean over seeds)"),
                                 ("gate/lambda", "lambda.png", "gate λ (RL weight), mean over seeds")):
        figure, axis = plt.subplots(figsize=(7.5, 4))
        if draw_curves(axis, key):
            written.append(save_step_plot(figure, axis, title, plots / filename))
        else:
            plt.close(figure)

    # per-channel entropy of the sampled tokens: does RL collapse the text or the speech channel?
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    drawn = [draw_curves(axis, key) for axis, key in zip(axes, ("rollout/text_entropy", "rollout/speech_entropy"))]
    if any(drawn):
        for axis, channel in zip(axes, ("text", "speech")):
            axis.set_title(f"{channel} tokens: entropy (nats/token), mean over seeds")
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(plots / "entropy.png", dpi=100)
        written.append(plots / "entropy.png")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 5))
    base = summary["base"]
    axis.scatter([base["IQ"].mean], [base["EQ"].mean], marker="*", s=200, color="black", label="base", zorder=3)
    for index, (name, entry) in enumerate(summary["arms"].items()):
        color = f"C{index % 10}"
        iq, eq = entry["metrics"]["IQ"], entry["metrics"]["EQ"]
        axis.scatter(iq["per_seed"], eq["per_seed"], color=color, alpha=0.35, s=18)
        axis.errorbar([iq["value"].mean], [eq["value"].mean],
                      xerr=[[iq["value"].mean - iq["value"].low], [iq["value"].high - iq["value"].mean]],
                      yerr=[[eq["value"].mean - eq["value"].low], [eq["value"].high - eq["value"].mean]],
                      fmt="o", color=color, label=name, capsize=3)
    axis.set_xlabel("IQ (% correct, test)")
    axis.set_ylabel("EQ (style, 1-5, test)")
    axis.set_title("IQ and EQ per method (mean, 95% CI; faint: single seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(plots / "iq_eq.png", dpi=100)
    plt.close(figure)
    written.append(plots / "iq_eq.png")
    return written
