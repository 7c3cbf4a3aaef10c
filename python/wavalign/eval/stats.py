"""Bootstrap confidence intervals: the implementation lives in wavalign.stats (the training CLI
uses it too, and train/ may not import eval/); re-exported here for eval code and users."""

from wavalign.stats import (DEFAULT_RESAMPLES, Interval, mean_ci, paired_difference_ci, seeded_mean_ci,  # noqa: F401
                            win_rate_ci)

__all__ = ["DEFAULT_RESAMPLES", "Interval", "mean_ci", "paired_difference_ci", "seeded_mean_ci", "win_rate_ci"]
