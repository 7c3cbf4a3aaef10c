"""World components that need no built world: tasks, audio features, units, DTW, metrics, judges."""

import math
import random

import pytest
import torch

from wavalign.rewards.base import Completion
from wavalign.world import audio, tasks
from wavalign.world.config import JudgeNoise, WorldConfig
from wavalign.world.espeak import Voice, synthesize
from wavalign.world.judges import AcousticJudge, SemanticJudge
from wavalign.world.metrics import Assessment, answer_correct, spearman, word_error_rate
from wavalign.reference.dtw import reference_dtw_distances
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


def _reference_dtw(query, template):
    """Plain double loop with the same step pattern as the DTW twin."""
    tq, tt = len(query), len(template)
    total = [[math.inf] * tt for _ in range(tq)]
    total[0][0] = float(torch.dist(query[0], template[0]))
    for i in range(1, tq):
        for j in range(tt):
            best = min(total[i - 1][j], total[i - 1][j - 1] if j >= 1 else math.inf,
                       total[i - 1][j - 2] if j >= 2 else math.inf)
            total[i][j] = float(torch.dist(query[i], template[j])) + best
    return total[-1][-1] / tq


def test_dtw_twin_matches_the_plain_loop():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(9, 3, generator=g)
    lengths = torch.tensor([5, 9, 12, 3, 20])
    templates = torch.zeros(5, 20, 3)
    for k, n in enumerate(lengths.tolist()):
        templates[k, :n] = torch.randn(n, 3, generator=g)
    got = reference_dtw_distances(query, templates, lengths)
    want = [_reference_dtw(query, templates[k, :n]) for k, n in enumerate(lengths.tolist())]
    for g_value, w_value in zip(got.tolist(), want):
        assert (math.isinf(g_value) and math.isinf(w_value)) or abs(g_value - w_value) < 1e-4
    assert not math.isinf(want[3])  # the query may dwell on template frames
    assert math.isinf(want[4])  # but may skip at most one frame per step: 20 > 2 * 8 + 1


def test_word_error_rate_and_answers():
    assert word_error_rate("three plus four is seven", "three plus four is seven") == 0.0
    assert word_error_rate("three plus four is seven", "three plus five is seven") == pytest.approx(0.2)
    assert word_error_rate("a b", "") == 1.0
    assert word_error_rate("a b", "a b c d") == 1.0
    assert answer_correct("Three plus four is SEVEN.", "seven")
    assert not answer_correct("three plus four is six", "seven")
    assert not answer_correct("", "seven")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (0.5, 0.5, 2, 3) vs y (0, 1, 2, 3)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman([1, float("nan"), 2], [1, 2, 3]))


class _FixedScorer:
    """Stands in for WorldScorer: returns a preset assessment per answer."""

    def __init__(self, table):
        self.table = table

    def assess(self, text, units, answer, style):
        return self.table[answer]


def _assessment(correct, eq, wer):
    return Assessment(correct, eq, wer, "", {})


def test_judges_score_on_the_1_to_5_scale_and_the_acoustic_one_is_less_reliable():
    rng = random.Random(0)
    table = {str(i): _assessment(rng.random() < 0.5, 1 + 4 * rng.random(), rng.random()) for i in range(400)}
    scorer = _FixedScorer(table)
    config = WorldConfig()
    semantic = SemanticJudge(scorer, config.semantic_judge, seed=0)
    acoustic = AcousticJudge(scorer, config.acoustic_judge, seed=0)
    answers = list(table)
    s = semantic([None] * 400, [Completion()] * 400, answer=answers, style=["neutral"] * 400)
    a = acoustic([None] * 400, [Completion()] * 400, answer=answers, style=["neutral"] * 400)
    assert set(s) <= {1.0, 2.0, 3.0, 4.0, 5.0} and set(a) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    rho_semantic = spearman(s, [table[k].semantic_score for k in answers])
    rho_acoustic = spearman(a, [table[k].eq for k in answers])
    assert rho_semantic > 0.85 and rho_acoustic < 0.75 and rho_semantic - rho_acoustic > 0.15


def test_a_failing_judge_returns_none_and_counts():
    scorer = _FixedScorer({"x": _assessment(True, 5.0, 0.0)})
    judge = SemanticJudge(scorer, JudgeNoise(noise_std=0.0, failure_rate=0.5), seed=1)
    scores = judge([None] * 200, [Completion()] * 200, answer=["x"] * 200, style=["neutral"] * 200)
    missing = sum(v is None for v in scores)
    assert missing == judge.failures and 60 < missing < 140
    assert all(v == 5.0 for v in scores if v is not None)  # noise 0: the exact score, never invented
    assert judge.calls == 200
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        judge([None] * 2, [Completion()] * 2, answer=["x"], style=["neutral"] * 2)


def test_world_config_validation_and_digest(tmp_path):
    assert WorldConfig().digest() == WorldConfig().digest() != WorldConfig(seed=1).digest()
    with pytest.raises(ValueError, match="n_units"):
        WorldConfig(n_units=2)
    with pytest.raises(ValueError, match="failure_rate"):
        JudgeNoise(noise_std=1.0, failure_rate=1.5)
    path = tmp_path / "w.yaml"
    path.write_text("seed: 3\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        WorldConfig.from_yaml(path)
    path.write_text("seed: 3\nacoustic_judge: {noise_std: 2.0}\n")
    config = WorldConfig.from_yaml(path)
    assert config.seed == 3 and config.acoustic_judge == JudgeNoise(noise_std=2.0)


def test_world_preset_matches_the_default_world_tokenizer():
    from wavalign.modality import load_preset
    from wavalign.world.build import world_tokenizer

    _, spec = world_tokenizer(WorldConfig())
    assert load_preset("world") == spec
