"""`python -m wavalign.rollout` — sample G interleaved responses per prompt (RolloutEngine, or
the model's own generate() with --backend hf_generate).

    python -m wavalign.rollout --model DIR --prompts prompts.jsonl -n 4 --out rollouts.jsonl

Each prompt line holds one of: "prompt_ids" (token ids), "messages" (chat messages, rendered
with the tokenizer's chat template) or "prompt" (plain text). The modality layout comes from
--modality (a preset name or a YAML file), else the model directory's modality.yaml, else
the tokenizer (speech tokens named like <|audio_123|>): wavalign.modality.resolve_spec.
Every ModalitySampling field is a flag, for text (--top-p) and speech (--speech-top-p,
default: the text value). Each output line is one sample: response ids, its text channel,
its speech units, token types, log-probs and finish reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from wavalign.codes import SPEECH, TEXT
from wavalign.data import read_jsonl
from wavalign.modality import resolve_spec
from wavalign.rollout.engine import ModalitySampling, SamplingParams
from wavalign.sampling_params import SAMPLING_FIELDS, field_problem


def _flag_type(field):
    """argparse type for a sampling field: converts and validates, so a bad value is an
    argparse error naming the flag."""
    convert = int if field.metadata["dtype"] == "int64" else float

    def parse(text: str):
        value = convert(text)
        problem = field_problem(field.name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = convert.__name__  # argparse names the type in "invalid int value" errors
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wavalign.rollout", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="local directory of a Hugging Face causal LM and its tokenizer "
                   "(omit with --prompts to sample the built-in world's policy on its test prompts)")
    p.add_argument("--prompts", help="JSONL file of prompts")
    p.add_argument("--world", choices=["default", "fast"], default="default",
                   help="without --model/--prompts: which built-in world (built and cached on first use)")
    p.add_argument("--wav-dir", help="also write each sample's speech as WAV, decoded by the built-in world's "
                   "vocoder or by --codec")
    p.add_argument("--codec", choices=["world", "python", "http", "onnx"],
                   help="the speech codec that decodes units for --wav-dir (wavalign.codecs; default: the world's "
                   "when sampling the world)")
    p.add_argument("--codec-options", default="{}", help="the codec's options as JSON, e.g. "
                   "'{\"factory\": \"my_codecs:glm4voice\"}' or '{\"decode_url\": \"http://127.0.0.1:9000/token2wav\"}'")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model directory's own modeling code (only for directories you trust)")
    p.add_argument("--attn-implementation", default=None, help="eager, sdpa, flash_attention_2, ... (default: "
                   "transformers' choice)")
    p.add_argument("--backend", choices=["engine", "hf_generate"], default="engine",
                   help="engine: wavalign's batched decode loop; hf_generate: the model's own generate() under the "
                   "same schedule (temperature per modality only)")
    p.add_argument("--kv-cache", choices=["auto", "static", "dynamic"], default="auto",
                   help="the engine's KV cache: static (preallocated, bit-identical; Llama/Qwen2 with sdpa), "
                   "dynamic (transformers' own), auto (static where the model allows it; default)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the engine's decode step in CUDA graphs (CUDA only, static KV cache)")
    p.add_argument("--out", default="rollouts.jsonl", help="output JSONL (default: rollouts.jsonl)")
    p.add_argument("-n", "--samples", type=int, default=4, help="samples per prompt, G (default 4)")
    p.add_argument("--batch-prompts", type=int, default=8, help="prompts per engine call (default 8)")
    p.add_argument("--modality", help="preset name (e.g. vita_audio_balance) or a ModalitySpec YAML")
    p.add_argument("--speech-pattern", default=r"<\|audio_(\d+)\|>", help="regex naming speech tokens")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-text-tokens", type=int, default=None)
    p.add_argument("--max-speech-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    for prefix, label in (("", "text"), ("speech-", "speech")):  # --top-p / --speech-top-p, ...
        for field in SAMPLING_FIELDS:
            default = None if prefix else field.default
            p.add_argument(f"--{prefix}{field.name.replace('_', '-')}", type=_flag_type(field), default=default,
                           help=f"{label}: {field.metadata['help']}; default: " + ("as text" if prefix else f"{default}"))
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    return p


def _sampling(args, prefix: str, fallback: ModalitySampling | None) -> ModalitySampling:
    """The ModalitySampling of the flags with `prefix` ("" text, "speech_"); unset flags
    take fallback's values."""
    given = {f.name: getattr(args, prefix + f.name) for f in SAMPLING_FIELDS}
    given = {name: value for name, value in given.items() if value is not None}
    return ModalitySampling.from_dict(given, where=prefix.rstrip("_") or "text", base=fallback)


