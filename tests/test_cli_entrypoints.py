"""The README's entry points run as a user runs them."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def test_info_reports_build_and_gpu():
    proc = run("wavalign.info")
    assert proc.returncode == 0, proc.stderr
    for key in ("wavalign", "cuda_kernels_compiled", "gpu_usable", "cpu_threads"):
        assert key in proc.stdout


def test_train_help_and_resolved_default_config():
    proc = run("wavalign.train", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--config", "--set", "--resume", "--fast", "hybrid", "grpo", "sft", "dpo"):
        assert flag in proc.stdout
    proc = run("wavalign.train", "--print-config", "--set", "optim.steps=7")
    assert proc.returncode == 0, proc.stderr
    import yaml

    config = yaml.safe_load(proc.stdout)
    assert config["mode"] == "hybrid" and config["optim"]["steps"] == 7 and config["data"]["source"] == "world"


def test_eval_and_ablation_help():
    proc = run("wavalign.eval", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--compare", "--out", "--resamples", "--set"):
        assert flag in proc.stdout
    proc = run("wavalign.eval.ablation", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--config", "--arms", "--seeds", "--report-only"):
        assert flag in proc.stdout


def test_ablation_report_only_without_runs_says_what_is_missing(tmp_path):
    proc = run("wavalign.eval.ablation", "--report-only", "--out", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "base/eval.json is missing" in proc.stderr
