"""Trackers (run.report_to) and completion logs (run.log_completions_every), all local: wandb
offline, trackio and mlflow into tmp_path, nothing touches the network."""

import json
import os
import subprocess
import sys
import textwrap
import time
import wave
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wavalign.rewards.base import Completion, RewardResult
from wavalign.train.config import ConfigError, TrainConfig
from wavalign.audio_io import read_audio as read_wav
from wavalign.audio_io import write_audio
from wavalign.train.run_log import RunLog, TrackerUnavailableError, completion_rows, read_metrics, redact_secrets

RATE = 16_000
SECRET = "s3cret-value-never-logged"
CONFIG = {"mode": "hybrid", "optim": {"lr": 2e-4, "steps": 2},
          "rewards": {"components": [{"name": "judge", "kind": "http_judge",
                                      "options": {"base_url": f"https://user:{SECRET}@judge.example/v1",
                                                  "api_key_env": "OPENAI_API_KEY", "auth_token": SECRET}}]}}


def fake_batch():
    """A StepBatch-shaped object: 2 prompts x 2 samples, the last without a reward."""
    t = np.arange(RATE // 10) / RATE
    completions = [Completion(text=f"answer {i} | with a pipe", speech_units=list(range(5 + i)),
                              audio=torch.tensor(0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t), dtype=torch.float32),
                              sample_rate=RATE) for i in range(3)]
    completions.append(Completion(text="silent", speech_units=[]))
    components = torch.tensor([[4.0, 2.0], [3.0, 1.0], [5.0, 5.0], [float("nan"), 1.0]])
    total = torch.tensor([3.4, 2.4, 5.0, float("nan")], dtype=torch.float64)
    return SimpleNamespace(group_size=2, completions=completions, finish_reasons=["eos", "eos", "length", "eos"],
                           examples=[SimpleNamespace(id="p0"), SimpleNamespace(id="p1")],
                           reward=RewardResult(total, components, ("semantic", "acoustic"), {}),
                           stats=SimpleNamespace(advantages=torch.tensor([[1.0, -1.0], [0.0, 0.0]])))


def log_a_little(run_log, step=1):
    run_log.write({"step": 0, "kind": "eval", "label": "before", "IQ": 50.0})
    run_log.write({"step": step, "kind": "train", "reward/mean": 3.5, "loss/total": float("nan"), "flag": True})
    rows = completion_rows(fake_batch(), ["prompt zero", "prompt one"], 0.25)
    return run_log.write_completions(step, rows, fake_batch().completions)


# ---------------------------------------------------------------------------- config
def test_report_to_defaults_to_tensorboard_and_run_tensorboard_false_removes_it():
    run = TrainConfig.load(None).run
    assert run.report_to == ("tensorboard",) and run.trackers == ("tensorboard",)
    assert run.log_completions_every == 0 and run.project == "wavalign"
    assert TrainConfig.load(None, ["run.tensorboard=false"]).run.trackers == ()
    both = TrainConfig.load(None, ["run.report_to=[wandb, tensorboard, mlflow]", "run.tensorboard=false"]).run
    assert both.trackers == ("wandb", "mlflow")
    assert TrainConfig.load(None, ["run.report_to=[]"]).run.trackers == ()
    printed = TrainConfig.load(None).to_dict()["run"]  # what --print-config shows
    assert printed["report_to"] == ["tensorboard"] and printed["log_completions_every"] == 0


@pytest.mark.parametrize("override, message", [
    ("run.report_to=[comet]", "run.report_to must be one of"),
    ("run.report_to=wandb", "run.report_to must be a list"),
    ("run.report_to=[wandb, wandb]", "run.report_to repeats"),
    ("run.log_completions_every=-2", "run.log_completions_every must be an integer >= 0"),
    ("run.log_completions_every=1.5", "run.log_completions_every must be an integer"),
])
def test_bad_tracker_settings_fail_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.load(None, [override])


