"""Benchmark: `torch.compile` of the static decode step against the eager step (CPU).

Does compiling the decode step bring a small model's forward near its compute floor? This
measures it on the engine's own step, `StaticDecoder.forward` (the built-in world's policy by
default, 64 rows, one query token per row), in one process, the forms alternated and medians
taken:
- eager: the step the engine runs;
- compiled, whole buffers: `torch.compile(step, dynamic=False)` of the same call. Its cache
  writes go into one [layers, rows, kv heads, slots, D] tensor, and functionalization turns
  each layer's write into a copy of that whole tensor (the generated code shows it);
- compiled, per-layer buffers: the same step given a list of per-layer buffers, a device-tensor
  slot (`index_copy_`) and `dynamic=True`, which inductor updates in place; measured at
  several cache lengths, and its compile time counted (including the recompile when the row
  count first changes, as compaction does);
- where the eager step's time goes (torch.profiler, self time): the GEMMs and the attention
  kernel, which inductor leaves as library calls on CPU, and all other ops (norms, rotary,
  adds, views), the only part compilation can fuse.
Compilation changes rounding (fused elementwise kernels), so a compiled engine would lose its
bit-for-bit agreement with transformers; the largest logit difference is printed.

Last line:  RESULT compiled_over_eager=<per-layer compiled / eager, median over lengths> ...
Usage:      python benchmarks/bench_decode_compile.py [--model world|random] [--rows 64] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch


def build_model(name: str):
    if name == "world":
        from wavalign.world import load_world

        world = load_world()
        return world.load_policy().eval(), world.spec.vocab_size
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), config.vocab_size


def milliseconds_per_call(fn, min_time: float) -> float:
    for _ in range(5):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def eager_breakdown(fn, calls: int = 20) -> dict:
    """ms per call in GEMMs, in the attention kernel, and in all other ops (self time)."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(calls):
            fn()
    parts = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            part = "gemm"
        elif "scaled_dot_product" in event.key:
            part = "attention"
        else:
            part = "other"
        parts[part] += event.self_cpu_time_total / 1e3 / calls
    return parts


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("world", "random"), default="world")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=24, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=128, help="decode slots in the cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="alternations per length (medians)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timing")
    parser.add_argument("--quick", action="store_true", help="two lengths, 3 repeats, 0.1 s timings")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.min_time = 3, 0.1
    if min(args.rows, args.prompt, args.threads, args.repeats) < 1 or args.new_tokens < 2 or args.min_time <= 0:
        parser.error("--rows, --prompt, --threads and --repeats must be >= 1, --new-tokens >= 2, --min-time > 0")
    torch.set_num_threads(args.threads)

    from wavalign.rollout.static_decode import StaticDecoder

    model, vocab = build_model(args.model)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab, (args.rows, args.prompt), generator=generator)
    mask = torch.ones_like(prompts)
    capacity = args.prompt + args.new_tokens
    fractions = (0.25, 1.0) if args.quick else (0.125, 0.25, 0.5, 1.0)
    lengths = sorted({args.prompt + max(1, round(f * args.new_tokens)) for f in fractions})
    with torch.no_grad():
        prefill = model(input_ids=prompts, attention_mask=mask, use_cache=True).past_key_values
        decoder = StaticDecoder(model, prefill, mask, capacity=capacity)
        layer_keys, layer_values = list(decoder.keys), list(decoder.values)  # views of the same buffers
        ids = torch.randint(0, vocab, (args.rows,), generator=generator)

        def eager(length):  # the step writes slot length - 1 and attends over [0, length)
            positions = torch.full((args.rows,), length - 1)
            return decoder.forward(ids, positions, length - 1, decoder.keys, decoder.values, None, length)

        whole_step = torch.compile(decoder.forward, dynamic=False)

        def compiled_whole(length):
            positions = torch.full((args.rows,), length - 1)
            return whole_step(ids, positions, length - 1, decoder.keys, decoder.values, None, length)

        layer_step = torch.compile(decoder.forward, dynamic=True)

        def compiled_per_layer(length, rows=args.rows):
            positions = torch.full((rows,), length - 1)
            slot = torch.tensor([length - 1])
            return layer_step(ids[:rows], positions, slot, [k[:rows] for k in layer_keys],
                              [v[:rows] for v in layer_values], None, length)

        start = time.perf_counter()
        compiled_whole(lengths[-1])
        whole_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for length in lengths:
            compiled_per_layer(length)
        compiled_per_layer(lengths[0], rows=max(1, args.rows // 2))  # a compacted batch
        layer_compile_s = time.perf_counter() - start

        rows_out = []
        for length in lengths:
            times = {"eager": [], "per_layer": []}
            for _ in range(args.repeats):
                times["eager"].append(milliseconds_per_call(lambda: eager(length), args.min_time))
                times["per_layer"].append(milliseconds_per_call(lambda: compiled_per_layer(length), args.min_time))
            difference = (compiled_per_layer(length) - eager(length)).abs().max().item()
            rows_out.append((length, median(times["eager"]), median(times["per_layer"]), difference))
        whole_times = [milliseconds_per_call(lambda: compiled_whole(lengths[-1]), args.min_time)
                       for _ in range(min(3, args.repeats))]
        whole_ms = median(whole_times)
        parts = eager_breakdown(lambda: eager(lengths[-1]))

    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"# model {args.model} ({millions:.2f}M params, vocab {vocab}), {args.rows} rows, "
          f"capacity {capacity} slots, {args.threads} threads, {args.repeats} repeats (medians)")
    print(f"{'slots':>6} {'eager ms':>9} {'compiled ms':>12} {'ratio':>6} {'max |diff|':>11}")
    for length, eager_ms, layer_ms, difference in rows_out:
        print(f"{length:>6} {eager_ms:>9.2f} {layer_ms:>12.2f} {layer_ms / eager_ms:>6.2f} {difference:>11.1e}")
    eager_last = rows_out[-1][1]
    print(f"# per-layer buffers, dynamic=True: compiled in {layer_compile_s:.1f} s "
          f"({len(lengths)} lengths and one smaller batch)")
    print(f"# whole buffers, dynamic=False: {whole_ms:.2f} ms at {lengths[-1]} slots, "
          f"{whole_ms / eager_last:.2f}x eager (compiled in {whole_compile_s:.1f} s)")
    print(f"# eager step at {lengths[-1]} slots, profiled self time per call: GEMMs {parts['gemm']:.2f} ms | "
          f"attention {parts['attention']:.2f} ms | other ops {parts['other']:.2f} ms")
    ratio = median([layer_ms / eager_ms for _, eager_ms, layer_ms, _ in rows_out])
    print(f"RESULT compiled_over_eager={ratio:.2f} whole_buffers_over_eager={whole_ms / eager_last:.2f} "
          f"eager_ms={eager_last:.3f} compile_s={layer_compile_s:.1f} "
          f"max_abs_diff={max(d for *_, d in rows_out):.1e}")


if __name__ == "__main__":
    main()
