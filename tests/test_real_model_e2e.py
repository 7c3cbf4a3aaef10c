"""A VITA-Audio-shaped run end to end, with stand-ins built here: a tiny random Qwen2 with the
168,072-token vocabulary and <|audio_i|> tokens, the Balance ratio schedule, a `python`
speech codec (units <-> tones), public-format JSONL records with WAV paths in the shape of
the release's examples/sample_rl_sft.jsonl, and an `http_judge` on a loopback server that
checks every request carries a valid WAV of the length the codec's audio implies.
Two hybrid steps, then one `python -m wavalign.eval` run. Nothing is downloaded."""

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from wavalign.loopback import LoopbackServer, QuietHandler

N_TEXT, N_UNITS = 151_688, 16_384  # Qwen2.5's text ids + GLM-4-Voice's units = 168,072
FRAME, RATE, JUDGE_RATE = 320, 16_000, 24_000  # the codec: one unit per 20 ms at 16 kHz
WORDS = ("You are Luke the voice AI assistant . You can speak and listen Please answer naturally and then speak "
         "your answer Sure Here is a short spoken answer What colour is the sky It is blue Say hello Hello there "
         "system user assistant").split()
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CODEC = '''
import torch

FRAME, RATE = 320, 16000


class ToneCodec:
    """units -> 20 ms tones (100 + u % 400 Hz); encode: each frame's zero crossings -> a unit."""

    sample_rate = RATE

    def decode(self, units):
        t = torch.arange(FRAME) / RATE
        return torch.cat([0.3 * torch.sin(2 * torch.pi * (100 + u % 400) * t) for u in units])

    def encode(self, waveform, sample_rate):
        assert sample_rate == RATE, sample_rate
        frames = waveform[: waveform.shape[0] // FRAME * FRAME].reshape(-1, FRAME)
        crossings = (frames[:, 1:].sign() != frames[:, :-1].sign()).sum(dim=1)
        return [int(min(c * 25, 16383)) for c in crossings.tolist()]


def make():
    return ToneCodec()
'''


def _tokenizer():
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_audio|>", "<|end_of_audio|>"]
    words = ["<unk>"] + sorted(set(WORDS)) + ["\n"]
    words += [f"x{i}" for i in range(N_TEXT - len(words) - len(specials))] + specials
    words += [f"<|audio_{i}|>" for i in range(N_UNITS)]
    assert len(words) == N_TEXT + N_UNITS
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def vita_like(tmp_path_factory):
    """A tiny random Qwen2 with VITA-Audio's vocabulary, nudged (through one residual
    dimension the final norm passes on) towards opening speech blocks, so rollouts hold
    text and speech."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=N_TEXT + N_UNITS, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"]))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 40.0  # dim 0 dominates: after the norm it is ~sqrt(16) = 4
        head = model.lm_head.weight
        head.mul_(0.05)
        head[:, 0] = 0.0
        head[vocab["<|begin_of_audio|>"], 0] = 12.0 / 4
        head[vocab["<|end_of_audio|>"], 0] = 7.5 / 4
        head[vocab["<|im_end|>"], 0] = 9.0 / 4
    path = tmp_path_factory.mktemp("vita_like")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _tone(path, seconds, frequency, rate, subtype):
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.4 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate, subtype=subtype)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Public-format records (system turn, a spoken question, gold text + audio), audio
    beside the JSONL, some at 24 kHz / 24-bit, and a prompt-only record."""
    root = tmp_path_factory.mktemp("data")
    (root / "audio").mkdir()
    questions = [("Please answer naturally and then speak your answer .", "Sure . Here is a short spoken answer ."),
                 ("What colour is the sky", "It is blue ."), ("Say hello", "Hello there .")]
    records = []
    for i, (question, answer) in enumerate(questions):
        _tone(root / "audio" / f"q{i}.wav", 0.2 + 0.1 * i, 300 + 100 * i, 24_000, "PCM_24")
        _tone(root / "audio" / f"a{i}.wav", 0.3, 200 + 50 * i, 16_000, "PCM_16")
        records.append({"messages": [{"role": "system", "content": "You are Luke , the voice AI assistant . You can "
                                                                   "speak and listen ."},
                                     {"role": "user", "content": f"{question}\n\n<|audio|>"}],
                        "audios": [f"audio/q{i}.wav"], "sft_target_text": answer,
                        "sft_target_audio": f"audio/a{i}.wav", "task_type": "s2s", "question_text": question})
    records.append({"messages": [{"role": "user", "content": "Say hello\n\n<|audio|>"}], "audios": ["audio/q2.wav"],
                    "task_type": "s2s", "question_text": "Say hello"})  # prompt-only: no SFT target
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    (root / "vita_e2e_codecs.py").write_text(CODEC)
    return root


