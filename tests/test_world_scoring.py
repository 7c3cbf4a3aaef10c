"""The built-in world's scoring, no built world needed: word error rate, answers, Spearman, and the
semantic and acoustic judges (1-5 scale, reliability, failures)."""

import math
import random

import pytest

from wavalign.rewards.base import Completion
from wavalign.world.config import JudgeNoise, WorldConfig
from wavalign.world.judges import AcousticJudge, SemanticJudge
from wavalign.world.metrics import Assessment, answer_correct, spearman, word_error_rate


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
