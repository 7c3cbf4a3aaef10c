"""What a run writes as it goes: metrics.jsonl, the trackers' records, completion logs and PNG plots.

One JSON object per line in metrics.jsonl: {"step": 12, "kind": "train", ...scalars}, and
{"step": 0, "kind": "eval", "label": "before", ...} for evaluations. Plots are redrawn from
metrics.jsonl, so they can also be made after the fact: ``plot_run(run_dir)``.

metrics.jsonl is always written; RunLog fans each record out to the MetricsSinks that
run.report_to names (TensorBoardSink, WandbSink, TrackioSink, MlflowSink), each importing its
package only when asked for. ``write_completions`` writes completions/step_N.jsonl (one line
per sample) and completions/step_N/<row>.wav, and hands the same to the sinks as text and audio.
"""

from __future__ import annotations

import html
import importlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

# run.report_to values. The packages behind them are optional extras: tracker -> (module, extra).
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
TRACKER_PACKAGES = {"wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow")}

PLOTS = {
    "reward.png": ("reward", ["reward/mean", "reward/semantic_judge", "reward/acoustic_judge"]),
    "gate.png": ("lambda and its terms", ["gate/lambda", "gate/lambda_raw", "gate/g_info", "gate/g_rew"]),
    "losses.png": ("losses", ["loss/total", "loss/rl", "loss/sft", "loss/dpo"]),
    "time.png": ("seconds per step", ["time/rollout", "time/reward", "time/forward_backward", "time/optimizer"]),
}


class TrackerUnavailableError(ImportError):
    """run.report_to names a tracker whose package is not installed."""


def _import_tracker(tracker: str):
    module, extra = TRACKER_PACKAGES[tracker]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise TrackerUnavailableError(
            f"run.report_to includes {tracker!r}, but the {module} package is not installed ({error}); install it "
            f"with: pip install 'wavalign[{extra}]'") from None


def require_trackers(trackers: Sequence[str]) -> None:
    """Fail at start-up, naming the extra, when a tracker's package is missing."""
    for tracker in trackers:
        if tracker in TRACKER_PACKAGES:
            _import_tracker(tracker)


def as_numbers(stats: dict) -> dict[str, float]:
    """A step's stats as plain numbers: 0-d tensors (what the learn side returns, so a GPU
    step syncs with the host once, here) become floats; numbers pass through."""
    return {key: float(value) if isinstance(value, torch.Tensor) else value for key, value in stats.items()}


def progress_postfix(metrics: dict) -> dict[str, str]:
    """The few numbers the training progress bar shows after each step."""
    out = {}
    if "reward/mean" in metrics:
        out["reward"] = f"{metrics['reward/mean']:.2f}"
    if "gate/lambda" in metrics:
        out["λ"] = f"{metrics['gate/lambda']:.2f}"
    out["loss"] = f"{metrics.get('loss/total', math.nan):.3f}"
    out["s/step"] = f"{metrics['time/step']:.2f}"
    return out


def nan_to_none(record: dict) -> dict:
    """NaN (no score) -> null, so the JSONL is standard JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def scalars(record: dict) -> dict[str, float]:
    """A record's numeric values under their tracker tags (evaluations: eval_<label>/<key>)."""
    prefix = "eval_" + record.get("label", "") + "/" if record.get("kind") == "eval" else ""
    return {prefix + key: value for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}


