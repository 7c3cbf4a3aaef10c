"""wavalign.train.data: JSONL records (plain and public, with audio) become TrainExamples, bad lines
name file:line or are skipped and counted, the seeded resumable PromptSampler, and batch_columns."""

import json
import wave

import pytest

from wavalign.data import TrainExample, batch_columns
from wavalign.modality import ModalitySpec, Schedule
from wavalign.train.data import PromptSampler, RecordConverter, load_jsonl_examples


class _Tok:
    """A character tokenizer: ids 10.. for letters, enough for GenericFormat."""

    all_special_ids = [0, 1, 2]
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [10 + (ord(c) - 97) for c in text if c.isalpha()]})()

    def decode(self, ids):
        return "".join(chr(97 + i - 10) for i in ids)


SPEC = ModalitySpec(vocab_size=100, text_ranges=((0, 40),), speech_ranges=((50, 100),), eos=0, pad=1,
                    begin_audio=40, end_audio=41, schedule=Schedule.sequential())


def _converter(**kw):
    from wavalign.formats import GenericFormat

    return RecordConverter(GenericFormat(_Tok(), SPEC), SPEC.vocab_size, **kw)


def test_wavalign_records_become_examples(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt_text": "hi", "response_text": "ok", "response_units": [0, 3],
                                "answer": "ok"}) + "\n\n" +
                    json.dumps({"prompt_ids": [5, 6], "response_ids": [10, 40, 52, 41, 0]}) + "\n")
    examples, skipped = load_jsonl_examples(path, _converter())
    assert skipped == 0 and len(examples) == 2
    first = examples[0]
    assert first.prompt_ids == [17, 18] and first.prompt_text == "hi"
    assert first.response_ids == [24, 20, 40, 50, 53, 41, 0]  # text, <boa>, units + offset 50, <eoa>, eos
    assert first.columns == {"id": "a", "answer": "ok"}
    assert examples[1].response_ids == [10, 40, 52, 41, 0]


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
    (json.dumps({"response_text": "x"}), "needs prompt_ids"),
    (json.dumps({"prompt_text": "a", "response_text": "x"}), "go together"),
    (json.dumps({"prompt_ids": [5, 500]}), "outside"),
    (json.dumps({"prompt_text": "a", "response_text": "x", "response_units": [99]}), "units must lie"),
    (json.dumps({"prompt_ids": "12"}), "list of integers"),
])
def test_bad_lines_name_file_and_line_or_are_skipped_and_counted(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt_text": "ab"})
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(ValueError, match=rf"d\.jsonl:2: .*{problem}"):
        load_jsonl_examples(path, _converter())
    examples, skipped = load_jsonl_examples(path, _converter(), skip_bad_lines=True)
    assert skipped == 1 and len(examples) == 2


def test_schedule_breaking_response_ids_are_rejected(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt_text": "a", "response_text": "b", "response_units": [1]}) + "\n")
    chunked = ModalitySpec(**{**SPEC.__dict__, "end_text": 42, "schedule": Schedule.chunked(2, 3)})
    from wavalign.formats import GenericFormat

    examples, _ = load_jsonl_examples(path, RecordConverter(GenericFormat(_Tok(), chunked), 100))
    assert examples[0].response_ids == [11, 42, 51, 41, 0]
    with pytest.raises(ValueError, match="breaks the schedule"):
        SPEC.layout_response([10, 55], [51])  # a speech id inside the text part


def _write_wav(path, samples, rate=16000):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(b"".join(int(s * 32767).to_bytes(2, "little", signed=True) for s in samples))


def test_public_wavalign_records_with_audio(tmp_path):
    _write_wav(tmp_path / "gold.wav", [0.0, 0.5, -0.5, 0.25])
    record = {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"}],
              "audios": [], "sft_target_text": "hi", "sft_target_audio": "gold.wav", "task_type": "qa",
              "question_text": "hello?"}
    (tmp_path / "p.jsonl").write_text(json.dumps(record) + "\n")
    seen = []

    class Codec:  # a SpeechCodec: only encode is needed to read records
        sample_rate = 16000

        def encode(self, waveform, rate):
            seen.append((waveform.shape[0], rate))
            return [1, 2]

    examples, _ = load_jsonl_examples(tmp_path / "p.jsonl", _converter(codec=Codec(), base_dir=tmp_path))
    assert seen == [(4, 16000)]
    e = examples[0]
    assert e.response_ids == [17, 18, 40, 51, 52, 41, 0] and e.columns["task_type"] == "qa"
    assert e.prompt_text == "hello?"
    with pytest.raises(ValueError, match=r"p\.jsonl:1: .*needs a speech codec"):
        load_jsonl_examples(tmp_path / "p.jsonl", _converter(base_dir=tmp_path))


def test_prompt_sampler_is_seeded_resumable_and_covers_each_epoch():
    a = PromptSampler(10, seed=3)
    first = a.next(10)
    assert sorted(first) == list(range(10))
    a.next(4)
    state = a.state_dict()
    rest = a.next(13)
    b = PromptSampler(10, seed=3)
    b.load_state_dict(state)
    assert b.next(13) == rest
    assert PromptSampler(10, seed=4).next(10) != first
    with pytest.raises(ValueError, match="same data"):
        PromptSampler(9, seed=3).load_state_dict(state)


def test_batch_columns_repeat_per_sample():
    examples = [TrainExample("a", [1], columns={"answer": "x"}), TrainExample("b", [1], columns={"style": "s"})]
    assert batch_columns(examples, 2) == {"answer": ["x", "x", None, None], "style": [None, None, "s", "s"]}


def test_rank_batches_shard_each_accumulated_batch_over_the_ranks():
    from wavalign.train.data import PromptSampler

    whole = PromptSampler(10, seed=3).next(8)  # one process sees two batches of 4 in this order
    ranks = [PromptSampler(10, seed=3).rank_batches(4, 2, rank, 2) for rank in range(2)]
    assert ranks[0] == [(whole[0:2], 0), (whole[4:6], 4)]  # (example indices, first global prompt)
    assert ranks[1] == [(whole[2:4], 2), (whole[6:8], 6)]
    assert PromptSampler(10, seed=3).rank_batches(4, 2, 0, 1) == [(whole[0:4], 0), (whole[4:8], 4)]
