#!/usr/bin/env bash
# The one prepared GPU check: on a machine with an NVIDIA GPU, from the
# repository root,
#     bash benchmarks/gpu_check.sh          # results in $OUT (the device tool's folder) or benchmarks/gpu_results/
# builds the extension with CUDA against the machine's own PyTorch (no download: the device
# machines hold torch, transformers, pybind11 and scikit-build-core), runs the CUDA tests, then
# the sampler, log-prob and rollout benchmarks on the GPU (rollouts in bf16), and writes one
# results file, gpu_results.txt, plus the logs beside it. Aimed at <= 8 minutes on an H100/H200;
# each step has its own time limit so one hang cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/gpu_results}"
mkdir -p "$out"
results="$out/gpu_results.txt"
: > "$results"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
arch="${CUDA_ARCH:-90}"  # Hopper; 80 for an A100

step() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$results"; }
keep() { tail -n "${2:-25}" "$1" >> "$results"; }  # the end of a log into the results file

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -1; } >> "$results" 2>&1

step "build (CUDA arch $arch)"
if ! timeout 300 "$py" -m pip install --no-build-isolation --no-deps -e . -Cbuild-dir=build/gpu \
    -Ccmake.define.WAVALIGN_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" > "$out/build.log" 2>&1; then
  echo "build failed; see build.log" | tee -a "$results"
  keep "$out/build.log" 40
  exit 1
fi
"$py" -m wavalign.info >> "$results" 2>&1

step "pytest -m cuda"
timeout 240 "$py" -m pytest -q -m cuda -p no:cacheprovider tests/ > "$out/pytest_cuda.log" 2>&1
echo "pytest exit status $?" >> "$results"
keep "$out/pytest_cuda.log" 30

step "sampler benchmark (GPU)"
timeout 90 "$py" benchmarks/bench_sampling.py --device cuda --quick > "$out/bench_sampling.log" 2>&1
keep "$out/bench_sampling.log" 8

step "log-prob benchmark"
timeout 60 "$py" benchmarks/bench_logprobs.py --quick > "$out/bench_logprobs.log" 2>&1
keep "$out/bench_logprobs.log" 4

step "rollout benchmark (GPU, bf16, qwen2 workload; engine with CUDA graphs, without, and on the dynamic cache)"
timeout 180 "$py" benchmarks/bench_rollout.py --workload qwen2 --device cuda --dtype bfloat16 --cuda-graphs \
    > "$out/bench_rollout.log" 2>&1
keep "$out/bench_rollout.log" 16

step "done"
