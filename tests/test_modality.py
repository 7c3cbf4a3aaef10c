"""ModalitySpec: validation, token typing, YAML and tokenizer builders, presets, resolve_spec."""

import pytest
import torch

from wavalign.modality import (
    NEITHER, NOT_RESPONSE, SPEECH, TEXT, ModalitySpec, Schedule, ids_to_ranges, load_preset, resolve_spec,
)


def small_spec(**overrides):
    fields = dict(
        vocab_size=40, text_ranges=[(0, 20)], speech_ranges=[(22, 38)], eos=1, pad=0,
        begin_audio=20, end_audio=21, schedule=Schedule.chunked(text=3, speech=6),
    )
    fields.update(overrides)
    return ModalitySpec(**fields)


def test_token_types_boundaries_and_mask():
    spec = small_spec()
    ids = torch.tensor([[5, 20, 22, 37, 21, 1, 0], [38, 39, 3, 22, 22, 21, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    types = spec.token_types(ids, mask)
    assert types.dtype == torch.int8
    assert types.tolist() == [[TEXT, SPEECH, SPEECH, SPEECH, SPEECH, TEXT, NOT_RESPONSE],
                              [NOT_RESPONSE, NOT_RESPONSE, TEXT, SPEECH, SPEECH, SPEECH, TEXT]]
    as_text = small_spec(boundary_is_speech=False).token_types(ids[:1, :5])
    assert as_text.tolist() == [[TEXT, TEXT, SPEECH, SPEECH, TEXT]]
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 40\), found \[0, 40\]"):
        spec.token_types(torch.tensor([[0, 40]]))


def test_token_types_derive_from_the_modality_table():
    # ids 38, 39 are in no range: NEITHER in the modality table, text as token types
    for spec in (small_spec(), small_spec(boundary_is_speech=False), load_preset("glm4_voice")):
        table = spec.modality_table()
        ids = torch.arange(spec.vocab_size)[None, :]
        assert spec.token_types(ids)[0].tolist() == [TEXT if m == NEITHER else m for m in table.tolist()]
    assert small_spec().modality_table()[38:].tolist() == [NEITHER, NEITHER]


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (dict(speech_ranges=[(15, 30)]), r"text range \[0, 20\) overlaps speech range \[15, 30\)"),
        (dict(speech_ranges=[(22, 41)]), r"speech_ranges .* reach outside \[0, vocab_size=40\)"),
        (dict(speech_ranges=[]), "speech_ranges is empty"),
        (dict(text_ranges=[(5, 5)]), r"text_ranges range \[5, 5\) is empty"),
        (dict(eos=25), "special id eos=25 lies inside the speech ranges"),
        (dict(end_audio=40), r"special id end_audio=40 is outside \[0, vocab_size=40\)"),
        (dict(vocab_size=0), "vocab_size must be a positive int"),
    ],
)
def test_invalid_specs_raise_clear_errors(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        small_spec(**overrides)


def test_schedule_validation():
    with pytest.raises(ValueError, match="schedule.kind must be one of"):
        Schedule("alternate")
    with pytest.raises(ValueError, match="schedule.speech must be a positive int"):
        Schedule("chunked", 13, 0)
    with pytest.raises(ValueError, match="apply only to kind 'chunked'"):
        Schedule("sequential", 13, 26)


def test_yaml_round_trip_and_errors(tmp_path):
    spec = small_spec()
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    assert ModalitySpec.from_yaml(path) == spec
    (tmp_path / "bad.yaml").write_text("vocab_size: 10\ntext_ranges: [[0, 5]]\nspeech_ranges: [[5, 10]]\ncolour: red\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown ModalitySpec fields \['colour'\]"):
        ModalitySpec.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="modality spec not found"):
        ModalitySpec.from_yaml(tmp_path / "missing.yaml")


def test_presets_load():
    vita = load_preset("vita_audio_balance")
    assert vita.vocab_size == 168_072 and vita.schedule.kind == "ratio"
    glm = load_preset("glm4_voice")
    assert (glm.schedule.text, glm.schedule.speech) == (13, 26)
    with pytest.raises(FileNotFoundError, match="available: .*vita_audio_balance"):
        load_preset("nope")


def test_ids_to_ranges():
    assert ids_to_ranges([9, 3, 4, 5, 5]) == ((3, 6), (9, 10))


def test_from_hf_tokenizer_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "hello", "world", "<|begin_of_audio|>", "<|end_of_audio|>"]
    words += [f"<|audio_{i}|>" for i in range(8)]
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    fast.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    spec = ModalitySpec.from_tokenizer(tokenizer, vocab_size=16)
    assert spec.speech_ranges == ((6, 14),)
    assert spec.text_ranges == ((0, 4),)
    assert (spec.begin_audio, spec.end_audio, spec.eos, spec.pad) == (4, 5, 1, 0)
    ids = torch.tensor([[2, 4, 6, 13, 5, 1]])
    assert spec.token_types(ids).tolist() == [[TEXT, SPEECH, SPEECH, SPEECH, SPEECH, TEXT]]
    with pytest.raises(ValueError, match="no token of the tokenizer matches"):
        ModalitySpec.from_tokenizer(tokenizer, speech_pattern=r"<unit_\d+>")


def test_resolve_spec_order(tmp_path, monkeypatch):
    """--modality > <model_dir>/modality.yaml > the tokenizer; then a schedule override."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "hi", "<|begin_of_audio|>", "<|end_of_audio|>"] + [f"<|audio_{i}|>" for i in range(4)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)

    from_tokenizer = ModalitySpec.from_tokenizer(tokenizer)
    assert resolve_spec(model_dir, tokenizer) == from_tokenizer
    assert resolve_spec(model_dir) == from_tokenizer  # tokenizer loaded from model_dir
    assert resolve_spec(model_dir, tokenizer, vocab_size=12).vocab_size == 12
    saved = small_spec()
    saved.to_yaml(model_dir / "modality.yaml")
    assert resolve_spec(model_dir, tokenizer) == saved
    other = small_spec(schedule=Schedule.free())
    other.to_yaml(tmp_path / "other.yml")
    assert resolve_spec(model_dir, tokenizer, modality=str(tmp_path / "other.yml")) == other
    assert resolve_spec(model_dir, tokenizer, modality="glm4_voice") == load_preset("glm4_voice")
    chunked = resolve_spec(model_dir, tokenizer, schedule={"kind": "chunked", "text": 2, "speech": 5})
    assert chunked.schedule == Schedule.chunked(text=2, speech=5)
    assert chunked.text_ranges == saved.text_ranges and chunked.eos == saved.eos
    with pytest.raises(FileNotFoundError, match="no modality preset 'nope'"):
        resolve_spec(model_dir, tokenizer, modality="nope")
