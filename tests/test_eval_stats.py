"""Bootstrap statistics and comparison tables (no model needed)."""

import math

import numpy as np
import pytest

from wavalign.eval.report import compare, comparison_table, jsonable, records_from_json, summarize, summary_table
from wavalign.eval.stats import Interval, mean_ci, paired_difference_ci, seeded_mean_ci, win_rate_ci


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, covered = 300, 0
    for trial in range(trials):
        sample = rng.normal(2.0, 1.0, size=60)
        interval = mean_ci(sample, resamples=400, seed=trial)
        covered += interval.low <= 2.0 <= interval.high
    # percentile bootstrap under-covers slightly at n=60; 300 trials give a binomial sd of ~1.3%
    assert 0.88 <= covered / trials <= 0.99


def test_mean_ci_ignores_nan_and_rejects_inf():
    interval = mean_ci([1.0, math.nan, 3.0, math.nan])
    assert interval.mean == 2.0 and interval.n == 2 and interval.low >= 1.0 and interval.high <= 3.0
    empty = mean_ci([math.nan, math.nan])
    assert math.isnan(empty.mean) and empty.n == 0
    with pytest.raises(ValueError, match="infinite"):
        mean_ci([1.0, math.inf])
    with pytest.raises(ValueError, match="one-dimensional"):
        mean_ci([[1.0, 2.0]])


def test_pairing_resolves_a_shift_that_prompt_variance_hides():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0.0, 5.0, size=100)  # prompts differ far more than the policies
    a = difficulty
    b = difficulty + 0.5 + rng.normal(0.0, 0.1, size=100)
    paired = paired_difference_ci(a, b)
    assert paired.low > 0.4 and paired.high < 0.6
    unpaired_a, unpaired_b = mean_ci(a), mean_ci(b)
    assert unpaired_a.high > unpaired_b.low  # separately, the two intervals overlap
    with pytest.raises(ValueError, match="same length"):
        paired_difference_ci([1.0], [1.0, 2.0])


def test_paired_difference_drops_prompts_missing_on_either_side():
    interval = paired_difference_ci([1.0, math.nan, 2.0], [2.0, 5.0, math.nan])
    assert interval.n == 1 and interval.mean == 1.0


def test_win_rate_counts_ties_as_half():
    interval = win_rate_ci([1, 1, 1, 1], [2, 2, 0, 1])
    assert interval.mean == pytest.approx(100 * (2 + 0.5) / 4) and interval.n == 4
    same = win_rate_ci([3, 1, 2], [3, 1, 2])
    assert same.mean == same.low == same.high == 50.0


def test_seeded_interval_widens_with_seed_variation_and_pairs_with_the_baseline():
    rng = np.random.default_rng(2)
    prompts = rng.normal(0.0, 1.0, size=80)
    calm = np.stack([prompts + 1.0 for _ in range(3)])
    noisy = np.stack([prompts + 1.0 + shift for shift in (-0.6, 0.0, 0.6)])
    calm_change = seeded_mean_ci(calm, baseline=prompts)
    noisy_change = seeded_mean_ci(noisy, baseline=prompts)
    assert calm_change.mean == pytest.approx(1.0) and calm_change.high - calm_change.low < 1e-9
    assert noisy_change.mean == pytest.approx(1.0)
    assert noisy_change.high - noisy_change.low > 0.5  # the seed spread shows up in the interval
    with pytest.raises(ValueError, match="seeds, prompts"):
        seeded_mean_ci([1.0, 2.0])
    with pytest.raises(ValueError, match="baseline has 2 prompts"):
        seeded_mean_ci([[1.0, 2.0, 3.0]], baseline=[1.0, 2.0])


def _records(values, key="IQ", ids=None):
    return [{"id": i if ids is None else ids[i], key: v, "reward": v / 10, "reward/semantic": v / 10}
            for i, v in enumerate(values)]


def test_compare_reports_differences_verdicts_and_win_rates():
    a = _records([0.0, 0.0, 100.0, 0.0] * 25)
    b = _records([100.0, 0.0, 100.0, 0.0] * 25)
    result = compare(a, b, resamples=500)
    diff = result["metrics"]["IQ"]["difference"]
    assert diff.mean == pytest.approx(25.0) and diff.low > 0
    assert result["win_rate"]["reward"].mean == pytest.approx(100 * (25 + 0.5 * 75) / 100)
    table = comparison_table(result, "base", "trained")
    assert "| IQ (% correct) | 25.0 | 50.0 | +25.0" in table and "| B |" in table
    assert "win rate of B over A by composite judge" in table
    with pytest.raises(ValueError, match="different prompts"):
        compare(a, _records([0.0] * 100, ids=list(range(1, 101))))


def test_summary_table_and_json_round_trip():
    records = _records([100.0, 0.0, math.nan, 100.0])
    summary = summarize(records, resamples=200)
    assert summary["IQ"].n == 3 and summary["IQ"].mean == pytest.approx(200 / 3)
    assert "| IQ (% correct) | 66.7 |" in summary_table(summary)
    saved = jsonable({"metrics": summary, "records": records})
    assert saved["records"][2]["IQ"] is None and saved["metrics"]["IQ"]["n"] == 3
    restored = records_from_json(saved["records"])
    assert math.isnan(restored[2]["IQ"]) and restored[0]["IQ"] == 100.0
    assert Interval(math.nan, math.nan, math.nan, 0).format() == "n/a"


def test_nanmean_skips_unscored_entries_and_never_invents_a_value():
    from wavalign.stats import nanmean

    assert nanmean([1.0, float("nan"), 3.0]) == 2.0  # not (1 + 0 + 3) / 3
    assert math.isnan(nanmean([float("nan")])) and math.isnan(nanmean([]))
