"""The built world (fast variant): files, tokenizer, gold round trip, policy, CLI."""

import hashlib
import json
import os
import subprocess
import sys
import wave

import pytest
import torch

from wavalign.modality import ModalitySpec, Schedule
from wavalign.world import World, WorldConfig, build_world
from wavalign.world.policy import ChatFormat, audio_token, train_tokenizer

FAST = WorldConfig.fast()


def test_build_layout_and_cache_key(fast_world, world_cache):
    path = fast_world.path
    assert path == world_cache / "world" / FAST.digest()
    for name in ("world.json", "config.yaml", "report.json", "units.safetensors", "recognizer.safetensors",
                 "style_meter.json", "policy/config.json", "policy/model.safetensors", "policy/tokenizer.json",
                 "policy/modality.yaml", "data/train.jsonl", "data/dev.jsonl", "data/test.jsonl"):
        assert (path / name).is_file(), name
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".building")]
    assert build_world(FAST, progress=False) == path  # cached: same directory, no rebuild


def test_data_records_are_consistent(fast_world):
    fmt = fast_world.format
    train_prompts = {e["prompt_text"] for e in fast_world.examples("train")}
    for split in ("dev", "test"):
        assert not train_prompts & {e["prompt_text"] for e in fast_world.examples(split)}
    for record in fast_world.examples("test"):
        text, units = fmt.split(record["response_ids"])
        assert text == record["response_text"] and units == record["response_units"]
        # speech is dense: many more speech units than text tokens
        assert len(record["response_units"]) > 3 * len(fmt.text_ids(record["response_text"]))
        assert record["prompt_ids"] == fmt.prompt_ids(record["prompt_text"])


