"""The native ops as torch.library custom ops: ``torch.ops.wavalign.*``.

Importing this module registers three ops, each with a fake (meta) implementation, so
torch.compile (``fullgraph=True``), FakeTensor tracing, ``torch.export`` and CUDA-graph
capture can include them instead of breaking the graph at an opaque pybind11 call:

    wavalign::sample_tokens(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p,
        Tensor min_p, Tensor repetition_penalty, Tensor presence_penalty,
        Tensor frequency_penalty, Tensor? history, Tensor? allowed_ranges, SymInt seed,
        Tensor offsets) -> (Tensor ids, Tensor logprobs, Tensor raw_logprobs, Tensor status)
    wavalign::interleave_advance(SymInt schedule, SymInt text_chunk, SymInt speech_chunk,
        Tensor? ratio_pattern, Tensor id_modality, SymInt eos, SymInt begin_audio,
        SymInt end_audio, SymInt end_text, Tensor? sampled, Tensor max_text,
        Tensor max_speech, Tensor max_total, Tensor(a13!) phase, Tensor(a14!) chunk_count,
        Tensor(a15!) chunk_index, Tensor(a16!) text_count, Tensor(a17!) speech_count,
        Tensor(a18!) text_done, Tensor(a19!) finish_reason) -> (Tensor allowed_set, Tensor status)
    wavalign::group_stats(Tensor rewards, SymInt mode, bool sample_std, float eps)
        -> (valid_count, mean, std, variance, max, min, zero_variance, all_missing, advantages)

(``SCHEMAS`` holds the registered schema strings.) Contracts are the eager ones in
:mod:`wavalign._ops` / cpp/include/wavalign/*.h, with one difference: the ops never raise
on a bad ROW (a captured graph cannot raise per row). They return a status vector instead
and the caller checks it eagerly, outside the graph: :func:`raise_for_sample_status` and
:func:`raise_for_interleave_status` raise the same errors :func:`wavalign.ops.sample_tokens`
and ``InterleaveState.advance`` raise. Bad ARGUMENTS (dtype, shape, device, layout) still
raise when the op runs, as the bindings check them.

Notes:
  * sample_tokens: per-row parameters are [N] tensors, float32 except top_k (int64)
    (``wavalign.ops.SAMPLING_PARAMS``); history [N, H] int64 or None; allowed_ranges
    [N, R, 2] int64 or None; offsets [N] int64. ``seed`` is an int64: the native uint64
    seed's two's-complement view (:func:`seed_as_int64`; seeds below 2**63 are unchanged).
    A captured CUDA graph bakes the seed in, so vary ``offsets`` (a tensor) between
    replays. On CUDA the op uses an [N, V] float32 workspace cached per (device, stream)
    (_ops.release_sampling_workspace); during graph capture it allocates its own from the
    graph's pool, so a captured graph never shares or loses it.
  * interleave_advance: the seven state tensors are mutated in place (declared in the
    schema); rejected rows (status != 0) keep their state.
  * group_stats: ``mode`` is 0 grpo, 1 dr_grpo, 2 rloo; zero_variance / all_missing are bool.
  * No op has a derivative: their outputs never require grad, also when logits or rewards
    do (a compiled graph then still traces).
"""

from __future__ import annotations

from typing import Optional

import torch

from wavalign import _ops
from wavalign.sampling_params import SAMPLING_FIELD_NAMES

_UINT64 = 2**64


def seed_as_int64(seed: int) -> int:
    """The int64 the op takes for a native seed in [0, 2**64) (two's complement)."""
    seed = _ops.exact_int(seed, "seed", 0, _UINT64 - 1, integral_floats=False)
    return seed - _UINT64 if seed >= 2**63 else seed


# ---- wavalign::sample_tokens


@torch.library.custom_op("wavalign::sample_tokens", mutates_args=())
def _sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    repetition_penalty: torch.Tensor,
    presence_penalty: torch.Tensor,
    frequency_penalty: torch.Tensor,
    history: Optional[torch.Tensor],
    allowed_ranges: Optional[torch.Tensor],
    seed: int,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # detach: DLPack refuses tensors that require grad (the op has no derivative)
    params = tuple(p.detach() for p in (temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
                                        frequency_penalty))
    return _ops.sample_tokens_status(logits.detach(), params, history, allowed_ranges, int(seed) % _UINT64,
                                     offsets)


@_sample_tokens.register_fake
def _(logits, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty,
      history, allowed_ranges, seed, offsets):
    torch._check(logits.dim() == 2, lambda: f"logits must have shape [N, V], got {list(logits.shape)}")
    n = logits.shape[0]
    return (logits.new_empty(n, dtype=torch.int64), logits.new_empty(n, dtype=torch.float32),
            logits.new_empty(n, dtype=torch.float32), logits.new_empty(n, dtype=torch.int32))


# ---- wavalign::interleave_advance


