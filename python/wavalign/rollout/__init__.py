"""Rollouts of interleaved text/speech responses: batched, prefix-shared, schedule-constrained."""

from wavalign.rollout.engine import ModalitySampling, Rollout, RolloutEngine, SamplingParams
from wavalign.rollout.interleave import InterleaveState

__all__ = ["InterleaveState", "ModalitySampling", "Rollout", "RolloutEngine", "SamplingParams"]
