"""Rollouts of interleaved text/speech responses: batched, prefix-shared, schedule-constrained."""

from wavalign.rollout.engine import ModalitySampling, Rollout, RolloutEngine, SamplingParams
from wavalign.rollout.interleave import InterleaveState

__all__ = ["InterleaveState", "ModalitySampling", "Rollout", "RolloutEngine", "SamplingParams", "make_sampler"]


def make_sampler(backend: str, model, spec, *, pad_id=None, adapter=None, kv_cache: str = "auto",
                 cuda_graphs: bool = False):
    """The rollout backend `rollout.backend` names: "engine" (RolloutEngine) or "hf_generate"
    (HFGenerateRollout, the model's own generate()). Both have .generate(prompts, n, params,
    first_row=, extras=) -> Rollout. kv_cache (auto | static | dynamic) and cuda_graphs are the
    engine's (rollout.kv_cache, rollout.cuda_graphs)."""
    if kv_cache not in ("auto", "static", "dynamic"):
        raise ValueError(f"kv_cache must be 'auto', 'static' or 'dynamic', got {kv_cache!r}")
    if backend == "engine":
        return RolloutEngine(model, spec, pad_id=pad_id, adapter=adapter, cuda_graphs=cuda_graphs,
                             static_cache=None if kv_cache == "auto" else kv_cache == "static")
    if backend == "hf_generate":
        from wavalign.rollout.hf_generate import HFGenerateRollout

        if cuda_graphs:
            raise ValueError("cuda_graphs is an option of the engine backend, not hf_generate")
        return HFGenerateRollout(model, spec, pad_id=pad_id, adapter=adapter)
    raise ValueError(f"rollout.backend must be 'engine' or 'hf_generate', got {backend!r}")
