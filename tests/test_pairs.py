"""wavalign.train.pairs: preference pairs (best vs worst, gold vs sampled) and their scores."""

import pytest
import torch

from wavalign.train.pairs import best_vs_worst, gold_vs_sampled, pair_scores


def test_best_vs_worst_respects_gap_and_missing_scores():
    nan = float("nan")
    scores = torch.tensor([[1.0, 4.0, 2.0], [3.0, 3.5, 3.2], [nan, 5.0, nan], [2.0, 5.0, 5.0]])
    pairs, stats = best_vs_worst(scores, min_gap=1.0)
    assert pairs == [(0, 1, 0), (3, 1, 0)]  # ties: the lower sample index wins
    assert stats == {"pairs/built": 2.0, "pairs/too_few_scores": 1.0, "pairs/below_gap": 1.0}


def test_gold_vs_sampled_skips_copies_of_the_gold():
    pairs, stats = gold_vs_sampled([[1, 2], None], [[[1, 2], [1, 3]], [[4]]])
    assert pairs == [(0, 1)] and stats["pairs/identical_to_gold"] == 1 and stats["pairs/no_gold"] == 1


def test_pair_scores():
    comps = {"semantic": torch.tensor([1.0, float("nan")]), "acoustic": torch.tensor([2.0, 3.0])}
    total = pair_scores(comps, torch.tensor([9.0, 9.0]), "sum")
    assert total[0] == 3 and torch.isnan(total[1])
    assert pair_scores(comps, torch.tensor([9.0, 8.0]), "weighted").tolist() == [9, 8]
    assert pair_scores(comps, None, "acoustic").tolist() == [2, 3]
    with pytest.raises(ValueError, match="pair_score"):
        pair_scores(comps, None, "loudness")
