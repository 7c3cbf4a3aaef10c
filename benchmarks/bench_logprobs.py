"""Benchmark: memory-lean selected-token log-probs vs the naive full-logits path.

Both compute log_softmax(hidden @ W.T)[targets] and its backward (gradients for hidden and
W) at V = 168,072 (VITA-Audio's vocabulary). Each method runs in its own fresh process so
peak memory is measured cleanly: peak resident memory minus resident memory after the
inputs exist. The weight gradient ([V, H] float32) is counted for both methods.

Last line:  RESULT mem_ratio=<lean/naive peak> time_ratio=<lean/naive time> ...
Usage:      python benchmarks/bench_logprobs.py [--quick] [--tokens M] [--hidden H]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB = 168_072


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(method: str, tokens: int, hidden_size: int, chunk: int, repeats: int) -> None:
    import torch

    from wavalign.logprobs import naive_selected_logprobs, selected_logprobs

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=g).requires_grad_(True)
    weight = (torch.randn(VOCAB, hidden_size, generator=g) * 0.02).requires_grad_(True)
    targets = torch.randint(0, VOCAB, (tokens,), generator=g)
    upstream = torch.randn(tokens, generator=g)

    def run():
        hidden.grad = weight.grad = None
        if method == "lean":
            out = selected_logprobs(hidden, weight, targets, chunk_tokens=chunk)
        else:
            out = naive_selected_logprobs(hidden, weight, targets)
        (out * upstream).sum().backward()

    before = rss_bytes()
    run()  # first call: the memory peak (fresh allocator, as in a training step)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_extra": peak - before, "seconds": min(times)}))


def measure(method, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--tokens", str(args.tokens),
           "--hidden", str(args.hidden), "--chunk", str(args.chunk), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small problem, <= 60 s on 2 cores")
    parser.add_argument("--tokens", type=int, default=None, help="tokens M (default 2048; quick 1024)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size H (default 512; quick 128)")
    parser.add_argument("--chunk", type=int, default=None, help="lean chunk size in tokens (default: library default)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--child", choices=["lean", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk is None:
        from wavalign.logprobs import DEFAULT_CHUNK_TOKENS

        args.chunk = DEFAULT_CHUNK_TOKENS
    args.tokens = args.tokens or (1024 if args.quick else 2048)
    args.hidden = args.hidden or (128 if args.quick else 512)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.child:
        child(args.child, args.tokens, args.hidden, args.chunk, args.repeats)
        return

    print(f"# V={VOCAB} tokens={args.tokens} hidden={args.hidden} chunk={args.chunk} (CPU, float32)")
    naive = measure("naive", args)
    lean = measure("lean", args)
    for name, r in (("naive", naive), ("lean", lean)):
        print(f"{name:>6}: peak extra memory {r['peak_extra'] / 2**20:9.1f} MiB, "
              f"forward+backward {r['seconds'] * 1e3:9.1f} ms")
    mem_ratio = lean["peak_extra"] / naive["peak_extra"]
    time_ratio = lean["seconds"] / naive["seconds"]
    print(f"RESULT mem_ratio={mem_ratio:.3f} time_ratio={time_ratio:.3f} "
          f"lean_MiB={lean['peak_extra'] / 2**20:.0f} naive_MiB={naive['peak_extra'] / 2**20:.0f} "
          f"lean_ms={lean['seconds'] * 1e3:.0f} naive_ms={naive['seconds'] * 1e3:.0f}")


if __name__ == "__main__":
    main()
