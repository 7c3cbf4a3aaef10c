"""Benchmark: RolloutEngine vs Hugging Face generate(num_return_sequences=G), same model, same run.

Both sides sample B prompts x G samples with temperature 0.9 and top-p 0.9 under the same
interleave schedule: HF generate gets wavalign.rollout.hf.InterleaveLogitsProcessor, which
enforces exactly what the engine enforces. Two HF baselines are measured:
- hf_per_prompt: one generate(num_return_sequences=G) per prompt (how per-prompt RL loops call it);
- hf_batched:    one generate over all B left-padded prompts with num_return_sequences=G.
The ratio is taken against the FASTER of the two.

Workloads:
- qwen2: a randomly initialised Qwen2 decoder with VITA-Audio's 168,072-id vocabulary
  (hidden 384, 8 layers: ~77M parameters, tied embeddings) and the VITA-like layout: at most 32 text tokens, then
  speech. EOS is disabled so every row of every method produces exactly T tokens.
- world: the built-in world's policy (built and cached on first use) on its test prompts,
  with its own ModalitySpec; rows stop at EOS, so token counts differ between methods and
  throughput is generated tokens per second.

Per-step breakdown: the engine's own timings (RolloutEngine(profile=True)); for HF, model
forward time is measured by hooks on the model and the rest of each step (logits processors,
top-p warper, multinomial, bookkeeping) is what generate adds. The decode step is shown next
to two floors: weight bytes / measured memory bandwidth, and decode FLOPs / measured matmul
throughput.

Each workload ends with a line RESULT workload=<...> ratio=<engine / best HF> ...; the last
line gathers the headline figures: RESULT ratio=<qwen2: engine / best HF> world_ratio=<world
policy: engine / HF batched> (targets: >= 6 and >= 3).

Usage: python benchmarks/bench_rollout.py [--quick] [--workload qwen2|world|both]
       [--prompts B] [--samples G] [--new-tokens T] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

from wavalign.modality import ModalitySpec, Schedule, load_preset
from wavalign.rollout import ModalitySampling, RolloutEngine, SamplingParams
from wavalign.rollout.hf import InterleaveLogitsProcessor

TEMPERATURE, TOP_P = 0.9, 0.9
TEXT_BUDGET = 32  # qwen2 workload: text tokens before the forced switch to speech


@dataclasses.dataclass
class Workload:
    name: str
    description: str
    model: torch.nn.Module
    spec: ModalitySpec
    prompts: list[torch.Tensor]  # B x [P_b] int64
    pad_id: int
    eos_id: int | None  # None: rows always run to max_new_tokens
    max_text: int | None


# ---------------------------------------------------------------------- machine floors
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth_gbps(device: torch.device, megabytes: int = 512) -> float:
    """Read bandwidth of this device: best of 5 sums over a buffer larger than the caches."""
    buffer = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        buffer.sum()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def measure_matmul_gflops(rows: int, hidden: int, cols: int, device: torch.device, dtype: torch.dtype) -> float:
    """GEMM throughput at the decode step's own LM-head shape [rows, hidden] x [hidden, cols]."""
    a = torch.randn(rows, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, cols, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * hidden * cols / best / 1e9


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights once


def matmul_parameters(model) -> int:
    """Parameters a decode step multiplies with (embedding lookups excluded, tied LM head included)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters() if p is not embedding)
    return total + (head.numel() if head is embedding else 0)


class ForwardTimer:
    """Sums the wall time of every model forward (hooks on the top-level module)."""

    def __init__(self, model):
        self.device = next(model.parameters()).device
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        self._handles = [model.register_forward_pre_hook(self._before),
                         model.register_forward_hook(self._after)]

    def _before(self, *_):
        sync(self.device)
        self._start = time.perf_counter()

    def _after(self, *_):
        sync(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def remove(self):
        for handle in self._handles:
            handle.remove()


def describe(model) -> str:
    parameter = next(model.parameters())
    if parameter.device.type == "cuda":
        return f"{torch.cuda.get_device_name(parameter.device)}, {parameter.dtype}"
    return f"CPU ({torch.get_num_threads()} threads), {parameter.dtype}"


# ---------------------------------------------------------------------- workloads
def qwen2_workload(prompts_n: int, hidden: int, layers: int) -> Workload:
    # VITA-Audio's vocabulary, all text then all speech (the figures in RESULTS.md use this
    # schedule); no EOS: equal token counts for every method
    spec = dataclasses.replace(load_preset("vita_audio_balance"), eos=None, schedule=Schedule.sequential())
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=spec.vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64 or 1,
                         num_key_value_heads=max(1, hidden // 192),
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         eos_token_id=None, pad_token_id=spec.pad)
    model = Qwen2ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    text_hi = spec.text_ranges[0][1]
    prompts = [torch.randint(0, min(text_hi, spec.pad), (int(torch.randint(24, 64, (1,), generator=g)),),
                             generator=g) for _ in range(prompts_n)]
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    return Workload("qwen2", f"random Qwen2, vocab {spec.vocab_size}, hidden {hidden}, {layers} layers, "
                    f"{millions:.1f}M params, "
                    f"VITA-like layout (<= {TEXT_BUDGET} text tokens, then speech), no EOS",
                    model, spec, prompts, spec.pad, None, TEXT_BUDGET)


def world_workload(prompts_n: int) -> Workload:
    from wavalign.world import load_world

    world = load_world()
    model = world.load_policy()
    prompts = [torch.tensor(record["prompt_ids"]) for record in world.examples("test")[:prompts_n]]
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    return Workload("world", f"built-in world policy ({millions:.2f}M params, vocab {world.spec.vocab_size}), "
                    "test prompts, own spec, stops at EOS", model, world.spec, prompts,
                    world.spec.pad, world.spec.eos, None)


# ---------------------------------------------------------------------- the three methods
def run_engine(work: Workload, samples: int, new_tokens: int, *, static_cache=None, cuda_graphs=False):
    engine = RolloutEngine(work.model, work.spec, pad_id=work.pad_id, profile=True, static_cache=static_cache,
                           cuda_graphs=cuda_graphs)
    sampling = ModalitySampling(temperature=TEMPERATURE, top_p=TOP_P)
    params = SamplingParams(text=sampling, speech=sampling, max_new_tokens=new_tokens,
                            max_text_tokens=work.max_text, seed=0)
    rollout = engine.generate(work.prompts, n=samples, params=params)
    sync(engine.device)
    t = rollout.timings
    return {"seconds": t["total_s"], "tokens": int(rollout.lengths.sum()), "steps": t["decode_steps"],
            "prefill_s": t["prefill_s"], "forward_s": t["forward_s"], "sample_s": t["sample_s"],
            "bookkeeping_s": t["bookkeeping_s"], "rows": len(work.prompts) * samples}


def _hf_generate(work: Workload, ids, mask, samples: int, new_tokens: int):
    processor = InterleaveLogitsProcessor(work.spec, ids.shape[1], max_text=work.max_text, max_total=new_tokens)
    kwargs = dict(min_new_tokens=new_tokens) if work.eos_id is None else {}
    out = work.model.generate(ids, attention_mask=mask, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P,
                              top_k=0, max_new_tokens=new_tokens, num_return_sequences=samples,
                              pad_token_id=work.pad_id, eos_token_id=work.eos_id,
                              logits_processor=LogitsProcessorList([processor]), **kwargs)
    return out[:, ids.shape[1]:].cpu()  # [rows, T]


def _response_tokens(responses: torch.Tensor, eos_id: int | None) -> int:
    """Tokens each row generated, up to and including its EOS (generate pads after it)."""
    if eos_id is None:
        return responses.numel()
    is_eos = responses == eos_id
    first = torch.where(is_eos.any(dim=1), is_eos.float().argmax(dim=1) + 1, torch.full_like(is_eos[:, 0], responses.shape[1], dtype=torch.long))
    return int(first.sum())


def run_hf(work: Workload, samples: int, new_tokens: int, batched: bool):
    timer = ForwardTimer(work.model)
    device = timer.device
    tokens, start = 0, time.perf_counter()
    try:
        if batched:
            width = max(len(p) for p in work.prompts)
            ids = torch.full((len(work.prompts), width), work.pad_id, dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(work.prompts):  # left padding, as generate requires
                ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
            tokens += _response_tokens(_hf_generate(work, ids.to(device), mask.to(device), samples, new_tokens),
                                       work.eos_id)
        else:
            for prompt in work.prompts:
                ids = prompt[None].to(device)
                tokens += _response_tokens(_hf_generate(work, ids, torch.ones_like(ids), samples, new_tokens),
                                           work.eos_id)
        seconds = time.perf_counter() - start
    finally:
        timer.remove()
    return {"seconds": seconds, "tokens": tokens, "forward_s": timer.seconds, "steps": timer.calls,
            "rest_s": seconds - timer.seconds}


# ---------------------------------------------------------------------- report
def bench(work: Workload, samples: int, new_tokens: int, kv_cache: str = "auto", cuda_graphs: bool = False) -> dict:
    print(f"\n## {work.name}: {work.description}")
    print(f"# B={len(work.prompts)} prompts x G={samples} samples x up to {new_tokens} new tokens; "
          f"temperature {TEMPERATURE}, top-p {TOP_P}; device {describe(work.model)}")
    # The engine as configured, and (when that is the static cache) also on transformers'
    # dynamic cache: the static cache's gain measured in the same run.
    static = RolloutEngine(work.model, work.spec, static_cache=None if kv_cache == "auto" else kv_cache == "static",
                           cuda_graphs=cuda_graphs).static_cache
    variants = {"engine": dict(static_cache=static, cuda_graphs=cuda_graphs)}
    if cuda_graphs:  # and the same static-cache step without graphs
        variants["engine_no_graphs"] = dict(static_cache=True)
    if static:
        variants["engine_dynamic_kv"] = dict(static_cache=False)
    with torch.no_grad():
        for options in variants.values():
            run_engine(work, samples, 4, **options)  # warm-up (allocator, kernels, graphs) with a few tokens
        _ = run_hf(work, samples, 4, batched=True)
        engines = {name: run_engine(work, samples, new_tokens, **options) for name, options in variants.items()}
        engine = engines["engine"]
        per_prompt = run_hf(work, samples, new_tokens, batched=False)
        batched = run_hf(work, samples, new_tokens, batched=True)
    print(f"# engine: {'static' if static else 'dynamic (transformers)'} KV cache"
          f"{', CUDA graphs' if cuda_graphs else ''}")

    rates = {}
    for name, r in (*engines.items(), ("hf_per_prompt", per_prompt), ("hf_batched", batched)):
        rates[name] = r["tokens"] / r["seconds"]
        print(f"{name:>14}: {r['seconds']:8.2f} s  {r['tokens']:6d} tokens  {rates[name]:9.1f} tokens/s")
    best_hf = max(("hf_per_prompt", "hf_batched"), key=lambda k: rates[k])
    ratio = rates["engine"] / rates[best_hf]

    print()
    for name, r in engines.items():
        steps = max(r["steps"], 1)
        print(f"# {name} per decode step (ms): "
              f"forward {1e3 * r['forward_s'] / steps:.2f} | sampling {1e3 * r['sample_s'] / steps:.2f} | "
              f"bookkeeping {1e3 * r['bookkeeping_s'] / steps:.2f} | "
              f"total {1e3 * (r['forward_s'] + r['sample_s'] + r['bookkeeping_s']) / steps:.2f} "
              f"({r['rows']} rows at the start; prefill {1e3 * r['prefill_s']:.1f} ms once)")
    steps = max(engine["steps"], 1)
    for name, r in (("hf_per_prompt", per_prompt), ("hf_batched", batched)):
        calls = max(r["steps"], 1)
        print(f"# {name} per forward call (ms): forward {1e3 * r['forward_s'] / calls:.2f} | "
              f"processors+sampling+bookkeeping {1e3 * r['rest_s'] / calls:.2f} ({r['steps']} forward calls)")

    head = work.model.get_output_embeddings().weight  # [V, H]
    bandwidth = measure_bandwidth_gbps(head.device)
    gflops = measure_matmul_gflops(engine["rows"], head.shape[1], head.shape[0], head.device, head.dtype)
    bytes_floor = weight_bytes(work.model) / (bandwidth * 1e9)
    flops_floor = 2 * engine["rows"] * matmul_parameters(work.model) / (gflops * 1e9)
    forward_ms = 1e3 * engine["forward_s"] / steps
    print(f"# floors for a {engine['rows']}-row decode step: weights {weight_bytes(work.model) / 2**20:.0f} MiB / "
          f"{bandwidth:.1f} GB/s = {1e3 * bytes_floor:.2f} ms; {2 * engine['rows'] * matmul_parameters(work.model) / 1e9:.2f} "
          f"GFLOP / {gflops:.0f} GFLOP/s = {1e3 * flops_floor:.2f} ms; engine forward {forward_ms:.2f} ms = "
          f"{forward_ms / (1e3 * max(bytes_floor, flops_floor)):.2f}x the larger floor")
    print(f"RESULT workload={work.name} ratio={ratio:.2f} baseline={best_hf} engine_tok_s={rates['engine']:.1f} "
          f"hf_per_prompt_tok_s={rates['hf_per_prompt']:.1f} hf_batched_tok_s={rates['hf_batched']:.1f} "
          f"ratio_per_prompt={rates['engine'] / rates['hf_per_prompt']:.2f} "
          f"ratio_batched={rates['engine'] / rates['hf_batched']:.2f}"
          + (f" static_kv_gain={rates['engine_no_graphs' if cuda_graphs else 'engine'] / rates['engine_dynamic_kv']:.2f}"
             if static else "")
          + (f" cuda_graphs_gain={rates['engine'] / rates['engine_no_graphs']:.2f}" if cuda_graphs else ""))
    return {"ratio": ratio, "ratio_batched": rates["engine"] / rates["hf_batched"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts x 4 samples x 32 tokens")
    parser.add_argument("--workload", choices=("qwen2", "world", "both"), default="both")
    parser.add_argument("--prompts", type=int, default=None, help="B (default 8; quick 2)")
    parser.add_argument("--samples", type=int, default=None, help="G (default 8; quick 4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="T (default 128; quick 32)")
    parser.add_argument("--hidden", type=int, default=384, help="qwen2 hidden size (multiple of 64)")
    parser.add_argument("--layers", type=int, default=8, help="qwen2 decoder layers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--kv-cache", choices=("auto", "static", "dynamic"), default="auto",
                        help="the engine's KV cache (auto: static where supported; then the dynamic cache "
                             "is measured too)")
    parser.add_argument("--cuda-graphs", action="store_true", help="capture the engine's decode step (CUDA)")
    args = parser.parse_args()
    prompts_n = args.prompts or (2 if args.quick else 8)
    samples = args.samples or (4 if args.quick else 8)
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    if args.hidden < 64 or args.hidden % 64:
        parser.error("--hidden must be a positive multiple of 64")
    for flag, value in (("--prompts", prompts_n), ("--samples", samples), ("--new-tokens", new_tokens),
                        ("--layers", args.layers)):
        if value < 1:
            parser.error(f"{flag} must be >= 1")
    workloads = ["world", "qwen2"] if args.workload == "both" else [args.workload]
    results = {}
    for name in workloads:
        work = qwen2_workload(prompts_n, args.hidden, args.layers) if name == "qwen2" else world_workload(prompts_n)
        work.model.to(device=args.device, dtype=getattr(torch, args.dtype))
        results[name] = bench(work, samples, new_tokens, args.kv_cache, args.cuda_graphs)
    # The headline figures in one line: the 77M Qwen2 against the best HF baseline (target >= 6)
    # and the world policy against HF batched generate (target >= 3).
    parts = []
    if "qwen2" in results:
        parts.append(f"ratio={results['qwen2']['ratio']:.2f}")
    if "world" in results:
        parts.append(f"world_ratio={results['world']['ratio_batched']:.2f}")
    print("RESULT " + " ".join(parts) + f" prompts={prompts_n} samples={samples} new_tokens={new_tokens} "
          f"device={args.device} dtype={args.dtype}")


if __name__ == "__main__":
    main()
