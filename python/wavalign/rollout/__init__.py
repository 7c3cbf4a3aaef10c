"""Rollouts of interleaved text/speech responses: batched, prefix-shared, schedule-constrained."""

import logging

from wavalign.rollout.engine import ModalitySampling, Rollout, RolloutEngine, SamplingParams
from wavalign.interleave import InterleaveState

__all__ = ["InterleaveState", "ModalitySampling", "Rollout", "RolloutEngine", "SamplingParams", "make_sampler"]

log = logging.getLogger(__name__)
_reported_refusals: set[str] = set()  # make_sampler runs every step; each reason is said once


def make_sampler(backend: str, model, spec, *, pad_id=None, adapter=None, kv_cache: str = "auto",
                 cuda_graphs: bool = False):
    """The rollout backend `rollout.backend` names: "engine" (RolloutEngine) or "hf_generate"
    (HFGenerateRollout, the model's own generate()). Both have .generate(prompts, n, params,
    first_row=, extras=) -> Rollout. kv_cache (auto | static | dynamic) and cuda_graphs are the
    engine's (rollout.kv_cache, rollout.cuda_graphs)."""
    if kv_cache not in ("auto", "static", "dynamic"):
        raise ValueError(f"kv_cache must be 'auto', 'static' or 'dynamic', got {kv_cache!r}")
    if backend == "engine":
        engine = RolloutEngine(model, spec, pad_id=pad_id, adapter=adapter, cuda_graphs=cuda_graphs,
                               static_cache=None if kv_cache == "auto" else kv_cache == "static")
        refusal = engine.static_cache_refusal
        if kv_cache == "auto" and refusal is not None and refusal not in _reported_refusals:
            # not an error (the dynamic cache gives the same tokens), but slower, so say so once
            _reported_refusals.add(refusal)
            log.warning("rollout.kv_cache=auto: the static KV cache cannot run this model (%s); rollouts use "
                        "transformers' dynamic cache (set rollout.kv_cache: dynamic to say so)", refusal)
        return engine
    if backend == "hf_generate":
        from wavalign.rollout.hf_generate import HFGenerateRollout

        if cuda_graphs:
            raise ValueError("cuda_graphs is an option of the engine backend, not hf_generate")
        return HFGenerateRollout(model, spec, pad_id=pad_id, adapter=adapter)
    raise ValueError(f"rollout.backend must be 'engine' or 'hf_generate', got {backend!r}")
