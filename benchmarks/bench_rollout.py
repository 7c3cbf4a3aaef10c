"""Benchmark: RolloutEngine vs Hugging Face generate for G samples per prompt.

Baselines, measured in the same run on the same randomly initialised Qwen2 decoder:
- "serial": one `model.generate(do_sample=True)` per (prompt, sample), prompt re-encoded every
  time — what the public WavAlign code does.
- "hf_batched": one `generate` per prompt with `num_return_sequences=G`.
The engine additionally enforces the interleave schedule and returns per-token log-probs.
All sample up to max_new_tokens (EOS is disabled so every method produces the same number of
tokens). Last line: RESULT ratio=<serial / engine> ratio_hf_batched=<hf_batched / engine> ...

Usage: python benchmarks/bench_rollout.py [--quick] [--prompts B] [--samples G] [--new-tokens T]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from wavalign.modality import ModalitySpec, Schedule
from wavalign.rollout import ModalitySampling, RolloutEngine, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    prompts_n = args.prompts or (4 if args.quick else 8)
    new_tokens = args.new_tokens or (32 if args.quick else 96)
    vocab, speech_start = args.vocab, args.vocab // 2

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=1024, eos_token_id=None, pad_token_id=0)
    model = Qwen2ForCausalLM(config).eval()
    # No EOS: every method generates exactly new_tokens tokens per sample.
    spec = ModalitySpec(vocab_size=vocab, text_ranges=[(0, speech_start)], speech_ranges=[(speech_start, vocab)],
                        pad=0, schedule=Schedule.chunked(text=13, speech=26))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, speech_start, (int(torch.randint(24, 64, (1,), generator=g)),), generator=g)
               for _ in range(prompts_n)]
    sampling = ModalitySampling(temperature=0.9, top_p=0.9)
    params = SamplingParams(text=sampling, speech=sampling, max_new_tokens=new_tokens, seed=0)
    engine = RolloutEngine(model, spec)

    def run_engine():
        return engine.generate(prompts, n=args.samples, params=params)

    def run_serial():
        for prompt in prompts:
            for _ in range(args.samples):
                model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, pad_token_id=0)

    def run_hf_batched():
        for prompt in prompts:
            model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           do_sample=True, temperature=0.9, top_p=0.9, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, num_return_sequences=args.samples, pad_token_id=0)

    def timed(fn):
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    rollout = run_engine()
    tokens = int(rollout.lengths.sum())
    with torch.no_grad():
        t_engine = timed(run_engine)
        t_serial = timed(run_serial)
        t_batched = timed(run_hf_batched)
    print(f"# Qwen2 random init: vocab={vocab} hidden={args.hidden} layers=4; B={prompts_n} prompts x "
          f"G={args.samples} samples x {new_tokens} new tokens; CPU threads={torch.get_num_threads()}")
    for name, seconds in (("engine", t_engine), ("hf_batched", t_batched), ("serial", t_serial)):
        print(f"{name:>11}: {seconds:8.2f} s  {tokens / seconds:8.1f} tokens/s")
    print(f"RESULT ratio={t_serial / t_engine:.2f} ratio_hf_batched={t_batched / t_engine:.2f} "
          f"engine_s={t_engine:.2f} serial_s={t_serial:.2f} hf_batched_s={t_batched:.2f} tokens={tokens}")


if __name__ == "__main__":
    main()