_SECRET_KEY = re.compile(r"api[_-]?key|secret|passw|token$|^token|authori[sz]ation|credential|cookie|bearer", re.I)
_URL_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redact_secrets(value: Any) -> Any:
    """The config as trackers may see it: values under secret-looking keys (api_key, token,
    password, authorization, ...; not *_env, which name a variable) and credentials inside
    URLs replaced by "<redacted>"."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) and not k.endswith("_env")
                    and v is not None else redact_secrets(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\1<redacted>@", value)
    return value


class MetricsSink(Protocol):
    """Where a run's records go besides metrics.jsonl. write: one metrics.jsonl record;
    log_text: markdown text at a step; log_audio: one waveform ([S] float32 numpy at
    sample_rate, also written at `path`) at a step; close: flush and finish the run."""

    def write(self, record: dict) -> None: ...

    def log_text(self, tag: str, text: str, step: int) -> None: ...

    def log_audio(self, tag: str, wave, sample_rate: int, step: int, *, path: Path, caption: str = "") -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """runs/<name>/tensorboard/ (torch.utils.tensorboard, a core dependency)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, record["step"])

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, step)

    def log_audio(self, tag: str, wave, sample_rate: int, step: int, *, path: Path, caption: str = "") -> None:
        import torch

        self._writer.add_audio(tag, torch.as_tensor(wave, dtype=torch.float32).clamp(-1, 1).reshape(1, -1), step,
                               sample_rate=sample_rate)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class WandbSink:
    """Weights & Biases: a run named after the run directory, its files under runs/<name>/wandb/
    (WANDB_MODE=offline keeps it there; `wandb sync` uploads it later)."""

    def __init__(self, run_dir: Path, *, project: str, config: dict | None = None):
        self._wandb = _import_tracker("wandb")
        self._run = self._wandb.init(project=project, name=Path(run_dir).name, dir=str(run_dir), config=config,
                                     reinit="create_new")

    def write(self, record: dict) -> None:
        self._run.log(scalars(record), step=record["step"])

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._run.log({tag: self._wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def log_audio(self, tag: str, wave, sample_rate: int, step: int, *, path: Path, caption: str = "") -> None:
        self._run.log({tag: self._wandb.Audio(str(path), caption=caption or None)}, step=step)  # from the WAV

    def close(self) -> None:
        self._run.finish()


class TrackioSink:
    """Trackio: a local SQLite project (under TRACKIO_DIR, default ~/.cache/huggingface/trackio;
    `trackio show` opens the dashboard)."""

    def __init__(self, run_dir: Path, *, project: str, config: dict | None = None):
        self._trackio = _import_tracker("trackio")
        self._run = self._trackio.init(project=project, name=Path(run_dir).name, config=config, embed=False)

    def write(self, record: dict) -> None:
        self._run.log(scalars(record), step=record["step"])

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._run.log({tag: self._trackio.Markdown(text)}, step=step)

    def log_audio(self, tag: str, wave, sample_rate: int, step: int, *, path: Path, caption: str = "") -> None:
        self._run.log({tag: self._trackio.Audio(str(path), caption=caption or None)}, step=step)

    def close(self) -> None:
        self._run.finish()


class MlflowSink:
    """MLflow: a run in the experiment `project`, at MLFLOW_TRACKING_URI (MLflow's own default
    otherwise). Scalars as metrics (non-finite ones left out), the config as params, completion
    text and WAVs as artifacts under completions/."""

    _BAD_KEY = re.compile(r"[^0-9A-Za-z_\-. /:]")

    def __init__(self, run_dir: Path, *, project: str, config: dict | None = None):
        _import_tracker("mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self.run_dir = Metric, Path(run_dir)
        self._client = MlflowClient()
        experiment = self._client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(project)
        self._run_id = self._client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
        params = [Param(self._key(k), str(v)[:6000]) for k, v in _flatten(config or {}).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self._client.log_batch(self._run_id, params=params[start:start + 100])

    def _key(self, key: str) -> str:
        return self._BAD_KEY.sub("_", key)

    def write(self, record: dict) -> None:
        stamp = int(time.time() * 1000)
        metrics = [self._metric(self._key(k), float(v), stamp, int(record["step"]))
                   for k, v in scalars(record).items() if math.isfinite(v)]
        if metrics:
            self._client.log_batch(self._run_id, metrics=metrics)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self._client.log_text(self._run_id, text, f"{tag}/step_{step}.md")

    def log_audio(self, tag: str, wave, sample_rate: int, step: int, *, path: Path, caption: str = "") -> None:
        try:
            folder = str(Path(path).parent.relative_to(self.run_dir))
        except ValueError:
            folder = f"{tag}/step_{step}"
        self._client.log_artifact(self._run_id, str(path), artifact_path=folder)

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def _flatten(value: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "trackio": TrackioSink, "mlflow": MlflowSink}


def make_sink(tracker: str, run_dir: Path, *, project: str = "wavalign", config: dict | None = None) -> MetricsSink:
    if tracker == "tensorboard":
        return TensorBoardSink(run_dir)
    return SINKS[tracker](run_dir, project=project, config=redact_secrets(config) if config is not None else None)


class RunLog:
    """metrics.jsonl plus one MetricsSink per tracker. trackers: run.report_to as resolved by
    RunConfig.trackers (None: TensorBoard when `tensorboard`); config: the run's config for the
    trackers that record it (secrets redacted); enabled: False on every rank but the first."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True,
                 trackers: Sequence[str] | None = None, project: str = "wavalign", config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if trackers is None:
            trackers = ("tensorboard",) if tensorboard else ()
        self.sinks: list[MetricsSink] = []
        if enabled:
            require_trackers(trackers)
            try:
                for tracker in trackers:
                    self.sinks.append(make_sink(tracker, self.run_dir, project=project, config=config))
            except BaseException:
                self.close()
                raise

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
        for sink in self.sinks:
            sink.write(record)

    def write_completions(self, step: int, rows: list[dict], completions: Sequence = (), codec=None) -> Path | None:
        """completions/step_N.jsonl, one line per row (see completion_rows), and each sample's
        speech as completions/step_N/<row>.wav: the completion's waveform when a reward listened,
        else codec.decode(units); no codec or no units: "audio" is null. The same goes to the
        sinks: a markdown table as text, each WAV as audio. -> the JSONL path (None: disabled)."""
        if not self.enabled:
            return None
        folder = self.run_dir / "completions"
        folder.mkdir(parents=True, exist_ok=True)
        audio = []
        for index, row in enumerate(rows):
            row["audio"] = None
            completion = completions[index] if index < len(completions) else None
            wave, rate = _waveform(completion, codec)
            if wave is not None:
                from wavalign.audio_io import write_audio  # 16-bit PCM WAV through soundfile

                path = folder / f"step_{step}" / f"{row['row']}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_audio(path, wave, rate)
                row["audio"] = str(path.relative_to(self.run_dir))
                audio.append((row, wave, rate, path))
        from wavalign.files import write_text_atomic

        out = folder / f"step_{step}.jsonl"
        write_text_atomic(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        for sink in self.sinks:
            sink.log_text("completions", completions_markdown(rows), step)
            for row, wave, rate, path in audio:
                sink.log_audio(f"completions/{row['row']}", wave, rate, step, path=path,
                               caption=f"row {row['row']}, reward {row.get('reward')}: {row.get('text', '')[:200]}")
        return out

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()


# ---------------------------------------------------------------------------- completion logs
def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def completion_rows(batch, prompts: Sequence[str], lam: float | None = None) -> list[dict]:
    """One dict per sampled row of a StepBatch (rows prompt-major: row = group * G + sample):
    the prompt text, the text channel, speech unit count, reward (null = none) and each
    component, the group-relative advantage (null when the mode has none) and the step's λ."""
    G = batch.group_size
    reward, stats = batch.reward, batch.stats
    advantages = stats.advantages.flatten().tolist() if stats is not None else None
    rows = []
    for row, completion in enumerate(batch.completions):
        group = row // G
        rows.append({
            "row": row, "group": group, "sample": row % G, "id": batch.examples[group].id,
            "prompt": prompts[group], "text": completion.text, "speech_units": len(completion.speech_units),
            "reward": _number(reward.total[row]) if reward is not None else None,
            "components": ({name: _number(reward.components[row, k]) for k, name in enumerate(reward.names)}
                           if reward is not None else {}),
            "advantage": _number(advantages[row]) if advantages is not None else None,
            "lambda": _number(lam) if lam is not None else None,
            "finish_reason": batch.finish_reasons[row] if row < len(batch.finish_reasons) else None,
        })
    return rows


def completions_markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (TensorBoard's text tab renders it)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")

    names = sorted({name for row in rows for name in row.get("components", {})})
    head = ["row", "group", "reward", *names, "advantage", "λ", "units", "prompt", "text"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [row["row"], row["group"], row["reward"], *(row["components"].get(n) for n in names),
                  row["advantage"], row["lambda"], row["speech_units"], row["prompt"][:200], row["text"][:400]]
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)


def _waveform(completion, codec):
    """(waveform [S] float32 numpy, sample rate) of a completion, or (None, None)."""
    import numpy as np

    if completion is None:
        return None, None
    if completion.audio is not None and completion.sample_rate:
        wave, rate = completion.audio, int(completion.sample_rate)
    elif codec is not None and completion.speech_units:
        wave, rate = codec.decode(completion.speech_units), int(codec.sample_rate)
    else:
        return None, None
    if hasattr(wave, "detach"):
        wave = wave.detach().float().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    return (wave, rate) if wave.size else (None, None)


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
