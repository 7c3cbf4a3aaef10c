"""The VITA-Audio ratio-list schedule: gold layouts against an independent transcription of
the public rule, native state machine against its twin on pattern-following random walks,
the shipped presets, and the schedule inside HF generate()."""

import pytest
import torch

from wavalign.codes import PHASE_CLOSING, SET_END_AUDIO_ONLY, SET_EOS_ONLY, SET_SPEECH, SET_TEXT, SET_TEXT_ONLY
from wavalign.modality import ModalitySpec, Schedule, load_preset, ratio_layout
from wavalign.reference.interleave import N_ALLOWED_SETS, RowState, allowed_mask, reference_step
from wavalign.rollout import InterleaveState

BEGIN, END, EOS = 20, 21, 1


def make_spec(pattern, boundaries=True, **overrides):
    # ids: 0 pad, 1 eos, 3..19 text, 20 begin_audio, 21 end_audio, 22..61 speech
    fields = dict(vocab_size=64, text_ranges=[(0, 20)], speech_ranges=[(22, 62)], eos=EOS, pad=0,
                  begin_audio=BEGIN, end_audio=END, schedule=Schedule.ratio(pattern, boundaries))
    fields.update(overrides)
    return ModalitySpec(**fields)


def public_interval(content, ratio, aud_start, aud_end):
    """A line-by-line transcription of `_apply_text_audio_interval` (MM-Speech/WavAlign,
    trainer/vita_audio_rl_sft_trainer_clean.py) on one content: text, then one
    <|begin_of_audio|> ... <|end_of_audio|> block. Kept apart from wavalign's own code."""
    text_nums = list(ratio[::2])
    audio_nums = [x - 2 for x in ratio[1::2]]  # the counts include the two boundaries
    st = [i for i, x in enumerate(content) if x == aud_start]
    ed = [i for i, x in enumerate(content) if x == aud_end]
    if len(st) == 0 and len(ed) == 0:
        return content
    st, ed = st[0], ed[0]
    if st == 0 and ed == len(content) - 1:
        return content
    audio_tokens = content[st + 1:ed]
    text_tokens = content[:st] + content[ed + 1:]
    audio_chunks, text_chunks = [], []
    audio_nums_copy, text_nums_copy = list(audio_nums), list(text_nums)
    while len(audio_tokens) > 0:
        audio_num = audio_nums_copy.pop(0) if len(audio_nums_copy) > 1 else audio_nums_copy[0]
        audio_chunks.append(audio_tokens[:audio_num])
        audio_tokens = audio_tokens[audio_num:]
    while len(text_tokens) > 0:
        text_num = text_nums_copy.pop(0) if len(text_nums_copy) > 1 else text_nums_copy[0]
        text_chunks.append(text_tokens[:text_num])
        text_tokens = text_tokens[text_num:]
    chunk_num = min(len(audio_chunks), len(text_chunks))
    audio_chunks = audio_chunks[:chunk_num - 1] + [sum(audio_chunks[chunk_num - 1:], [])]
    text_chunks = text_chunks[:chunk_num - 1] + [sum(text_chunks[chunk_num - 1:], [])]
    out = []
    for text, audio in zip(text_chunks, audio_chunks):
        out += text + [aud_start] + audio + [aud_end]
    return out


PATTERNS = {"balance": (1, 4, 3, 8, 4, 10), "boost": (1, 10, 4, 10), "small": (2, 4, 3, 5)}


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_gold_layout_equals_the_public_rule_on_many_lengths(pattern):
    ratio = PATTERNS[pattern]
    spec = make_spec(ratio)
    checked = 0
    for n_text in range(0, 23):
        for n_speech in range(0, 61, 1 if n_text < 6 else 7):
            text = [3 + i % 17 for i in range(n_text)]
            speech = [22 + i % 40 for i in range(n_speech)]
            if n_text and not n_speech:
                # The public rule keeps only the first text chunk when the audio block is
                # empty (chunk_num = 0); wavalign keeps the whole text instead.
                assert ratio_layout(text, speech, spec.schedule.unit_pattern(), BEGIN, END) == text
                continue
            if not n_text and not n_speech:
                continue
            expected = public_interval(text + [BEGIN] + speech + [END], list(ratio), BEGIN, END)
            got = spec.layout_response(text, speech)  # also walked through the native state machine
            assert got == expected + [EOS], (n_text, n_speech)
            checked += 1
    assert checked > 300


