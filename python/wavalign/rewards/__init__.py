"""Rewards: the RewardFn convention, composition, and audio judge clients."""

from wavalign.rewards.base import CompositeReward, Completion, RewardFn, score_batch
from wavalign.rewards.http_judge import HttpJudge, JudgeConfig

# OnnxReward lives in wavalign.rewards.onnx_reward (needs the [onnx] extra).

__all__ = ["CompositeReward", "Completion", "HttpJudge", "JudgeConfig", "RewardFn", "score_batch"]