class WavCheckingJudge(LoopbackServer):
    """An OpenAI-compatible loopback judge: every request must hold one input_audio part, a
    16-bit mono WAV at JUDGE_RATE whose length is a whole number of the codec's frames; a
    request that breaks this is recorded and answered 400. Scores follow the transcript."""

    def __init__(self):
        self.seen, self.problems, self.silent = [], [], 0
        judge = self

        class Handler(QuietHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                problem, score = judge.check(payload)
                if problem:
                    judge.problems.append(problem)
                    self._reply(400, problem)
                    return
                self._reply(200, json.dumps({"choices": [{"message": {"content": f"ok <score>{score}</score>"}}]}))

        super().__init__(Handler)

    @property
    def url(self):
        return f"{self.base_url}/v1"

    def check(self, payload):
        parts = payload["messages"][1]["content"]
        audio = [p for p in parts if p.get("type") == "input_audio"]
        text = [p["text"] for p in parts if p.get("type") == "text"]
        if len(text) != 1 or "Transcript of answer:" not in text[0] or len(audio) > 1:
            return f"request shape: {[p.get('type') for p in parts]}", None
        if not audio:  # a reply without speech: judged on its transcript alone, as the public code does
            self.silent += 1
            return None, 1
        info = soundfile.info(io.BytesIO(base64.b64decode(audio[0]["input_audio"]["data"])))
        frames_per_unit = FRAME * JUDGE_RATE // RATE
        if (info.format, info.subtype, info.channels, info.samplerate) != ("WAV", "PCM_16", 1, JUDGE_RATE):
            return f"audio format {info.format} {info.subtype} {info.channels} ch {info.samplerate} Hz", None
        if info.frames == 0 or info.frames % frames_per_unit:
            return f"audio length {info.frames} is not a whole number of {frames_per_unit}-sample units", None
        self.seen.append(info.frames // frames_per_unit)
        return None, 1 + len(text[0]) % 5


@pytest.fixture
def judge():
    with WavCheckingJudge() as server:
        yield server


def _config_file(tmp_path, vita_like, data, judge_url):
    config = {
        "mode": "hybrid",
        "model": {"path": str(vita_like), "schedule": {"kind": "ratio", "pattern": [1, 4, 3, 8, 4, 10],
                                                       "boundaries": True}},
        "speech": {"codec": "python", "options": {"factory": "vita_e2e_codecs:make"}},
        "data": {"source": "jsonl", "train_path": str(data / "train.jsonl"), "eval_path": str(data / "dev.jsonl"),
                 "format": "public"},
        "rollout": {"group_size": 2, "max_new_tokens": 24},
        "rewards": {"components": [
            {"name": "semantic", "kind": "http_judge", "weight": 0.7,
             "options": {"base_url": judge_url, "kind": "semantic", "audio": True, "sample_rate": JUDGE_RATE,
                         "api_key_env": None, "max_retries": 0, "timeout_s": 20}},
            {"name": "acoustic", "kind": "http_judge", "weight": 0.3,
             "options": {"base_url": judge_url, "kind": "acoustic", "audio": True, "sample_rate": JUDGE_RATE,
                         "api_key_env": None, "max_retries": 0, "timeout_s": 20}}]},
        "optim": {"steps": 2, "prompts_per_step": 2, "warmup_steps": 1, "lr": 1e-3},
        "eval": {"split": "dev", "before": False, "after": False, "temperature": 1.0},
        "run": {"device": "cpu", "output_dir": str(tmp_path), "name": "vita", "save_every": 0, "plots": False,
                "progress": False, "report_to": [], "log_completions_every": 1},
    }
    path = tmp_path / "vita.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _env(data):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(data), os.environ.get(
        "PYTHONPATH", "")])}