# ---------------------------------------------------------------------------- sinks
def test_default_sinks_write_metrics_jsonl_and_tensorboard_text_and_audio(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_log = RunLog(tmp_path, trackers=("tensorboard",), config=CONFIG)
    out = log_a_little(run_log)
    run_log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert read_metrics(tmp_path)[1]["loss/total"] is None
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [0, 1, 2, 3] and [r["group"] for r in rows] == [0, 0, 1, 1]
    assert rows[0] == {"row": 0, "group": 0, "sample": 0, "id": "p0", "prompt": "prompt zero",
                       "text": "answer 0 | with a pipe", "speech_units": 5, "reward": pytest.approx(3.4),
                       "components": {"semantic": 4.0, "acoustic": 2.0}, "advantage": 1.0, "lambda": 0.25,
                       "finish_reason": "eos", "audio": "completions/step_1/0.wav"}
    assert rows[3]["reward"] is None and rows[3]["components"]["semantic"] is None and rows[3]["audio"] is None
    for row in rows[:3]:
        waveform, rate = read_wav(tmp_path / row["audio"])
        assert rate == RATE and waveform.numel() == RATE // 10
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"audio": 0, "tensors": 0}).Reload()
    assert {"reward/mean", "eval_before/IQ"} <= set(events.Tags()["scalars"])
    assert "completions/0" in events.Tags()["audio"] and "completions/3" not in events.Tags()["audio"]
    text = next(t for t in events.Tags()["tensors"] if t.startswith("completions"))
    assert b"answer 0 \\| with a pipe" in events.Tensors(text)[0].tensor_proto.string_val[0]


def test_wav_writer_writes_16_bit_pcm_that_reads_back(tmp_path):
    signal = (0.5 * np.sin(np.linspace(0, 40, 800))).astype(np.float32)
    write_audio(tmp_path / "a.wav", signal, 22_050)
    with wave.open(str(tmp_path / "a.wav")) as handle:
        assert (handle.getframerate(), handle.getsampwidth(), handle.getnchannels()) == (22_050, 2, 1)
    waveform, _ = read_wav(tmp_path / "a.wav")
    assert np.abs(waveform.numpy() - signal).max() < 2 / 32767


def test_secrets_are_redacted_before_any_tracker_sees_the_config():
    clean = redact_secrets(CONFIG)
    text = json.dumps(clean)
    assert SECRET not in text
    options = clean["rewards"]["components"][0]["options"]
    assert options["api_key_env"] == "OPENAI_API_KEY"  # a variable's name, kept
    assert options["base_url"] == "https://<redacted>@judge.example/v1" and options["auth_token"] == "<redacted>"
    assert redact_secrets({"rollout": {"max_new_tokens": 160}}) == {"rollout": {"max_new_tokens": 160}}


def _files_under(root):
    return [p for p in root.rglob("*") if p.is_file()]