def test_tokenizer_loads_offline_like_a_real_model(fast_world):
    code = (
        "import sys; from transformers import AutoTokenizer, AutoModelForCausalLM\n"
        "from wavalign.modality import ModalitySpec\n"
        f"t = AutoTokenizer.from_pretrained({str(fast_world.policy_path)!r})\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(fast_world.policy_path)!r})\n"
        "s = ModalitySpec.from_tokenizer(t)\n"
        "ids = t('what is two plus two', add_special_tokens=False).input_ids\n"
        "print(t.decode(ids), '|', t.convert_tokens_to_ids('<|audio_5|>') - t.convert_tokens_to_ids('<|audio_0|>'),"
        " '|', s.speech_ranges, '|', m.get_input_embeddings().num_embeddings == len(t))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    decoded, offset, ranges, sized = out.stdout.strip().split(" | ")
    assert decoded == "what is two plus two" and offset == "5" and sized == "True"
    assert ranges == str(fast_world.spec.speech_ranges)


def test_tokenizer_round_trips_every_world_text(fast_world):
    tok = fast_world.tokenizer
    for record in fast_world.examples("train") + fast_world.examples("test"):
        for text in (record["prompt_text"], record["response_text"]):
            ids = tok(text, add_special_tokens=False).input_ids
            assert tok.unk_token_id not in ids and tok.decode(ids) == text


def test_chunked_schedule_gold_layout():
    texts = ["three plus four is seven", "answer in a calm voice. what is three plus four?"]
    tok = train_tokenizer(texts * 5, 60, 16)
    from wavalign.world.policy import modality_spec

    spec = modality_spec(tok, Schedule.chunked(text=2, speech=3))
    fmt = ChatFormat(tok, spec)
    units = list(range(10))
    ids = fmt.response_ids("three plus four is seven", units)
    types = spec.token_types(torch.tensor([ids]))[0].tolist()
    # two text ids, three speech, ... until end-of-text, then the remaining speech
    assert types[:5] == [0, 0, 1, 1, 1]
    assert ids[-2:] == [spec.end_audio, spec.eos] and spec.end_text in ids
    assert fmt.split(ids) == ("three plus four is seven", units)
    with pytest.raises(ValueError, match="speech units"):
        fmt.unit_ids([16])


def test_gold_round_trip_accuracy_is_above_the_bar(fast_world):
    gold = fast_world.report["roundtrip_test"]
    assert gold["recognizer_accuracy"] >= 0.9 and gold["style_accuracy"] >= 0.9
    assert fast_world.evaluate_gold("test")["WER"] <= 0.1


def test_judges_on_policy_outputs(fast_world):
    test = fast_world.examples("test")[:6]
    _, channels = fast_world.generate(fast_world.load_policy(), test, n=2, temperature=1.0, seed=3)
    from wavalign.rewards.base import Completion, score_batch

    completions = [Completion(text=t, speech_units=u) for t, u in channels]
    columns = {"answer": [e["answer"] for e in test for _ in range(2)],
               "style": [e["style"] for e in test for _ in range(2)]}
    for judge in fast_world.judges(seed=0).values():
        scores = score_batch(judge, [None] * 12, completions, **columns)
        assert scores.shape == (12,) and ((scores >= 1) & (scores <= 5)).all()


def test_batched_listening_equals_one_at_a_time(fast_world):
    """WorldScorer.assess_many (threads + one batched DTW call) gives each response exactly what
    assess() gives it alone, including silent responses, duplicates and mumbling."""
    from wavalign.world.metrics import WorldScorer

    test = fast_world.examples("test")[:8]
    _, channels = fast_world.generate(fast_world.load_policy(), test, n=3, temperature=1.2, seed=5)
    items = [(text, units, test[row // 3]["answer"], test[row // 3]["style"])
             for row, (text, units) in enumerate(channels)]
    items += [("", [], test[0]["answer"], test[0]["style"]), items[0],
              (test[1]["response_text"], test[1]["response_units"], test[1]["answer"], test[1]["style"])]
    base = fast_world.scorer

    def fresh():
        return WorldScorer(base.units, base.recognizer, base.meter)

    batched = fresh().assess_many(items)
    alone = [fresh().assess(*item) for item in items]
    assert [a.__dict__ for a in batched] == [a.__dict__ for a in alone]
    assert batched[-1].recognized == test[1]["response_text"] and batched[-3].eq == 1.0


def test_report_has_headroom(fast_world):
    # (the judges' reliability ordering is tested on controlled inputs in test_world_scoring.py;
    # the fast policy is too weak for its outputs to spread the semantic score)
    report = fast_world.report
    assert report["gold_test"]["IQ"] == 100.0
    assert report["base_test_greedy"]["IQ"] < 100.0
    assert report["base_test_greedy"]["EQ"] < report["gold_test"]["EQ"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_rebuild_with_the_same_seed_is_identical(fast_world, tmp_path, monkeypatch):
    monkeypatch.setenv("WAVALIGN_CACHE", str(tmp_path))
    again = build_world(FAST, progress=False)
    for name in ("units.safetensors", "recognizer.safetensors", "style_meter.json", "data/train.jsonl",
                 "data/test.jsonl", "policy/model.safetensors", "policy/tokenizer.json"):
        assert _sha(again / name) == _sha(fast_world.path / name), name


@pytest.mark.slow
def test_cli_build_and_demo(fast_world, world_cache, tmp_path):
    env = {**os.environ, "WAVALIGN_CACHE": str(world_cache), "HF_HUB_OFFLINE": "1"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "wavalign.world", *args], capture_output=True,  # noqa
                                       text=True, env=env, timeout=600)
    built = run("build", "--fast")
    assert built.returncode == 0, built.stderr
    assert str(fast_world.path) in built.stdout and "| base policy, greedy |" in built.stdout
    demo = run("demo", "--fast", "--out", str(tmp_path / "demo"), "-n", "3")
    assert demo.returncode == 0, demo.stderr
    wavs = sorted((tmp_path / "demo").glob("*.wav"))
    assert any("gold_espeak" in p.name for p in wavs) and any("policy" in p.name for p in wavs)
    with wave.open(str(wavs[0])) as handle:
        assert handle.getframerate() == 22_050 and handle.getnframes() > 5_000
    assert "| # | style |" in (tmp_path / "demo" / "table.md").read_text()
    missing = run("demo", "--fast")
    assert missing.returncode == 2 and "--out" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_units: 2\n")
    failed = run("build", "--config", str(bad))
    assert failed.returncode == 2 and "n_units" in failed.stderr


@pytest.mark.slow
def test_rollout_cli_samples_the_world_by_default(fast_world, world_cache, tmp_path):
    env = {**os.environ, "WAVALIGN_CACHE": str(world_cache), "HF_HUB_OFFLINE": "1"}
    out, wavs = tmp_path / "r.jsonl", tmp_path / "wav"
    proc = subprocess.run([sys.executable, "-m", "wavalign.rollout", "--world", "fast", "-n", "2", "--out", str(out),
                           "--wav-dir", str(wavs), "--temperature", "0.8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * len(fast_world.examples("test"))
    with_speech = [r for r in records if len(r["speech_units"]) >= 2]
    assert len(list(wavs.glob("*.wav"))) == len(with_speech) > 0
    assert all(0 <= u < fast_world.config.n_units for r in records for u in r["speech_units"])


def test_judges_hear_a_waveform_as_they_hear_the_units_it_was_decoded_from(fast_world):
    from wavalign.rewards.audio import resample
    from wavalign.rewards.base import Completion
    from wavalign.world.audio import SAMPLE_RATE
    from wavalign.world.judges import ExactScore

    test = fast_world.examples("test")[:4]
    scorer = fast_world.scorer
    columns = {"answer": [e["answer"] for e in test], "style": [e["style"] for e in test],
               "sample_key": [f"0:{i}" for i in range(4)]}
    waves = [scorer.units.decode(e["response_units"]) for e in test]  # each [S] float32 at SAMPLE_RATE
    by_units = [Completion(text=e["response_text"], speech_units=e["response_units"]) for e in test]
    by_audio = [Completion(text=e["response_text"], audio=w, sample_rate=SAMPLE_RATE) for e, w in zip(test, waves)]
    for quantity in ("semantic", "acoustic"):
        exact = ExactScore(scorer, quantity)
        assert exact([None] * 4, by_audio, **columns) == exact([None] * 4, by_units, **columns)
    for name, judge in fast_world.judges(seed=0).items():  # keyed noise: same key, same draw
        assert judge([None] * 4, by_audio, **columns) == judge([None] * 4, by_units, **columns), name

    # The same speech at 16 kHz is resampled to the world's rate and heard as the same words.
    at_16k = [Completion(text=c.text, audio=resample(w, SAMPLE_RATE, 16000).numpy(), sample_rate=16000)
              for c, w in zip(by_audio, waves)]
    heard = [scorer.assess_audio(c.text, c.audio, c.sample_rate, e["answer"], e["style"]).recognized
             for c, e in zip(at_16k, test)]
    assert heard == [scorer.assess(c.text, c.speech_units, e["answer"], e["style"]).recognized
                     for c, e in zip(by_units, test)]

    # Assessments are cached by the waveform's content: same text, silent audio, heard anew.
    silent = [Completion(text=by_audio[0].text, audio=torch.zeros_like(waves[0]), sample_rate=SAMPLE_RATE)]
    semantic = ExactScore(scorer, "semantic")
    one = {k: v[:1] for k, v in columns.items()}
    assert semantic([None], silent, **one) < semantic([None], by_audio[:1], **one)
    with pytest.raises(ValueError, match="audio given without a sample_rate"):
        semantic([None], [Completion(text="x", audio=waves[0])], **one)
