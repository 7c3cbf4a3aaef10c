"""`python -m wavalign.rollout` on a tiny local model directory (offline, as a user runs it)."""

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = ["<pad>", "</s>", "<|begin_of_audio|>", "<|end_of_audio|>"] + [f"w{i}" for i in range(20)]
    words += [f"<|audio_{i}|>" for i in range(16)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1))
    path = tmp_path_factory.mktemp("tiny_sdm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "wavalign.rollout", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_writes_one_line_per_sample(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    # (Text prompts need a tokenizer that AutoTokenizer reloads faithfully; transformers 5
    # substitutes the architecture's tokenizer class when config.json names a model type.)
    prompts.write_text(json.dumps({"prompt_ids": [4, 5, 6]}) + "\n\n" + json.dumps({"prompt_ids": [7, 8]}) + "\n")
    out = tmp_path / "rollouts.jsonl"
    proc = run_cli("--model", model_dir, "--prompts", prompts, "-n", 3, "--out", out,
                   "--max-new-tokens", 12, "--temperature", 0.8, "--speech-top-k", 5, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6
    assert [line["prompt_index"] for line in lines] == [0, 0, 0, 1, 1, 1]
    for line in lines:
        assert len(line["response_ids"]) == len(line["logprobs"]) == len(line["token_types"]) <= 12
        speech = [t for t, k in zip(line["response_ids"], line["token_types"]) if k == 1 and t >= 24]
        assert line["speech_units"] == [t - 24 for t in speech]
        assert line["finish_reason"] in {"eos", "length", "end_of_audio"}
    again = tmp_path / "again.jsonl"
    run_cli("--model", model_dir, "--prompts", prompts, "-n", 3, "--out", again,
            "--max-new-tokens", 12, "--temperature", 0.8, "--speech-top-k", 5, "--seed", 1)
    assert again.read_text() == out.read_text()  # seeded: identical rerun


def test_cli_errors_are_clear(model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt_ids": [4]}) + "\n{not json}\n")
    proc = run_cli("--model", model_dir, "--prompts", bad, "--out", tmp_path / "o.jsonl")
    assert proc.returncode != 0 and f"{bad}:2: not valid JSON" in proc.stderr
    empty_prompt = tmp_path / "empty.jsonl"
    empty_prompt.write_text(json.dumps({"text": "hi"}) + "\n")
    proc = run_cli("--model", model_dir, "--prompts", empty_prompt, "--out", tmp_path / "o.jsonl")
    assert "empty.jsonl:1: a prompt line needs 'prompt_ids', 'messages' or 'prompt'" in proc.stderr
    proc = run_cli("--model", model_dir)
    assert proc.returncode == 2 and "pass both --model DIR and --prompts" in proc.stderr
    proc = run_cli("--model", model_dir, "--prompts", empty_prompt, "--wav-dir", tmp_path / "w")
    assert proc.returncode == 2 and "--wav-dir needs a speech codec" in proc.stderr
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"prompt_ids": [4, 5]}) + "\n")
    proc = run_cli("--model", model_dir, "--prompts", ids, "--cuda-graphs", "--out", tmp_path / "o.jsonl")
    assert proc.returncode == 2 and "cuda_graphs needs a model on a CUDA device" in proc.stderr
    proc = run_cli("--model", model_dir, "--prompts", ids, "--kv-cache", "static", "--attn-implementation", "eager",
                   "--out", tmp_path / "o.jsonl")
    assert proc.returncode == 2 and "static KV cache cannot run this model: attn_implementation 'eager'" in proc.stderr


def test_parser_exposes_every_sampling_field_for_both_modalities():
    from wavalign.rollout.__main__ import _sampling, build_parser
    from wavalign.sampling_params import SAMPLING_FIELD_NAMES

    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    expected = {"--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty",
                "--presence-penalty", "--frequency-penalty"}
    assert len(SAMPLING_FIELD_NAMES) == 7 and expected <= flags
    assert {"--speech-" + flag[2:] for flag in expected} <= flags
    args = parser.parse_args(["--temperature", "0.7", "--top-k", "5", "--speech-top-p", "0.9",
                              "--frequency-penalty", "0.25", "--speech-presence-penalty", "0.5"])
    text = _sampling(args, "", None)
    speech = _sampling(args, "speech_", text)
    assert (text.temperature, text.top_k, text.top_p, text.frequency_penalty) == (0.7, 5, 1.0, 0.25)
    # speech flags default to the text values
    assert (speech.temperature, speech.top_k, speech.top_p) == (0.7, 5, 0.9)
    assert (speech.presence_penalty, speech.frequency_penalty) == (0.5, 0.25)
    assert isinstance(text.top_k, int)


@pytest.mark.parametrize("argv, message", [
    (["--top-p", "1.5"], "argument --top-p: must be in (0, 1]"),
    (["--speech-temperature", "-1"], "argument --speech-temperature: must be >= 0"),
    (["--top-k", "2.5"], "argument --top-k: invalid int value"),
])
def test_parser_rejects_bad_sampling_values(argv, message, capsys):
    from wavalign.rollout.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


CODEC = '''
import torch


class Tones:
    """units -> 10 ms tones at 16 kHz; one unit that decodes to nothing fails (None)."""

    sample_rate = 16000

    def decode(self, units):
        if 13 in units:
            return None
        t = torch.arange(160) / 16000
        return torch.cat([0.2 * torch.sin(2 * torch.pi * (200 + 40 * u) * t) for u in units])


def make():
    return Tones()
'''


def test_wav_dir_decodes_with_any_codec_and_the_hf_generate_backend(model_dir, tmp_path):
    import soundfile

    (tmp_path / "cli_tone_codec.py").write_text(CODEC)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in ([4, 5, 6], [7, 8])))
    out, wavs = tmp_path / "rollouts.jsonl", tmp_path / "wavs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "wavalign.rollout", "--model", str(model_dir), "--prompts", str(prompts),
                           "-n", "4", "--out", str(out), "--max-new-tokens", "16", "--seed", "3", "--wav-dir", str(wavs),
                           "--codec", "python", "--codec-options", '{"factory": "cli_tone_codec:make"}',
                           "--backend", "hf_generate"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    spoke = {i: line["speech_units"] for i, line in enumerate(lines) if line["speech_units"]}
    assert spoke, "no sample spoke; the test needs speech to decode"
    for index, units in spoke.items():
        wav = wavs / f"sample_{index:05d}.wav"
        if 13 in units:  # the codec failed: nothing written, and said so
            assert not wav.exists()
            continue
        audio, rate = soundfile.read(str(wav))
        assert rate == 16000 and len(audio) == 160 * len(units)
    failed = sum(13 in units for units in spoke.values())
    assert (f"the codec failed to decode {failed} of" in proc.stderr) == bool(failed)


def test_loaded_models_keep_hub_kernels_off_and_the_static_cache(model_dir):
    # transformers >= 5.25 kernelizes by default (fetching kernels from the Hub and swapping
    # the layers the static cache mirrors); wavalign's loader turns that off.
    from wavalign.adapters import ModelAdapter
    from wavalign.rollout.static_decode import unsupported_reason

    model = ModelAdapter().load_model(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    assert not getattr(model, "use_kernels", False)
    assert unsupported_reason(model) is None