def _prompt_ids(record: dict, tokenizer, where: str) -> list[int]:
    if "prompt_ids" in record:
        ids = record["prompt_ids"]
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            raise ValueError(f"{where}: prompt_ids must be a non-empty list of ints")
        return ids
    if "messages" in record:
        return list(tokenizer.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=True))
    if "prompt" in record and isinstance(record["prompt"], str):
        return tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
    raise ValueError(f"{where}: a prompt line needs 'prompt_ids', 'messages' or 'prompt'")


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(build_parser().parse_args(argv))
    except (ValueError, FileNotFoundError) as error:  # bad input: one clear line, no traceback
        print(f"python -m wavalign.rollout: error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    world = None
    if bool(args.model) != bool(args.prompts):
        print("python -m wavalign.rollout: pass both --model DIR and --prompts FILE.jsonl, or neither "
              "(the built-in world)", file=sys.stderr)
        return 2
    if not args.model:
        from wavalign.world import WorldConfig, load_world

        world = load_world(WorldConfig.named(args.world))
        args.model, args.prompts = str(world.policy_path), str(world.path / "data" / "test.jsonl")
        args.modality = str(world.policy_path / "modality.yaml")
        print(f"sampling the built-in world's policy on its test prompts ({world.path})")
    elif args.wav_dir and not args.codec:
        print("--wav-dir needs a speech codec to decode units: give --codec (python, http or onnx) and "
              "--codec-options", file=sys.stderr)
        return 2
    if args.samples < 1:
        print(f"-n/--samples must be >= 1, got {args.samples}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from wavalign.adapters import ModelAdapter

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        print(f"--model {model_dir}: no such directory", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    adapter = ModelAdapter()
    tokenizer = adapter.load_tokenizer(model_dir, trust_remote_code=args.trust_remote_code)
    model = adapter.load_model(model_dir, dtype=dtype, trust_remote_code=args.trust_remote_code,
                               attn_implementation=args.attn_implementation).to(device).eval()
    codec = None
    if args.wav_dir and args.codec:
        from wavalign.codecs import build_codec

        try:
            options = json.loads(args.codec_options)
        except json.JSONDecodeError as error:
            raise ValueError(f"--codec-options is not JSON ({error})") from None
        codec = build_codec(args.codec, options, world=world, where="--codec")
    spec = resolve_spec(model_dir, tokenizer, modality=args.modality or None, speech_pattern=args.speech_pattern,
                        vocab_size=model.get_input_embeddings().weight.shape[0])

    prompts = [_prompt_ids(record, tokenizer, f"{args.prompts}:{line}") for line, record in read_jsonl(args.prompts)]
    if not prompts:
        print(f"{args.prompts}: no prompts", file=sys.stderr)
        return 2
    text = _sampling(args, "", None)
    params = SamplingParams(text=text, speech=_sampling(args, "speech_", text),
                            max_new_tokens=args.max_new_tokens, max_text_tokens=args.max_text_tokens,
                            max_speech_tokens=args.max_speech_tokens, seed=args.seed)
    from wavalign.rollout import make_sampler

    try:
        engine = make_sampler(args.backend, model, spec, pad_id=tokenizer.pad_token_id, adapter=adapter,
                              kv_cache=args.kv_cache, cuda_graphs=args.cuda_graphs)
    except ValueError as error:
        print(f"python -m wavalign.rollout: error: {error}", file=sys.stderr)
        return 2
    failed_audio = 0
    speech_offsets = torch.tensor([0] + [hi - lo for lo, hi in spec.speech_ranges]).cumsum(0)

    def unit_of(token: int) -> int:  # index of a speech id within the concatenated speech ranges
        for index, (lo, hi) in enumerate(spec.speech_ranges):
            if lo <= token < hi:
                return int(speech_offsets[index]) + token - lo
        return -1

    tmp = Path(str(args.out) + ".tmp")
    written = 0
    with tmp.open("w", encoding="utf-8") as out, tqdm(total=len(prompts) * args.samples, unit="sample") as bar:
        for first in range(0, len(prompts), args.batch_prompts):
            chunk = prompts[first: first + args.batch_prompts]
            params_chunk = SamplingParams(**{**params.__dict__, "seed": params.seed + first})
            rollout = engine.generate(chunk, n=args.samples, params=params_chunk)
            for row in range(rollout.ids.shape[0]):
                length = int(rollout.lengths[row])
                ids = rollout.ids[row, :length].tolist()
                types = rollout.token_types[row, :length].tolist()
                record = {
                    "prompt_index": first + int(rollout.prompt_index[row]),
                    "sample": row % args.samples,
                    "response_ids": ids,
                    "text": tokenizer.decode([t for t, k in zip(ids, types) if k == TEXT], skip_special_tokens=True),
                    "speech_units": [unit_of(t) for t, k in zip(ids, types) if k == SPEECH and unit_of(t) >= 0],
                    "token_types": types,
                    "logprobs": [round(v, 6) for v in rollout.logprobs[row, :length].tolist()],
                    "raw_logprobs": [round(v, 6) for v in rollout.raw_logprobs[row, :length].tolist()],
                    "finish_reason": rollout.finish_reasons[row],
                }
                out.write(json.dumps(record) + "\n")
                if args.wav_dir and codec is not None:
                    failed_audio += not _write_codec_wav(codec, Path(args.wav_dir), written, record["speech_units"])
                elif world is not None and args.wav_dir:
                    _write_world_wav(world, Path(args.wav_dir), written, record["speech_units"])
                written += 1
            bar.update(rollout.ids.shape[0])
    tmp.replace(args.out)  # atomic: a crash never leaves a half-written output
    print(f"wrote {written} samples ({len(prompts)} prompts x {args.samples}) to {args.out}")
    if failed_audio:
        print(f"--wav-dir: the codec failed to decode {failed_audio} of {written} samples (no WAV written for "
              f"them; see the warnings above)", file=sys.stderr)
    return 0


def _write_codec_wav(codec, directory: Path, index: int, units: list[int]) -> bool:
    """One sample's speech through `codec` to sample_NNNNN.wav; False when decoding failed
    (the codec returned None or raised: nothing is written, the failure is reported)."""
    from wavalign.audio_io import write_audio

    directory.mkdir(parents=True, exist_ok=True)
    if not units:  # a response with no speech has nothing to write
        return True
    try:
        wave = codec.decode(units)
    except Exception as error:  # noqa: BLE001 - a codec's own failure; reported, never invented
        print(f"--wav-dir: sample {index}: decoding failed ({type(error).__name__}: {error})", file=sys.stderr)
        return False
    if wave is None:
        return False
    write_audio(directory / f"sample_{index:05d}.wav", wave, codec.sample_rate)
    return True


def _write_world_wav(world, directory: Path, index: int, units: list[int]) -> None:
    from wavalign.world.audio import SAMPLE_RATE, write_wav

    directory.mkdir(parents=True, exist_ok=True)
    if len(units) >= 2:  # a response with no speech has nothing to write
        write_wav(directory / f"sample_{index:05d}.wav", world.scorer.wave(units), SAMPLE_RATE)


if __name__ == "__main__":
    sys.exit(main())
