"""Rollouts of interleaved text/speech responses: batched, prefix-shared, schedule-constrained."""

from wavalign.rollout.engine import ModalitySampling, Rollout, RolloutEngine, SamplingParams
from wavalign.rollout.interleave import InterleaveState

__all__ = ["InterleaveState", "ModalitySampling", "Rollout", "RolloutEngine", "SamplingParams", "make_sampler"]


def make_sampler(backend: str, model, spec, *, pad_id=None, adapter=None):
    """The rollout backend `rollout.backend` names: "engine" (RolloutEngine) or "hf_generate"
    (HFGenerateRollout, the model's own generate()). Both have .generate(prompts, n, params,
    first_row=, extras=) -> Rollout."""
    if backend == "engine":
        return RolloutEngine(model, spec, pad_id=pad_id, adapter=adapter)
    if backend == "hf_generate":
        from wavalign.rollout.hf_generate import HFGenerateRollout

        return HFGenerateRollout(model, spec, pad_id=pad_id, adapter=adapter)
    raise ValueError(f"rollout.backend must be 'engine' or 'hf_generate', got {backend!r}")
