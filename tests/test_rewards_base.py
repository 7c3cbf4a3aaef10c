"""RewardFn convention and CompositeReward: None stays None, nothing is invented."""

import math

import pytest
import torch

from wavalign import ops
from wavalign.rewards import CompositeReward, Completion, score_batch

COMPLETIONS = [Completion(text="four"), Completion(text="five"), Completion(text="")]
PROMPTS = ["2+2?", "2+3?", "1+1?"]


def semantic(prompts, completions, answer, **_):
    return [None if not c.text else (5.0 if c.text == a else 1.0) for c, a in zip(completions, answer)]


def acoustic(prompts, completions, **_):
    return [3.0, None, 2.0]


def test_plain_function_scores_with_columns_and_none():
    scores = score_batch(semantic, PROMPTS, COMPLETIONS, answer=["four", "six", "two"])
    assert scores[:2].tolist() == [5.0, 1.0] and math.isnan(scores[2])
    stats = ops.group_stats(scores.reshape(1, 3))
    assert stats.valid_count.tolist() == [2]  # the failed score is excluded, not zeroed


def test_composite_drop_and_renormalize():
    columns = dict(answer=["four", "five", "two"])
    drop = CompositeReward({"semantic": (semantic, 1.0), "acoustic": (acoustic, 0.5)}, missing="drop")
    # row 0: 5 + 0.5*3; row 1: acoustic missing -> None; row 2: semantic missing -> None
    assert drop(PROMPTS, COMPLETIONS, **columns) == [6.5, None, None]
    result = drop.score(PROMPTS, COMPLETIONS, **columns)  # the same, as data
    assert result.names == ("semantic", "acoustic") and result.components.shape == (3, 2)
    assert result.missing == {"semantic": 1, "acoustic": 1, "composite": 2}
    assert result.total[0] == 6.5 and torch.isnan(result.total[1:]).all() and result.to_list() == [6.5, None, None]
    renorm = CompositeReward({"semantic": (semantic, 1.0), "acoustic": (acoustic, 0.5)}, missing="renormalize")
    out = renorm(PROMPTS, COMPLETIONS, **columns)
    # row 1: only semantic (5) present: 5 * 1.0 * (1.5 / 1.0); row 2: only acoustic: 2 * 0.5 * (1.5 / 0.5)
    assert out == pytest.approx([6.5, 7.5, 3.0])
    result = renorm.score(PROMPTS, COMPLETIONS, **columns)
    assert torch.equal(result.component("semantic")[:2], torch.tensor([5.0, 5.0]))
    assert torch.equal(result.as_dict()["acoustic"][[0, 2]], torch.tensor([3.0, 2.0]))


def test_composite_all_missing_stays_none():
    never = CompositeReward({"a": (lambda p, c, **k: [None] * len(c), 1.0)}, missing="renormalize")
    assert never(PROMPTS, COMPLETIONS) == [None, None, None]


def test_bad_reward_functions_raise_naming_them():
    def short(prompts, completions, **_):
        return [1.0]

    def text_score(prompts, completions, **_):
        return ["5"] * len(completions)

    def infinite(prompts, completions, **_):
        return [float("inf")] * len(completions)

    with pytest.raises(ValueError, match="reward short returned 1 scores for 3 completions"):
        score_batch(short, PROMPTS, COMPLETIONS)
    with pytest.raises(TypeError, match="reward text_score returned '5' at position 0"):
        score_batch(text_score, PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="reward infinite returned inf at position 0; use None"):
        score_batch(infinite, PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="missing must be one of"):
        CompositeReward({"a": (short, 1.0)}, missing="zero")
    with pytest.raises(ValueError, match="needs a finite weight > 0"):
        CompositeReward({"a": (short, 0.0)})
