"""Pure-PyTorch twins of every native op: the tests' oracle, never a runtime fallback."""

from wavalign.reference.dtw import reference_dtw_nearest
from wavalign.reference.group_stats import reference_group_stats
from wavalign.reference.philox import philox_uniform
from wavalign.reference.sampling import processed_distribution, reference_sample_tokens

__all__ = [
    "reference_dtw_nearest",
    "philox_uniform",
    "processed_distribution",
    "reference_group_stats",
    "reference_sample_tokens",
]
