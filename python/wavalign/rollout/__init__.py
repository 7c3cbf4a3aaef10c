"""Rollouts of interleaved text/speech responses (the engine lands with issue 6)."""

from wavalign.rollout.interleave import InterleaveState

__all__ = ["InterleaveState"]
