"""Benchmark: wavalign's native sampler vs what users run today.

Baseline ("transformers"): transformers' own logits warpers (temperature, top-k, top-p,
min-p) in a LogitsProcessorList, a LogitsProcessor masking everything outside the speech
range when a mask is on, then softmax + torch.multinomial — the per-step path of
`model.generate(do_sample=True)`. Also timed: the PyTorch reference twin, and the
"read floor" (one pass reading the logits, torch.sum), the least any sampler must do.

Every configuration is measured in this one run, on this machine. The last line is
    RESULT ratio=<baseline/native at N=64, V=168072, top-p 0.9 + speech mask> ...
with native/floor for that headline and for the same top-p without the mask.

Usage:  python benchmarks/bench_sampling.py [--quick] [--device cpu|cuda] [--reference] [--repeats R]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from wavalign import ops
from wavalign.reference import reference_sample_tokens

TEMPERATURE = 0.7
MODES = {
    "plain": dict(),
    "top_p0.9": dict(top_p=0.9),
    "top_k50": dict(top_k=50),
    "min_p0.05": dict(min_p=0.05),
}
HEADLINE = (64, 168_072, "top_p0.9", True)
UNMASKED_TOP_P = (64, 168_072, "top_p0.9", False)  # the unmasked top-p target (<= 8x the floor)


class RangeMask(LogitsProcessor):
    """What users write today to force a speech phase: -inf outside [lo, hi)."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, input_ids, scores):
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.lo : self.hi] = scores[:, self.lo : self.hi]
        return masked


def speech_range(vocab: int) -> tuple[int, int]:
    # VITA-Audio-like layout: text ids first, the last ~10% of the vocabulary is speech.
    return int(vocab * 0.9), vocab


def transformers_sampler(mode: dict, masked: bool, vocab: int):
    processors = LogitsProcessorList()
    if masked:
        processors.append(RangeMask(*speech_range(vocab)))
    processors.append(TemperatureLogitsWarper(TEMPERATURE))
    if "top_k" in mode:
        processors.append(TopKLogitsWarper(mode["top_k"]))
    if "top_p" in mode:
        processors.append(TopPLogitsWarper(mode["top_p"]))
    if "min_p" in mode:
        processors.append(MinPLogitsWarper(mode["min_p"]))
    generator = torch.Generator(device="cpu").manual_seed(0)

    def run(logits):
        scores = processors(None, logits)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=generator if logits.device.type == "cpu" else None)

    return run


def native_sampler(mode: dict, masked: bool, vocab: int):
    ranges = [speech_range(vocab)] if masked else None
    return lambda logits: ops.sample_tokens(
        logits, temperature=TEMPERATURE, allowed_ranges=ranges, seed=1, **mode
    )


def reference_sampler(mode: dict, masked: bool, vocab: int):
    ranges = [speech_range(vocab)] if masked else None
    return lambda logits: reference_sample_tokens(
        logits, temperature=TEMPERATURE, allowed_ranges=ranges, seed=1, **mode
    )


def seconds_per_call(fn, logits, min_time: float, sync) -> float:
    fn(logits)  # warm-up
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn(logits)
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 3:
            return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="headline configurations only (<= 60 s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch twin (slow)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3,
                        help="native/floor measurements per configuration, back to back (medians)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 0.5)

    if args.quick:
        grid = [(64, 168_072, "top_p0.9", True), (64, 168_072, "top_p0.9", False),
                (64, 168_072, "plain", False), (64, 32_000, "top_p0.9", True)]
    else:
        grid = [(n, v, m, masked) for v in (32_000, 168_072) for n in (8, 64, 256)
                for m in MODES for masked in (False, True)]

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# device={args.device} ({device_name}) threads={ops.get_num_threads()} torch={torch.__version__} "
          f"repeats={args.repeats} (medians)")
    header = f"{'N':>5} {'V':>7} {'mode':>10} {'mask':>5} | {'native ms':>9} {'transformers ms':>15} {'ratio':>7} | {'floor ms':>8} {'native/floor':>12}"
    if args.reference:
        header += f" | {'reference ms':>12}"
    print(header)
    headline = None
    unmasked_over_floor = float("nan")
    for n, vocab, mode_name, masked in grid:
        logits = (torch.randn(n, vocab, generator=torch.Generator().manual_seed(n + vocab)) * 3.0).to(device)
        mode = MODES[mode_name]
        # The native sampler and the read floor are timed back to back in each repeat (this
        # shared VM's speed drifts by up to 2x): times are medians, native/floor is the
        # median of the per-repeat ratios.
        natives, floors = [], []
        for _ in range(args.repeats):
            natives.append(seconds_per_call(native_sampler(mode, masked, vocab), logits, min_time, sync))
            floors.append(seconds_per_call(lambda x: x.sum(), logits, min_time, sync))
        native, floor = statistics.median(natives), statistics.median(floors)
        over_floor = statistics.median(a / b for a, b in zip(natives, floors))
        baseline = seconds_per_call(transformers_sampler(mode, masked, vocab), logits, min_time, sync)
        line = (f"{n:>5} {vocab:>7} {mode_name:>10} {str(masked):>5} | {native * 1e3:>9.2f} "
                f"{baseline * 1e3:>15.2f} {baseline / native:>6.1f}x | {floor * 1e3:>8.2f} "
                f"{over_floor:>11.1f}x")
        if args.reference and (device.type == "cuda" or n * vocab <= 64 * 168_072):
            ref = seconds_per_call(reference_sampler(mode, masked, vocab), logits.cpu(), min_time, lambda: None)
            line += f" | {ref * 1e3:>12.2f}"
        print(line, flush=True)
        if (n, vocab, mode_name, masked) == HEADLINE:
            headline = (native, baseline, floor, over_floor)
        if (n, vocab, mode_name, masked) == UNMASKED_TOP_P:
            unmasked_over_floor = over_floor
    native, baseline, floor, over_floor = headline
    gbps = 64 * 168_072 * 4 / native / 1e9
    print(f"RESULT ratio={baseline / native:.1f} native_ms={native * 1e3:.2f} "
          f"transformers_ms={baseline * 1e3:.2f} floor_ms={floor * 1e3:.2f} "
          f"native_over_floor={over_floor:.1f} native_GBps={gbps:.1f} "
          f"unmasked_top_p_over_floor={unmasked_over_floor:.1f} device={args.device}")


if __name__ == "__main__":
    main()