def test_worked_example_balance():
    spec = make_spec(PATTERNS["balance"])
    text, speech = list(range(3, 13)), list(range(22, 52))
    out = spec.layout_response(text, speech)
    blocks, current = [], []
    for token in out[:-1]:
        current.append(token)
        if token == END:
            blocks.append(current)
            current = []
    shapes = [(sum(1 for t in b if t < 20), sum(1 for t in b if t >= 22)) for b in blocks]
    assert shapes == [(1, 2), (3, 6), (4, 8), (2, 14)]  # the last two speech chunks merged
    assert out[-1] == EOS and len(out) == 10 + 30 + 8 + 1


def _run(spec, tokens, **budgets):
    state = InterleaveState(spec, 1, **budgets)
    sets = [int(state.allowed_set[0])]
    for token in tokens:
        state.advance(torch.tensor([token]))
        sets.append(int(state.allowed_set[0]))
    return state, sets


def test_hand_written_transitions():
    spec = make_spec((2, 4, 3, 5))  # blocks of 2 units, then 3 units repeating
    # chunk 0: 2 text, block of 2 units -> chunk 1 begins with text only
    state, sets = _run(spec, [3, 4, BEGIN, 22, 23, END])
    assert sets == [SET_TEXT, SET_TEXT, SET_TEXT, SET_SPEECH, SET_SPEECH, SET_SPEECH, SET_TEXT_ONLY]
    with pytest.raises(ValueError, match="not allowed"):
        state.advance(torch.tensor([BEGIN]))  # an empty text chunk
    # a short block ends the response (speech ran out): only EOS after it
    state, sets = _run(spec, [3, 4, BEGIN, 22, END])
    assert sets[-1] == SET_EOS_ONLY and int(state.phase[0]) == PHASE_CLOSING
    # a short text chunk (text ran out): the block takes any number of units
    state, sets = _run(spec, [3, BEGIN] + [22] * 9 + [END, EOS])
    assert sets[-2] == SET_EOS_ONLY and state.finish_reasons() == ["eos"]
    # a text chunk past its quota: the block is capped at its quota, then end_audio only
    state, sets = _run(spec, [3, 4, 5, BEGIN, 22, 23])
    assert sets[-1] == SET_END_AUDIO_ONLY
    with pytest.raises(ValueError, match="not allowed"):
        state.advance(torch.tensor([24]))
    # speech only, and text only
    assert _run(spec, [BEGIN] + [22] * 12 + [END, EOS])[0].finish_reasons() == ["eos"]
    assert _run(spec, [3] * 15 + [EOS])[0].finish_reasons() == ["eos"]
    # the text budget forces the block open, and that block is the last
    state, sets = _run(spec, [3], max_text=1)
    assert allowed_mask(spec, sets[-1]).nonzero().flatten().tolist() == [BEGIN]


def _pattern_walk(spec, n_rows, steps, seed, budgets):
    """Drive native and twin with the same legal ids. Rows mostly follow the pattern (so
    they reach later pairs), sometimes leave it (short or long chunks and blocks, EOS)."""
    g = torch.Generator().manual_seed(seed)
    native = InterleaveState(spec, n_rows, **budgets)
    rows = [RowState() for _ in range(n_rows)]
    masks = [allowed_mask(spec, s) for s in range(N_ALLOWED_SETS)]
    pairs = spec.schedule.unit_pattern()
    limits = [budgets.get(k, -1) for k in ("max_text", "max_speech", "max_total")]
    for _ in range(steps):
        ids = []
        for row, allowed in zip(rows, native.allowed_set.tolist()):
            legal = torch.nonzero(masks[allowed]).flatten()
            text_quota, unit_quota = pairs[min(row.chunk_index, len(pairs) - 1)]
            quota = text_quota if row.phase == 0 else unit_quota
            follow = (BEGIN if row.phase == 0 else END) if row.chunk_count >= quota else (
                3 + row.chunk_count % 17 if row.phase == 0 else 22 + row.chunk_count % 40)
            pick = follow if torch.rand((), generator=g) < 0.85 and bool(masks[allowed][follow]) else int(
                legal[torch.randint(len(legal), (1,), generator=g)])
            ids.append(pick if len(legal) else EOS)
        native.advance(torch.tensor(ids))
        expected = [reference_step(spec, row, token, *limits) for row, token in zip(rows, ids)]
        assert native.allowed_set.tolist() == expected
        for name in ("phase", "chunk_count", "chunk_index", "text_done", "text_count", "speech_count",
                     "finish_reason"):
            assert native.state[name].tolist() == [int(getattr(r, name)) for r in rows], name
    return native


