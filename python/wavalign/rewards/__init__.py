"""Rewards: the RewardFn convention, composition, and audio judge clients."""

from wavalign.rewards.base import CompositeReward, Completion, RewardFn, RewardResult, needs_audio, required_columns, score_batch
from wavalign.rewards.hf_audio_classifier import HFAudioClassifierReward
from wavalign.rewards.hf_classifier import HFClassifierReward
from wavalign.rewards.http_judge import HttpJudge, JudgeConfig

# OnnxReward lives in wavalign.rewards.onnx_reward (needs the [onnx] extra).
# The HF classifiers import transformers only when constructed.

__all__ = ["CompositeReward", "Completion", "HFAudioClassifierReward", "HFClassifierReward", "HttpJudge",
           "JudgeConfig", "RewardFn", "RewardResult", "needs_audio", "required_columns", "score_batch"]