@pytest.mark.slow
def test_two_hybrid_steps_then_eval_end_to_end(tmp_path, vita_like, data, judge):
    config = _config_file(tmp_path, vita_like, data, judge.url)
    root = Path(__file__).resolve().parents[1]
    train = subprocess.run([sys.executable, "-m", "wavalign.train", "--config", str(config)], cwd=root,
                           env=_env(data), capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-4000:]
    assert not judge.problems, judge.problems
    lines = [json.loads(line) for line in (tmp_path / "vita" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss/total" in line]
    assert len(steps) == 2 and all(np.isfinite(s["loss/total"]) for s in steps)
    assert all(s["reward/missing_fraction"] == 0.0 for s in steps)
    assert all(s["rollout/speech_tokens"] > 0 and s["rollout/text_tokens"] > 0 for s in steps)
    # The judge heard every completion with speech, each through both components.
    logged = [json.loads(line) for step in (1, 2)
              for line in (tmp_path / "vita" / "completions" / f"step_{step}.jsonl").read_text().splitlines()]
    units = sorted(c["speech_units"] for c in logged if c["speech_units"])  # units per completion
    assert units and sorted(judge.seen) == sorted(units * 2)

    judge.seen.clear()
    judge.silent = 0
    out = tmp_path / "eval.json"
    evaluation = subprocess.run([sys.executable, "-m", "wavalign.eval", "--config", str(config), "--out", str(out),
                                 "--device", "cpu", "--resamples", "200"],
                                cwd=root, env=_env(data), capture_output=True, text=True, timeout=900)
    assert evaluation.returncode == 0, evaluation.stderr[-4000:]
    assert not judge.problems, judge.problems
    result = json.loads(out.read_text())
    assert result["n"] == 3 and len(result["records"]) == 3
    assert all(np.isfinite(r["reward"]) for r in result["records"])
    assert len(judge.seen) + judge.silent == 2 * 3  # each dev record heard by both judges
    assert not any("<|" in r["text"] for r in result["records"])  # boundaries are not part of the text channel


def test_public_records_lay_out_the_balance_schedule(vita_like, data):
    """The gold responses of the run above are the public rule's layout, with its boundaries."""
    sys.path.insert(0, str(data))
    try:
        from vita_e2e_codecs import make
    finally:
        sys.path.remove(str(data))
        sys.modules.pop("vita_e2e_codecs", None)
    from wavalign.formats import GenericFormat
    from wavalign.modality import Schedule, resolve_spec
    from wavalign.train.data import RecordConverter, load_jsonl_examples

    tokenizer = _tokenizer()
    spec = resolve_spec(vita_like, tokenizer, schedule={"kind": "ratio", "pattern": [1, 4, 3, 8, 4, 10]})
    assert spec.vocab_size == 168_072 and spec.schedule == Schedule.ratio([1, 4, 3, 8, 4, 10])
    examples, skipped = load_jsonl_examples(data / "train.jsonl", RecordConverter(GenericFormat(tokenizer, spec),
                                                                               spec.vocab_size, codec=make()))
    assert skipped == 0 and len(examples) == 4 and examples[3].response_ids is None
    begin, end = spec.begin_audio, spec.end_audio
    for example in examples[:3]:
        gold = example.response_ids
        assert gold[-1] == spec.eos and gold[-2] == end
        assert gold.count(begin) == gold.count(end) >= 2  # interleaved, not text-then-speech
        first_block = gold[gold.index(begin) + 1:gold.index(end)]
        assert gold.index(begin) == 1 and len(first_block) == 2  # Balance: 1 text, then 4 - 2 units
        prompt = example.prompt_ids
        assert begin in prompt and end in prompt  # the spoken question's units, spliced in
