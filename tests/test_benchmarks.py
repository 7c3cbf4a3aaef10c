"""The benchmark entry points keep working (they are run, not timed, here)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_python_sampling_benchmark_quick_prints_result():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sampling.py"), "--quick", "--min-time", "0.05"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"RESULT ratio=\d+(\.\d+)? native_ms=", last), last


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cpp_benchmark_builds_and_runs(tmp_path):
    build = tmp_path / "build"
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-DWAVALIGN_BUILD_BENCH=ON",
        "-DWAVALIGN_BUILD_PYTHON=OFF", "-DWAVALIGN_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release",
    ]
    subprocess.run(configure, check=True, capture_output=True, timeout=300)
    results = {
        "wavalign_bench_sampling": r"RESULT ns_per_row=\d+ GBps=.* lse_ratio=\d+\.\d+ unmasked_top_p_lse_ratio=\d+\.\d+",
        "wavalign_bench_interleave": r"RESULT ratio=\d+\.\d+ ns_per_row_step=",
        "wavalign_bench_group_stats": r"RESULT ratio=\d+\.\d+ ns_per_group=",
    }
    subprocess.run(
        ["cmake", "--build", str(build), "--target", *results, "-j2"],
        check=True, capture_output=True, timeout=600,
    )
    for name, result in results.items():
        binary = build / name
        assert subprocess.run([str(binary), "--help"], capture_output=True, timeout=30).returncode == 0
        typo = subprocess.run([str(binary), "--quik"], capture_output=True, text=True, timeout=30)
        assert typo.returncode == 2 and "unknown argument '--quik'" in typo.stderr  # not run as a full run
        proc = subprocess.run([str(binary), "--quick"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr)
        assert re.match(result, proc.stdout.strip().splitlines()[-1]), (name, proc.stdout)


@pytest.mark.slow
def test_logprobs_benchmark_small_run_prints_result():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_logprobs.py"), "--tokens", "128",
         "--hidden", "16", "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"RESULT mem_ratio=\d+\.\d+ time_ratio=\d+\.\d+", last), last


@pytest.mark.slow
def test_microbatch_benchmark_small_run_prints_result():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_microbatch.py"), "--rows", "16", "--length", "16",
         "--hidden", "32", "--layers", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"RESULT mem_ratio=\d+\.\d+ time_ratio=\d+\.\d+", last), last


@pytest.mark.slow
def test_rollout_benchmark_small_run_prints_result():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_rollout.py"), "--workload", "qwen2", "--prompts", "2",
         "--samples", "2", "--new-tokens", "6", "--hidden", "64", "--layers", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.match(r"RESULT workload=qwen2 ratio=\d+\.\d+ baseline=hf_.* static_kv_gain=\d+\.\d+$", lines[-2])
    assert re.match(r"RESULT ratio=\d+\.\d+ prompts=2 samples=2 new_tokens=6", lines[-1])  # the headline line
    assert "# engine per decode step (ms): forward" in proc.stdout and "# floors for a 4-row decode step" in proc.stdout
    assert "# engine: static KV cache" in proc.stdout and "# engine_dynamic_kv per decode step (ms)" in proc.stdout


@pytest.mark.slow
def test_decode_compile_benchmark_runs_and_compiled_logits_stay_close():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_decode_compile.py"), "--model", "random", "--quick",
         "--rows", "4", "--new-tokens", "8", "--repeats", "1", "--min-time", "0.01"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr
    result = proc.stdout.strip().splitlines()[-1]
    match = re.match(r"RESULT compiled_over_eager=\d+\.\d+ whole_buffers_over_eager=\d+\.\d+ eager_ms=.* "
                     r"max_abs_diff=(\S+)$", result)
    assert match, result
    assert float(match.group(1)) < 1e-4  # compiled and eager logits differ by re-rounding only


@pytest.mark.slow
def test_judge_benchmark_quick_prints_result():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_judge.py"), "--requests", "8",
                           "--latency", "0.01"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"RESULT ratio=\d+\.\d+ serial_s=", proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_step_benchmark_on_the_fast_world_prints_result(fast_world, world_cache):
    env = {**os.environ, "WAVALIGN_CACHE": str(world_cache)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--world", "fast", "--steps", "3",
                           "--repeats", "1", "--set", "optim.prompts_per_step=4", "--set", "rollout.max_new_tokens=48"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "scoring 64 responses: native batched" in proc.stdout
    assert re.match(r"RESULT step_s=\d+\.\d+ reward_s=\d+\.\d+ scoring_ratio=\d+\.\d+", proc.stdout.strip().splitlines()[-1])