def test_wandb_offline_writes_its_run_directory_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                        "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_log = RunLog(run_dir, trackers=("wandb",), config=CONFIG)
    log_a_little(run_log)
    run_log.close()
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = list(offline[0].glob("run-*.wandb"))
    # wandb's writer (a separate process) may still be flushing the records when finish()
    # returns on a loaded machine: give it time, then insist.
    deadline = time.monotonic() + 60
    while records and b"reward/mean" not in records[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert records and b"reward/mean" in records[0].read_bytes()
    assert any(p.suffix == ".wav" for p in _files_under(offline[0] / "files" / "media"))
    assert not any(SECRET.encode() in p.read_bytes() for p in _files_under(run_dir / "wandb"))
    assert not (run_dir / "tensorboard").exists()


def test_trackio_writes_a_local_project(tmp_path):
    pytest.importorskip("trackio")
    # trackio reads TRACKIO_DIR when imported: a fresh process keeps it under tmp_path
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_trackers import CONFIG, log_a_little
        from wavalign.train.run_log import RunLog
        run_log = RunLog({str(tmp_path / "run")!r}, trackers=("trackio",), project="wavalign-test", config=CONFIG)
        log_a_little(run_log)
        run_log.close()
        from trackio.sqlite_storage import SQLiteStorage  # read back what was stored
        print(json.dumps({{"logs": SQLiteStorage.get_logs("wavalign-test", "run"),
                          "config": SQLiteStorage.get_run_config("wavalign-test", "run")}}))
    """)
    (tmp_path / "run").mkdir()
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "trackio"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", "import json\n" + script], env=env, check=True, capture_output=True,
                          text=True, timeout=300)
    stored = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert (tmp_path / "trackio" / "wavalign-test.db").is_file()
    scalars = {k: v for log in stored["logs"] for k, v in log.items() if isinstance(v, float)}
    assert scalars["reward/mean"] == 3.5 and scalars["eval_before/IQ"] == 50.0
    media = {k: v["_type"] for log in stored["logs"] for k, v in log.items() if isinstance(v, dict)}
    assert media["completions"] == "trackio.markdown" and media["completions/0"] == "trackio.audio"
    assert stored["config"]["optim"]["lr"] == 2e-4 and SECRET not in json.dumps(stored["config"])
    assert any(p.suffix == ".wav" for p in _files_under(tmp_path / "trackio" / "media"))


def test_mlflow_writes_to_a_file_tracking_uri(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_log = RunLog(run_dir, trackers=("mlflow",), project="wavalign-test", config=CONFIG)
    log_a_little(run_log)
    run_log.close()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("wavalign-test").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.metrics["reward/mean"] == 3.5 and run.data.metrics["eval_before/IQ"] == 50.0
    assert "loss/total" not in run.data.metrics  # non-finite: left out
    assert run.data.params["optim.lr"] == "0.0002" and SECRET not in json.dumps(run.data.params)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "completions/step_1")}
    assert artifacts == {"completions/step_1/0.wav", "completions/step_1/1.wav", "completions/step_1/2.wav"}
    assert client.list_artifacts(run.info.run_id, "completions")


@pytest.mark.parametrize("tracker", ["wandb", "trackio", "mlflow"])
def test_a_missing_tracker_package_fails_at_start_up_naming_the_extra(tracker, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # the importer now raises ImportError, as when absent
    expected = f"pip install 'wavalign\\[{tracker}\\]'"
    with pytest.raises(TrackerUnavailableError, match=expected):
        RunLog(tmp_path, trackers=("tensorboard", tracker))
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "metrics.jsonl").exists()
    from wavalign.train.trainer import Trainer

    config = TrainConfig.load(None, [f"run.report_to=[{tracker}]", f"run.output_dir={tmp_path}", "run.name=x"])
    with pytest.raises(TrackerUnavailableError, match=expected):  # before the world or the model is loaded
        Trainer(config)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- the trainer
def test_a_two_step_run_logs_every_step_s_completions_with_audio(fast_world, tmp_path):
    from wavalign.train.trainer import Trainer

    config = TrainConfig.load(None, [
        "data.world=fast", "optim.prompts_per_step=4", "rollout.group_size=3", "rollout.max_new_tokens=48",
        "run.progress=false", "run.plots=false", "run.save_every=0", "optim.warmup_steps=1", "optim.steps=2",
        "eval.before=false", "eval.after=false", "run.log_completions_every=1", f"run.output_dir={tmp_path}",
        "run.name=run"])
    trainer = Trainer(config, world=fast_world)
    try:
        trainer.fit()
    finally:
        trainer.close()
    run = tmp_path / "run"
    train_records = [r for r in read_metrics(run) if r["kind"] == "train"]
    names = {c.name for c in config.rewards.components}
    for step, record in zip((1, 2), train_records):
        rows = [json.loads(line) for line in (run / "completions" / f"step_{step}.jsonl").read_text().splitlines()]
        assert len(rows) == 4 * 3 and [r["row"] for r in rows] == list(range(12))
        assert [r["group"] for r in rows] == [i // 3 for i in range(12)]
        assert all(r["lambda"] == pytest.approx(record["gate/lambda"]) for r in rows)
        assert all(set(r["components"]) == names and isinstance(r["prompt"], str) and r["prompt"] for r in rows)
        assert all(isinstance(r["advantage"], float) for r in rows)
        with_audio = [r for r in rows if r["speech_units"]]
        assert with_audio and all(r["audio"] == f"completions/step_{step}/{r['row']}.wav" for r in with_audio)
        for row in with_audio:
            waveform, rate = read_wav(run / row["audio"])
            assert rate == fast_world.codec.sample_rate and waveform.numel() > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
