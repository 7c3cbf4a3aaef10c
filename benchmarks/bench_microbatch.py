"""Benchmark: peak memory of one training step with micro-batches vs the whole batch at once.

One grpo step (wavalign.train.learn.learn_hybrid) over 64 rollout rows of a random Llama:
"whole" runs one forward/backward over all 64 rows; "micro" hands optim.micro_batch_size=4
rows at a time to backward (the gradient is the same, see tests/test_learn.py). Each variant
runs in its own fresh process, so peak memory is peak resident memory minus resident memory
once the model and the batch exist (weights, gradients and the batch counted for neither).

Last line:  RESULT mem_ratio=<micro/whole peak> time_ratio=<micro/whole time> ...
Usage:      python benchmarks/bench_microbatch.py [--quick] [--rows 64] [--micro 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(variant: str, rows: int, micro: int, length: int, hidden: int, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wavalign import ops
    from wavalign.train.config import TrainConfig
    from wavalign.logprobs import ResponseLogprobs, ResponseRows, RowLogprobs
    from wavalign.train.collect import StepBatch
    from wavalign.train.learn import learn_hybrid

    torch.manual_seed(0)
    vocab = 2048
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=length + 64))
    for p in model.parameters():  # the gradient buffers exist before the measurement, as after step 1
        p.grad = torch.zeros_like(p)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    types = (ids % 2).to(torch.int8)
    group = 4
    rewards = torch.rand(rows // group, group, generator=g) * 4 + 1
    batch = StepBatch(examples=[], group_size=group, spec=None, pad_id=0,
                      rows=ResponseRows([torch.tensor([1, 2, 3, 4])] * rows, ids, torch.full((rows,), length), types),
                      sampling_logprobs=torch.zeros(rows, length), finish_reasons=["eos"] * rows, rewards=rewards,
                      stats=ops.group_stats(rewards))
    config = TrainConfig.load(None, ["mode=grpo", f"optim.micro_batch_size={micro if variant == 'micro' else 0}"])
    logprob_fn = RowLogprobs(ResponseLogprobs(model), 0, "cpu")

    def run():
        if variant == "micro":
            learn_hybrid(batch, logprob_fn, config, backward=lambda term: term.backward())
        else:
            loss, _ = learn_hybrid(batch, logprob_fn, config)
            loss.backward()

    before = rss_bytes()
    start = time.perf_counter()
    run()  # the first step is the memory peak (fresh allocator, as in training)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_extra": peak - before, "seconds": seconds}))


def measure(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--rows", str(args.rows), "--micro", str(args.micro),
           "--length", str(args.length), "--hidden", str(args.hidden), "--layers", str(args.layers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model, <= 60 s on 2 cores")
    parser.add_argument("--rows", type=int, default=64, help="rollout rows in the step (default 64)")
    parser.add_argument("--micro", type=int, default=4, help="optim.micro_batch_size (default 4)")
    parser.add_argument("--length", type=int, default=None, help="response tokens per row (default 192; quick 96)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 256; quick 128)")
    parser.add_argument("--layers", type=int, default=None, help="layers (default 4; quick 2)")
    parser.add_argument("--child", choices=["whole", "micro"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.length = args.length or (96 if args.quick else 192)
    args.hidden = args.hidden or (128 if args.quick else 256)
    args.layers = args.layers or (2 if args.quick else 4)
    if args.child:
        child(args.child, args.rows, args.micro, args.length, args.hidden, args.layers)
        return
    print(f"# grpo step, {args.rows} rows x {args.length} tokens, Llama hidden={args.hidden} layers={args.layers} "
          f"(CPU, float32); micro-batch {args.micro}")
    whole = measure("whole", args)
    micro = measure("micro", args)
    for name, r in (("whole", whole), ("micro", micro)):
        print(f"{name:>6}: peak extra memory {r['peak_extra'] / 2**20:9.1f} MiB, step {r['seconds']:.2f} s")
    print(f"RESULT mem_ratio={micro['peak_extra'] / whole['peak_extra']:.3f} "
          f"time_ratio={micro['seconds'] / whole['seconds']:.3f} whole_MiB={whole['peak_extra'] / 2**20:.0f} "
          f"micro_MiB={micro['peak_extra'] / 2**20:.0f}")


if __name__ == "__main__":
    main()