@torch.library.custom_op(
    "wavalign::interleave_advance",
    mutates_args=_ops.INTERLEAVE_STATE_NAMES,
)
def _interleave_advance(
    schedule: int,
    text_chunk: int,
    speech_chunk: int,
    ratio_pattern: Optional[torch.Tensor],
    id_modality: torch.Tensor,
    eos: int,
    begin_audio: int,
    end_audio: int,
    end_text: int,
    sampled: Optional[torch.Tensor],
    max_text: torch.Tensor,
    max_speech: torch.Tensor,
    max_total: torch.Tensor,
    phase: torch.Tensor,
    chunk_count: torch.Tensor,
    chunk_index: torch.Tensor,
    text_count: torch.Tensor,
    speech_count: torch.Tensor,
    text_done: torch.Tensor,
    finish_reason: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _ops.interleave_advance_status(
        int(schedule), int(text_chunk), int(speech_chunk), ratio_pattern, id_modality, int(eos), int(begin_audio),
        int(end_audio), int(end_text), sampled, max_text, max_speech, max_total, phase, chunk_count, chunk_index,
        text_count, speech_count, text_done, finish_reason,
    )


@_interleave_advance.register_fake
def _(schedule, text_chunk, speech_chunk, ratio_pattern, id_modality, eos, begin_audio, end_audio, end_text,
      sampled, max_text, max_speech, max_total, phase, chunk_count, chunk_index, text_count, speech_count,
      text_done, finish_reason):
    torch._check(phase.dim() == 1, lambda: f"phase must have shape [N], got {list(phase.shape)}")
    n = phase.shape[0]
    return phase.new_empty(n, dtype=torch.int32), phase.new_empty(n, dtype=torch.int32)


# ---- wavalign::group_stats

GROUP_STATS_FIELDS = ("valid_count", "mean", "std", "variance", "max", "min", "zero_variance", "all_missing",
                      "advantages")


@torch.library.custom_op("wavalign::group_stats", mutates_args=())
def _group_stats(
    rewards: torch.Tensor, mode: int, sample_std: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    out = _ops.group_stats_native(rewards.detach(), int(mode), bool(sample_std), float(eps))
    out["zero_variance"] = out["zero_variance"].bool()
    out["all_missing"] = out["all_missing"].bool()
    return tuple(out[name] for name in GROUP_STATS_FIELDS)


@_group_stats.register_fake
def _(rewards, mode, sample_std, eps):
    torch._check(rewards.dim() == 2, lambda: f"rewards must have shape [B, G], got {list(rewards.shape)}")
    b = rewards.shape[0]
    per_group = [rewards.new_empty(b, dtype=torch.int32)] + [rewards.new_empty(b, dtype=torch.float32)
                                                            for _ in range(5)]
    flags = [rewards.new_empty(b, dtype=torch.bool) for _ in range(2)]
    return (*per_group, *flags, rewards.new_empty(rewards.shape, dtype=torch.float32))


def _non_differentiable(op, n_inputs: int) -> None:
    """Outputs that never require grad (as the eager ops return them): without this, a
    compiled graph whose logits or rewards require grad would trace a backward through the
    op and fail ("no autograd formula")."""
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output)

    def backward(ctx, *grads):  # never reached: nothing flows back through the op
        return (None,) * n_inputs

    op.register_autograd(backward, setup_context=setup_context)


_non_differentiable(_sample_tokens, 12)
_non_differentiable(_group_stats, 4)

SCHEMAS = {name: str(getattr(torch.ops.wavalign, name).default._schema)
           for name in ("sample_tokens", "interleave_advance", "group_stats")}


# ---- Conveniences: dict-shaped arguments, and the eager status checks.


def sample_tokens(logits: torch.Tensor, params: dict[str, torch.Tensor], history: torch.Tensor | None,
                  allowed_ranges: torch.Tensor | None, seed: int, offsets: torch.Tensor):
    """torch.ops.wavalign.sample_tokens with params as name -> [N] tensor (the
    ModalitySampling fields). Returns (ids, logprobs, raw_logprobs, status); traceable."""
    return torch.ops.wavalign.sample_tokens(logits, *(params[name] for name in SAMPLING_FIELD_NAMES), history,
                                            allowed_ranges, seed, offsets)


def interleave_advance(config: dict, state: dict[str, torch.Tensor], sampled: torch.Tensor | None):
    """torch.ops.wavalign.interleave_advance on an InterleaveState's ``_config`` / ``state``
    dicts: updates the state in place, returns (allowed_set, status); traceable."""
    return torch.ops.wavalign.interleave_advance(
        config["schedule"], config["text_chunk"], config["speech_chunk"], config.get("ratio_pattern"),
        config["id_modality"], config["eos"], config["begin_audio"], config["end_audio"], config["end_text"],
        sampled, state["max_text"], state["max_speech"], state["max_total"],
        *(state[name] for name in _ops.INTERLEAVE_STATE_NAMES),
    )


def group_stats(rewards: torch.Tensor, mode: int, sample_std: bool, eps: float) -> dict[str, torch.Tensor]:
    """torch.ops.wavalign.group_stats as a dict keyed like _ops.group_stats; traceable."""
    return dict(zip(GROUP_STATS_FIELDS, torch.ops.wavalign.group_stats(rewards, mode, sample_std, eps)))


def raise_for_sample_status(status: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    """Eager, outside any graph: raise the ValueError wavalign.ops.sample_tokens raises for
    the first failed row of a wavalign::sample_tokens status vector (it names the row and,
    for parameter errors, the row's values from `params`: name -> [N] tensor). Syncs on CUDA."""
    error = _ops.sample_status_error("sample_tokens", status, params)
    if error is not None:
        raise error


def raise_for_interleave_status(status: torch.Tensor, phase: torch.Tensor, sampled: torch.Tensor | None) -> None:
    """Eager: raise InterleaveState.advance's ValueError for the first rejected row of a
    wavalign::interleave_advance status vector (phase: the state's phase after the step)."""
    error = _ops.interleave_status_error(status, phase, sampled)
    if error is not None:
        raise error


__all__ = ["GROUP_STATS_FIELDS", "SCHEMAS", "group_stats", "interleave_advance", "raise_for_interleave_status",
           "raise_for_sample_status", "sample_tokens", "seed_as_int64"]
