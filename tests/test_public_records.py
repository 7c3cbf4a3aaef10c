"""Public WavAlign records (messages + audio files): spoken prompts, audio reading and
resampling, the per-file unit cache, and errors naming file:line."""

import json
import re

import numpy as np
import pytest
import torch

from wavalign.formats import GenericFormat, strip_placeholders, user_text
from wavalign.modality import ModalitySpec, Schedule
from wavalign.train.data import RecordConverter, load_jsonl_examples

N_UNITS = 64
FRAME = 320  # 20 ms at 16 kHz
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SYSTEM = "You are Luke, the voice AI assistant. You can speak and listen."
QUESTION = "Please answer naturally and then speak your answer."
HISTORY_USER, HISTORY_ASSISTANT = "Hi there, who are you?", "I am Luke."
TARGET = "Sure. Here is a short spoken answer."
WORDS = " ".join([SYSTEM, QUESTION, HISTORY_USER, HISTORY_ASSISTANT, TARGET, "system user assistant first second"])


def _tokenizer(chat_template=TEMPLATE):
    """A word-level tokenizer built here (nothing downloaded): chat markers, the words of the
    test texts, begin/end of audio and N_UNITS <|audio_i|> tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "</s>"] + sorted(set(re.findall(r"\w+|[^\w\s]+", WORDS)))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<|im_start|>", "<|im_end|>", "<|begin_of_audio|>", "<|end_of_audio|>"]
    specials += [f"<|audio_{i}|>" for i in range(N_UNITS)]
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="</s>")
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def fmt():
    tokenizer = _tokenizer()
    spec = ModalitySpec.from_tokenizer(tokenizer, schedule=Schedule.sequential())
    return GenericFormat(tokenizer, spec)


class FakeCodec:
    """A SpeechCodec at 16 kHz: one unit per 20 ms frame from the frame's RMS energy;
    decode plays each unit as a tone. Records what encode was given."""

    sample_rate = 16000

    def __init__(self):
        self.calls = []  # (number of samples, rate, units)

    @staticmethod
    def units_of(waveform: torch.Tensor) -> list[int]:
        frames = waveform[: waveform.shape[0] // FRAME * FRAME].reshape(-1, FRAME)
        rms = frames.pow(2).mean(dim=1).sqrt()
        return [min(N_UNITS - 1, int(r * 40)) for r in rms.tolist()]

    def encode(self, waveform, sample_rate):
        if sample_rate != self.sample_rate:
            raise ValueError(f"audio at {sample_rate} Hz; this codec needs {self.sample_rate} Hz")
        units = self.units_of(waveform)
        self.calls.append((waveform.shape[0], sample_rate, units))
        return units

    def decode(self, units):
        t = torch.arange(FRAME) / self.sample_rate
        return torch.cat([0.3 * torch.sin(2 * torch.pi * (100 + 20 * u) * t) for u in units])


def _tone(path, seconds, rate, amplitude, subtype, frequency=250.0):  # 5 cycles per 20 ms frame
    import soundfile

    t = np.arange(int(round(seconds * rate))) / rate
    soundfile.write(str(path), (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate,
                    subtype=subtype)


@pytest.fixture
def data_dir(tmp_path):
    """tmp/data/{train.jsonl, audio/...}: a 24 kHz 24-bit WAV question, a 16 kHz 16-bit FLAC answer."""
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    _tone(root / "audio" / "example_question.wav", 0.3, 24000, 0.5, "PCM_24")     # 15 frames at 16 kHz
    _tone(root / "audio" / "example_answer.flac", 0.2, 16000, 0.8, "PCM_16")      # 10 frames
    _tone(root / "audio" / "first.wav", 0.1, 16000, 0.2, "PCM_16")                # 5 frames
    _tone(root / "audio" / "second.flac", 0.16, 24000, 0.7, "PCM_24")             # 8 frames
    return root


def _public_record(**extra):
    record = {"messages": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": HISTORY_USER},
                           {"role": "assistant", "content": HISTORY_ASSISTANT},
                           {"role": "user", "content": f"{QUESTION}\n\n<|audio|>"}],
              "audios": ["audio/example_question.wav"], "sft_target_text": TARGET,
              "sft_target_audio": "audio/example_answer.flac", "task_type": "s2s", "question_text": QUESTION}
    record.update(extra)
    return {k: v for k, v in record.items() if v is not None}


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _load(path, fmt, codec=None, **kw):
    converter = RecordConverter(fmt, fmt.spec.vocab_size, codec=codec if codec is not None else FakeCodec())
    return load_jsonl_examples(path, converter, **kw), converter


def _ids(fmt, text):
    return fmt.tokenizer(text, add_special_tokens=False).input_ids


def _blocks(fmt, ids):
    """The begin_audio .. end_audio blocks of a prompt: [(start index, units)]."""
    boa, eoa = fmt.spec.begin_audio, fmt.spec.end_audio
    out, start = [], None
    for i, t in enumerate(ids):
        if t == boa:
            start = i
        elif t == eoa:
            out.append((start, [u - fmt.unit_offset for u in ids[start + 1:i]]))
    return out


# ---------------------------------------------------------------------------- layout
def test_spoken_prompt_keeps_history_text_and_audio_at_the_placeholder(fmt, data_dir, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative audio paths resolve against the JSONL's directory, not the cwd
    codec = FakeCodec()
    (examples, skipped), _ = _load(_write(data_dir / "train.jsonl", [_public_record()]), fmt, codec)
    assert skipped == 0
    example = examples[0]
    question_units = next(u for n, _, u in codec.calls if n == 4800)
    answer_units = next(u for n, _, u in codec.calls if n == 3200)
    block = [fmt.spec.begin_audio] + [fmt.unit_offset + u for u in question_units] + [fmt.spec.end_audio]
    before = _ids(fmt, f"<|im_start|> system {SYSTEM} <|im_end|> <|im_start|> user {HISTORY_USER} <|im_end|> "
                       f"<|im_start|> assistant {HISTORY_ASSISTANT} <|im_end|> <|im_start|> user {QUESTION}")
    after = _ids(fmt, "<|im_end|> <|im_start|> assistant")
    assert example.prompt_ids == before + block + after
    assert fmt.tokenizer.unk_token_id not in example.prompt_ids
    assert len(question_units) == 15  # 0.3 s in 20 ms frames
    # the gold response, laid out by the spec (sequential: text, <boa>, units, <eoa>, eos)
    assert example.response_ids == (_ids(fmt, TARGET) + [fmt.spec.begin_audio]
                                    + [fmt.unit_offset + u for u in answer_units] + [fmt.spec.end_audio, fmt.spec.eos])
    assert example.prompt_audio == [str((data_dir / "audio" / "example_question.wav").resolve())]
    assert example.prompt_text == QUESTION and example.columns == {"task_type": "s2s", "question_text": QUESTION}
    assert example.where == f"{data_dir / 'train.jsonl'}:1"


def test_several_placeholders_in_order_both_spellings_and_trailing_assistant_dropped(fmt, data_dir):
    record = {"messages": [{"role": "user", "content": "first <|audio|> second"},
                           {"role": "assistant", "content": HISTORY_ASSISTANT},
                           {"role": "user", "content": "<audio>"},
                           {"role": "assistant", "content": "Sure."}],  # trailing: dropped
              "audios": ["audio/first.wav", str(data_dir / "audio" / "second.flac")]}
    codec = FakeCodec()
    (examples, _), _ = _load(_write(data_dir / "train.jsonl", [record]), fmt, codec)
    ids = examples[0].prompt_ids
    first = next(u for n, _, u in codec.calls if n == 1600)
    second = next(u for n, _, u in codec.calls if n == 2560)
    blocks = _blocks(fmt, ids)
    assert [units for _, units in blocks] == [first, second]
    head = _ids(fmt, "<|im_start|> user first")
    assert ids[:len(head)] == head and blocks[0][0] == len(head)
    tail = _ids(fmt, f"second <|im_end|> <|im_start|> assistant {HISTORY_ASSISTANT} <|im_end|> <|im_start|> user")
    assert ids[blocks[0][0] + len(first) + 2:blocks[1][0]] == tail
    assert ids[blocks[1][0] + len(second) + 2:] == _ids(fmt, "<|im_end|> <|im_start|> assistant")
    assert _ids(fmt, "Sure")[0] not in ids  # the trailing assistant turn is not part of the prompt
    assert examples[0].prompt_audio == [str((data_dir / "audio" / n).resolve()) for n in ("first.wav", "second.flac")]
    assert examples[0].response_ids is None  # prompt-only
    assert examples[0].prompt_text == "first second"  # user turns' text, placeholders stripped


def test_prompt_only_record_and_text_only_messages(fmt, data_dir):
    prompt_only = _public_record(sft_target_text=None, sft_target_audio=None)
    text_only = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]}
    codec = FakeCodec()
    (examples, _), _ = _load(_write(data_dir / "train.jsonl", [prompt_only, text_only]), fmt, codec)
    assert examples[0].response_ids is None and len(_blocks(fmt, examples[0].prompt_ids)) == 1
    assert [n for n, _, _ in codec.calls] == [4800]  # only the question audio was read
    assert examples[1].prompt_audio == [] and examples[1].prompt_ids == fmt.tokenizer.apply_chat_template(
        text_only["messages"], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert examples[1].prompt_text == QUESTION


def test_without_a_chat_template_turns_are_joined_by_newlines(data_dir):
    tokenizer = _tokenizer(chat_template=None)
    plain = GenericFormat(tokenizer, ModalitySpec.from_tokenizer(tokenizer, schedule=Schedule.sequential()))
    codec = FakeCodec()
    (examples, _), _ = _load(_write(data_dir / "train.jsonl", [_public_record()]), plain, codec)
    units = next(u for n, _, u in codec.calls if n == 4800)
    expected = (_ids(plain, f"{SYSTEM}\n{HISTORY_USER}\n{HISTORY_ASSISTANT}\n{QUESTION}") + [plain.spec.begin_audio]
                + [plain.unit_offset + u for u in units] + [plain.spec.end_audio])
    assert examples[0].prompt_ids == expected


def test_generic_format_spoken_user_turn_and_template_that_drops_the_audio(fmt):
    ids = fmt.prompt_ids(text=QUESTION, units=[3, 4])
    audio = [fmt.spec.begin_audio, fmt.unit_offset + 3, fmt.unit_offset + 4, fmt.spec.end_audio]
    assert ids == _ids(fmt, f"<|im_start|> user {QUESTION}") + audio + _ids(fmt, "<|im_end|> <|im_start|> assistant")
    assert fmt.prompt_ids(units=[3, 4]) == _ids(fmt, "<|im_start|> user") + audio + _ids(
        fmt, "<|im_end|> <|im_start|> assistant")
    with pytest.raises(ValueError, match=r"2 audio placeholder\(s\).*1 audio unit"):
        fmt.prompt_ids(messages=[{"role": "user", "content": "<|audio|> <audio>"}], audio_units=[[1]])
    tokenizer = _tokenizer(chat_template="{% for m in messages %}{{ m['role'] }}{% endfor %}")  # no content
    lossy = GenericFormat(tokenizer, fmt.spec)
    with pytest.raises(ValueError, match="did not keep the 1 audio placeholder"):
        lossy.prompt_ids(messages=[{"role": "user", "content": "<|audio|>"}], audio_units=[[1]])


def test_user_text_strips_both_placeholder_spellings():
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{QUESTION}\n\n<|audio|>"},
                {"role": "user", "content": "<audio>"}, {"role": "user", "content": "a <audio> b"}]
    assert user_text(messages) == f"{QUESTION} a b"
    assert strip_placeholders("<|audio|>") == "" and strip_placeholders(" x ") == "x"


def test_world_chat_format_takes_one_placeholder():
    from wavalign.world.policy import ChatFormat, modality_spec, train_tokenizer

    tokenizer = train_tokenizer([QUESTION, TARGET] * 5, vocab_size=200, n_units=8)
    world_fmt = ChatFormat(tokenizer, modality_spec(tokenizer, Schedule.sequential()))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{QUESTION}\n\n<|audio|>"}]
    ids = world_fmt.prompt_ids(messages=messages, audio_units=[[1, 2]])
    assert ids == world_fmt.prompt_ids(text=QUESTION, units=[1, 2])
    assert ids[-5:] == [world_fmt.spec.begin_audio, world_fmt.unit_offset + 1, world_fmt.unit_offset + 2,
                        world_fmt.spec.end_audio, world_fmt.assistant]
    with pytest.raises(ValueError, match=r"1 audio placeholder\(s\).*0 audio unit"):
        world_fmt.prompt_ids(messages=messages)


# ---------------------------------------------------------------------------- audio reading
def test_audio_is_read_at_any_width_and_resampled_to_the_codec_rate(fmt, data_dir):
    codec = FakeCodec()
    _load(_write(data_dir / "train.jsonl", [_public_record()]), fmt, codec)
    # 0.3 s at 24 kHz (24-bit WAV) reaches the codec as 4800 samples at 16 kHz; the 16 kHz FLAC as is
    assert sorted((n, rate) for n, rate, _ in codec.calls) == [(3200, 16000), (4800, 16000)]
    question = next(u for n, _, u in codec.calls if n == 4800)
    assert set(question[1:-1]) == {int(0.5 / np.sqrt(2) * 40)}  # the tone's energy survived resampling


def test_each_audio_file_is_encoded_once_per_run(fmt, data_dir):
    codec = FakeCodec()
    records = [_public_record(id=str(i)) for i in range(4)]
    (examples, _), converter = _load(_write(data_dir / "train.jsonl", records), fmt, codec)
    assert len(codec.calls) == 2 and converter.encodes == 2  # question and answer, once each
    assert len({tuple(e.prompt_ids) for e in examples}) == 1
    # a changed file (size / mtime) is encoded again
    _tone(data_dir / "audio" / "example_question.wav", 0.4, 24000, 0.5, "PCM_24")
    examples, _ = load_jsonl_examples(data_dir / "train.jsonl", converter)
    assert len(codec.calls) == 3 and codec.calls[-1][0] == 6400
    assert len(_blocks(fmt, examples[0].prompt_ids)[0][1]) == 20


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind, problem", [
    ("missing", "audio file not found: {path}"),
    ("empty", "{path}: cannot read audio"),
    ("corrupt", "{path}: cannot read audio"),
    ("no_samples", "{path}: the audio file holds no samples"),
])
def test_bad_audio_fails_naming_file_line_and_field_or_is_skipped(fmt, data_dir, kind, problem):
    bad = data_dir / "audio" / "bad.wav"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "corrupt":
        bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    elif kind == "no_samples":
        _tone(bad, 0.0, 16000, 0.5, "PCM_16")
    path = _write(data_dir / "train.jsonl", [_public_record(), _public_record(audios=["audio/bad.wav"]),
                                             _public_record(sft_target_audio="audio/bad.wav")])
    message = re.escape(f"{path}:2: audios[0]: " + problem.format(path=bad.resolve()))
    with pytest.raises(ValueError, match=message):
        _load(path, fmt)
    (examples, skipped), _ = _load(path, fmt, skip_bad_lines=True)
    assert skipped == 2 and len(examples) == 1 and examples[0].where.endswith(":1")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: sft_target_audio: ")):
        _load(_write(path, [_public_record(), _public_record(), _public_record(sft_target_audio="audio/bad.wav")]),
              fmt)


@pytest.mark.parametrize("content, audios, counts", [
    ("<|audio|> and <audio>", ["audio/first.wav"], (2, 1)),
    (QUESTION, ["audio/first.wav"], (0, 1)),
    ("<|audio|>", [], (1, 0)),
])
def test_placeholder_count_must_match_the_audios(fmt, data_dir, content, audios, counts):
    record = {"messages": [{"role": "user", "content": content}], "audios": audios}
    path = _write(data_dir / "train.jsonl", [record])
    with pytest.raises(ValueError, match=rf"train\.jsonl:1: the messages hold {counts[0]} audio placeholder\(s\) "
                                         rf".* audios lists {counts[1]} file\(s\)"):
        _load(path, fmt)


def test_records_with_audio_need_a_codec(fmt, data_dir):
    path = _write(data_dir / "train.jsonl", [_public_record()])
    with pytest.raises(ValueError, match=r"train\.jsonl:1: audios\[0\]: .*needs a speech codec"):
        load_jsonl_examples(path, RecordConverter(fmt, fmt.spec.vocab_size))
