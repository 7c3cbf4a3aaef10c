"""The built-in world's speech, no built world needed: task splits and speaking styles, synthesis,
audio features (pitch, mel, vocoder) and the unit tokenizer."""

import math

import pytest
import torch

from wavalign.world import audio, tasks
from wavalign.world.espeak import synthesize
from wavalign.world.style_meter import measure
from wavalign.world.units import UnitTokenizer


def test_splits_are_deterministic_and_disjoint():
    a = tasks.make_splits(3, 0.1, 0.2)
    assert a == tasks.make_splits(3, 0.1, 0.2)
    assert [e.split for e in a] != [e.split for e in tasks.make_splits(4, 0.1, 0.2)]
    train = {(e.question, e.style) for e in a if e.split == "train"}
    held_out = [(e.question, e.style) for e in a if e.split != "train"]
    assert held_out and not train.intersection(held_out)
    assert len({e.id for e in a}) == len(a)
    assert all(e.response.split()[-1] == e.answer for e in a)


def test_split_arguments_are_checked():
    with pytest.raises(ValueError, match="sum below 1"):
        tasks.make_splits(0, 0.5, 0.6)
    with pytest.raises(ValueError, match="unknown styles"):
        tasks.make_splits(0, 0.1, 0.1, styles=("neutral", "angry"))


def test_styles_differ_in_pitch_rate_energy_and_voicing():
    sentence = "the capital of france is paris"
    m = {style: measure(synthesize(sentence, voice), sentence) for style, voice in tasks.STYLES.items()}
    pitch, voiced, loud, slow = 0, 1, 2, 3
    assert len(tasks.STYLES) >= 4
    assert m["excited"][pitch] > m["cheerful"][pitch] > m["neutral"][pitch] > m["sad"][pitch]
    assert m["whisper"][voiced] < 0.1 < 0.4 < m["neutral"][voiced]
    assert m["excited"][loud] > m["neutral"][loud] > m["sad"][loud]
    assert m["sad"][slow] > m["neutral"][slow] > m["excited"][slow]


def test_synthesize_rejects_empty_text():
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ")


def _tone(hz, seconds=1.0, amplitude=0.3):
    t = torch.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    return amplitude * torch.sin(2 * math.pi * hz * t)


def test_pitch_of_a_tone_and_of_noise():
    frames = audio.analyze(_tone(150.0))
    assert frames.voiced[2:-2].all()
    assert torch.allclose(frames.f0[2:-2], torch.tensor(150.0), rtol=0.02)
    noise = audio.analyze(0.3 * torch.randn(audio.SAMPLE_RATE, generator=torch.Generator().manual_seed(0)))
    assert noise.voiced.float().mean() < 0.1


def test_mel_energy_sits_in_the_tone_band():
    frames = audio.analyze(_tone(1000.0))
    band = int(frames.log_mel[5].argmax())
    centres = audio._mel_to_hz(torch.linspace(float(audio._hz_to_mel(audio.F_MIN)),
                                              float(audio._hz_to_mel(audio.F_MAX)), audio.N_MELS + 2)[1:-1].numpy())
    assert abs(centres[band] - 1000.0) < 150.0
    assert len(frames) == audio.SAMPLE_RATE // audio.HOP + 1


def test_vocoder_keeps_pitch_voicing_and_level():
    frames = audio.analyze(synthesize("three plus four is seven", tasks.STYLES["cheerful"]))
    again = audio.analyze(audio.vocode(frames.log_mel, frames.f0, frames.voiced.float()))
    assert abs(float(again.f0[again.voiced].median()) - float(frames.f0[frames.voiced].median())) < 10.0
    assert abs(float(again.voiced.float().mean()) - float(frames.voiced.float().mean())) < 0.1
    assert abs(float(again.energy_db.max()) - float(frames.energy_db.max())) < 3.0


def test_analyze_rejects_bad_waves():
    with pytest.raises(ValueError, match="1-D"):
        audio.analyze(torch.zeros(2, 100))
    with pytest.raises(TypeError, match="float"):
        audio.analyze(torch.zeros(100, dtype=torch.int16))
    with pytest.raises(ValueError, match="NaN"):
        audio.analyze(torch.full((2000,), float("nan")))


@pytest.fixture(scope="module")
def small_units():
    waves = [synthesize(s, v) for s in ("one plus one is two", "a cow says moo") for v in tasks.STYLES.values()]
    return UnitTokenizer.fit([audio.analyze(w) for w in waves], 32, seed=0), waves


def test_units_round_trip_and_files(small_units, tmp_path):
    units, waves = small_units
    ids = units.encode(waves[0])
    assert ids.dtype == torch.int64 and ids.min() >= 0 and ids.max() < 32
    assert len(ids) == len(waves[0]) // audio.HOP + 1  # one unit per 40 ms frame
    wave = units.decode(ids)
    assert wave.shape == ((len(ids) - 1) * audio.HOP,) and torch.isfinite(wave).all()
    units.save(tmp_path / "u.safetensors")
    again = UnitTokenizer.load(tmp_path / "u.safetensors")
    assert torch.equal(again.encode(waves[3]), units.encode(waves[3]))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        units.decode([0, 32])
    with pytest.raises(FileNotFoundError):
        UnitTokenizer.load(tmp_path / "missing.safetensors")


def test_unit_learning_is_deterministic(small_units):
    _, waves = small_units
    frames = [audio.analyze(w) for w in waves]
    a = UnitTokenizer.fit(frames, 16, seed=1)
    b = UnitTokenizer.fit(frames, 16, seed=1)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.unit_f0, b.unit_f0)
    with pytest.raises(ValueError, match="at least"):
        UnitTokenizer.fit(frames[:1], 10_000, seed=0)
