"""Rewards: the RewardFn convention, composition, and (later) audio judge clients."""

from wavalign.rewards.base import CompositeReward, Completion, RewardFn, score_batch

__all__ = ["CompositeReward", "Completion", "RewardFn", "score_batch"]
