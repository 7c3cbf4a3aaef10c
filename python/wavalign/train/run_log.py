"""What a run writes as it goes: metrics.jsonl, TensorBoard events and PNG plots.

One JSON object per line in metrics.jsonl: {"step": 12, "kind": "train", ...scalars}, and
{"step": 0, "kind": "eval", "label": "before", ...} for evaluations. Plots are redrawn from
metrics.jsonl, so they can also be made after the fact: ``plot_run(run_dir)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PLOTS = {
    "reward.png": ("reward", ["reward/mean", "reward/semantic_judge", "reward/acoustic_judge"]),
    "gate.png": ("lambda and its terms", ["gate/lambda", "gate/lambda_raw", "gate/g_info", "gate/g_rew"]),
    "losses.png": ("losses", ["loss/total", "loss/rl", "loss/sft", "loss/dpo"]),
    "time.png": ("seconds per step", ["time/rollout", "time/reward", "time/forward_backward", "time/optimizer"]),
}


class RunLog:
    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (they will be redone)."""
        if not (self.enabled and self.metrics_path.is_file()):
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            prefix = "eval_" + record.get("label", "") + "/" if record.get("kind") == "eval" else ""
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._writer.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def save_step_plot(figure, axis, title: str, path: Path) -> Path:
    """Label a per-step line plot (title, step axis, grid, legend), write it as PNG, close it."""
    import matplotlib.pyplot as plt

    axis.set_title(title)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_run(run_dir: Path) -> list[Path]:
    """Draw the run's PNG plots from metrics.jsonl. -> paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (title, keys) in PLOTS.items():
        series = {k: [(r["step"], r[k]) for r in train if r.get(k) is not None] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        figure, axis = plt.subplots(figsize=(7, 4))
        for key, points in series.items():
            axis.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1.2)
        written.append(save_step_plot(figure, axis, title, out_dir / filename))
    if evals and any("IQ" in r for r in evals):
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        steps = [r["step"] for r in evals if "IQ" in r]
        left.plot(steps, [r["IQ"] for r in evals if "IQ" in r], marker="o")
        left.set_title("IQ (% correct, test)")
        right.plot(steps, [r["EQ"] for r in evals if "EQ" in r], marker="o", color="tab:orange")
        right.set_title("EQ (1-5, test)")
        for axis in (left, right):
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / "iq_eq.png", dpi=100)
        plt.close(figure)
        written.append(out_dir / "iq_eq.png")
    return written
