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


def test_train_placeholder_says_so_and_checks_the_sampler():
    proc = run("wavalign.train")
    assert proc.returncode == 0, proc.stderr
    assert "NOT implemented yet" in proc.stdout
    assert "all inside the speech range: True" in proc.stdout