@pytest.mark.parametrize("boundaries", [True, False])
@pytest.mark.parametrize("budgets", [{}, dict(max_text=9, max_speech=30), dict(max_total=40), dict(max_text=0)])
def test_native_matches_twin_on_pattern_walks(boundaries, budgets):
    spec = make_spec(PATTERNS["balance"], boundaries)
    native = _pattern_walk(spec, n_rows=48, steps=90, seed=len(budgets) + boundaries, budgets=budgets)
    if not budgets:  # the walk reached the repeating last pair and every way of leaving the pattern
        assert int(native.state["chunk_index"].max()) >= 3
        assert set(native.state["text_done"].tolist()) >= {0, 1, 2}


def test_schedule_validation():
    with pytest.raises(ValueError, match="even-length"):
        Schedule.ratio([1, 4, 3])
    with pytest.raises(ValueError, match=r"pattern\[1\] \(speech\) must be >= 3"):
        Schedule.ratio([1, 2])
    with pytest.raises(ValueError, match=r"pattern\[0\] \(text\) must be >= 1"):
        Schedule.ratio([0, 4])
    assert Schedule("ratio", pattern="1 4 3 8 4 10").pattern == (1, 4, 3, 8, 4, 10)  # the launch script's string
    assert Schedule.ratio([1, 4], boundaries=False).unit_pattern() == ((1, 4),)
    with pytest.raises(ValueError, match="only to kind 'ratio'"):
        Schedule("sequential", pattern=(1, 4))
    with pytest.raises(ValueError, match="needs both ids"):
        make_spec((1, 4), begin_audio=None)


@pytest.mark.parametrize("name,pattern", [("vita_audio_balance", (1, 4, 3, 8, 4, 10)),
                                          ("vita_audio_boost", (1, 10, 4, 10))])
def test_vita_audio_presets(name, pattern, tmp_path):
    spec = load_preset(name)
    assert spec.vocab_size == 168072 and spec.schedule.kind == "ratio" and spec.schedule.pattern == pattern
    assert spec.schedule.boundaries is True
    spec.to_yaml(tmp_path / "spec.yaml")  # round trip through YAML keeps the schedule
    assert ModalitySpec.from_yaml(tmp_path / "spec.yaml") == spec
    lo = spec.speech_ranges[0][0]
    out = spec.layout_response(list(range(100, 130)), list(range(lo, lo + 70)))
    assert out[-1] == spec.eos and out.count(spec.begin_audio) == out.count(spec.end_audio) >= 2


def test_glm4_voice_preset():
    spec = load_preset("glm4_voice")
    assert spec.schedule == Schedule.chunked(13, 26)


def test_logits_processor_enforces_the_ratio_schedule():
    transformers = pytest.importorskip("transformers")
    from wavalign.rollout.hf import InterleaveLogitsProcessor

    spec = make_spec((2, 4, 3, 5))
    config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    prompt = torch.tensor([[3, 4, 5, 6]] * 6)
    processor = InterleaveLogitsProcessor(spec, prompt_length=prompt.shape[1], max_total=60)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=60,
                         logits_processor=transformers.LogitsProcessorList([processor]), pad_token_id=0,
                         eos_token_id=EOS, top_k=0)
    for row in out[:, prompt.shape[1]:].tolist():
        state = RowState()
        for token in row:
            if state.finish_reason:
                break
            reference_step(spec, state, token, max_total=60)  # raises on any id the schedule forbids
