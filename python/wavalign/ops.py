"""The native ops, public: the only module that talks to the bindings (wavalign._ops).

``sample_tokens`` draws the next token for many rows at once under per-row sampling
parameters and per-row allowed-id ranges (how text vs speech phases are enforced);
``interleave_advance`` steps the interleave state machine; ``group_stats`` takes group
statistics and advantages. Each is a registered ``torch.library`` custom op (one
registration, below): called eagerly it validates its arguments and raises on a bad row;
inside ``torch.compile`` (``fullgraph=True``), FakeTensor tracing, ``torch.export`` or a CUDA
graph the ``*_status`` forms keep the op in the graph and return a per-row status instead
(a captured graph cannot raise per row), which ``raise_for_sample_status`` /
``raise_for_interleave_status`` turn into the eager errors afterwards. Their exact
pure-PyTorch twins (the tests' oracle) are in the ``reference`` subpackage.

The registered schemas (``SCHEMAS`` holds the strings):

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

Notes on the registered ops:
  * sample_tokens: per-row parameters are [N] tensors, float32 except top_k (int64)
    (``SAMPLING_PARAMS``); history [N, H] int64 or None; allowed_ranges [N, R, 2] int64 or
    None; offsets [N] int64. ``seed`` is an int64: the native uint64 seed's two's-complement
    view (:func:`seed_as_int64`; seeds below 2**63 are unchanged). A captured CUDA graph
    bakes the seed in, so vary ``offsets`` (a tensor) between replays. On CUDA the op uses an
    [N, V] float32 workspace cached per (device, stream) (``release_sampling_workspace``);
    during graph capture it allocates its own from the graph's pool.
  * interleave_advance: the seven state tensors are mutated in place (declared in the
    schema); rejected rows (status != 0) keep their state.
  * group_stats: ``mode`` is 0 grpo, 1 dr_grpo, 2 rloo; zero_variance / all_missing are bool.
  * No op has a derivative: their outputs never require grad, also when logits or rewards
    do (a compiled graph then still traces).
  * Bad ARGUMENTS (dtype, shape, device, layout) raise when the op runs, as the bindings
    check them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from wavalign import _ops
# Argument checks and error texts other rooms share with the ops (the engine's and the
# interleave state's messages, the reference twins'): one source, re-exported from here.
from wavalign._ops import (  # noqa: F401
    INT32, INT64, INTERLEAVE_STATE_NAMES, as_tensor, exact_float32, exact_int, integer_tensor,
    interleave_allowed_mask, interleave_rejection, interleave_status_error, release_sampling_workspace,
    sample_status_detail, sample_status_error,
)
from wavalign.sampling_params import SAMPLING_FIELD_NAMES, SAMPLING_FIELDS, float32_problem

RowParam = Union[float, int, torch.Tensor]

# name -> (dtype of the per-row tensor, value that switches the step off), in native
# argument order; derived from the ModalitySampling schema (wavalign.sampling_params).
SAMPLING_PARAMS: dict[str, tuple[torch.dtype, float]] = {
    f.name: (getattr(torch, f.metadata["dtype"]), f.metadata["off"]) for f in SAMPLING_FIELDS
}

_MAX_SEED = 2**64


# ---------------------------------------------------------------------------- registered ops
_UINT64 = 2**64


def seed_as_int64(seed: int) -> int:
    """The int64 the op takes for a native seed in [0, 2**64) (two's complement)."""
    seed = exact_int(seed, "seed", 0, _UINT64 - 1, integral_floats=False)
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
    mutates_args=INTERLEAVE_STATE_NAMES,
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


# ---- The registered ops with dict-shaped arguments (traceable), and the eager status checks.


def sample_tokens_status(logits: torch.Tensor, params: dict[str, torch.Tensor] | Sequence[torch.Tensor],
                         history: torch.Tensor | None, allowed_ranges: torch.Tensor | None, seed: int,
                         offsets: torch.Tensor):
    """wavalign::sample_tokens without the host-side check (no sync, never raises per row):
    params are the [N] tensors of the ModalitySampling fields, as name -> tensor or in
    SAMPLING_FIELD_NAMES order; seed in [0, 2**64). Returns (ids [N] int64, logprobs [N]
    float32, raw_logprobs [N] float32, status [N] int32; 0 = ok); traceable."""
    values = [params[name] for name in SAMPLING_FIELD_NAMES] if isinstance(params, dict) else list(params)
    return torch.ops.wavalign.sample_tokens(logits, *values, history, allowed_ranges, seed_as_int64(seed), offsets)


def interleave_advance_status(config: dict, state: dict[str, torch.Tensor], sampled: torch.Tensor | None):
    """wavalign::interleave_advance on an InterleaveState's ``_config`` / ``state`` dicts:
    updates the state in place, returns (allowed_set [N] int32, status [N] int32); traceable."""
    return torch.ops.wavalign.interleave_advance(
        config["schedule"], config["text_chunk"], config["speech_chunk"], config.get("ratio_pattern"),
        config["id_modality"], config["eos"], config["begin_audio"], config["end_audio"], config["end_text"],
        sampled, state["max_text"], state["max_speech"], state["max_total"],
        *(state[name] for name in INTERLEAVE_STATE_NAMES),
    )


def interleave_advance(config: dict, state: dict[str, torch.Tensor], sampled: torch.Tensor | None) -> torch.Tensor:
    """interleave_advance_status, then the eager check: raises ValueError naming the first
    rejected row; returns the next allowed set per row [N] int32."""
    allowed, status = interleave_advance_status(config, state, sampled)
    raise_for_interleave_status(status, state["phase"], sampled)
    return allowed


#: group_stats modes and their op codes
ADVANTAGE_MODES = {"grpo": 0, "dr_grpo": 1, "rloo": 2}


def group_stats_unchecked(rewards: torch.Tensor, mode: int, sample_std: bool, eps: float) -> dict[str, torch.Tensor]:
    """wavalign::group_stats as a dict keyed like GroupStats, without group_stats' value
    checks (mode as its code); traceable."""
    return dict(zip(GROUP_STATS_FIELDS, torch.ops.wavalign.group_stats(rewards, mode, sample_std, eps)))


def raise_for_sample_status(status: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    """Eager, outside any graph: raise the ValueError wavalign.ops.sample_tokens raises for
    the first failed row of a wavalign::sample_tokens status vector (it names the row and,
    for parameter errors, the row's values from `params`: name -> [N] tensor). Syncs on CUDA."""
    error = sample_status_error("sample_tokens", status, params)
    if error is not None:
        raise error


def raise_for_interleave_status(status: torch.Tensor, phase: torch.Tensor, sampled: torch.Tensor | None) -> None:
    """Eager: raise InterleaveState.advance's ValueError for the first rejected row of a
    wavalign::interleave_advance status vector (phase: the state's phase after the step)."""
    error = interleave_status_error(status, phase, sampled)
    if error is not None:
        raise error



# ---------------------------------------------------------------------------- the eager, validating API
class SampledTokens(NamedTuple):
    ids: torch.Tensor  # [N] int64
    logprobs: torch.Tensor  # [N] float32, under the processed distribution (0 for greedy)
    raw_logprobs: torch.Tensor  # [N] float32, log_softmax(raw logits) at the sampled id


def _row_param(value: RowParam, name: str, n: int, device: torch.device) -> torch.Tensor:
    dtype, _ = SAMPLING_PARAMS[name]
    if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
        # tensors and arrays keep their dtype (the binding checks dtype, shape [N], device
        # and contiguity); a list's elements are checked to fit the dtype exactly
        return _ops.as_tensor(value, name, dtype, device)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a [N] {dtype} tensor, got {type(value).__name__}")
    if dtype == torch.int64:
        value = _ops.exact_int(value, name, *_ops.INT64)
    else:  # NaN / inf pass: the sampler reports them per row
        value = _ops.exact_float32(value, name)
    return torch.full((n,), value, dtype=dtype, device=device)


def normalize_ranges(
    allowed_ranges: torch.Tensor | Sequence[tuple[int, int]] | None, n: int, device: torch.device
) -> torch.Tensor | None:
    """[R, 2] or a list of (lo, hi) is shared by every row; [N, R, 2] is per row. Lists and
    numpy arrays become int64 exactly (integral floats accepted, nothing rounded)."""
    if allowed_ranges is None:
        return None
    if not isinstance(allowed_ranges, torch.Tensor):
        from_list = not isinstance(allowed_ranges, np.ndarray)
        if from_list and not isinstance(allowed_ranges, (list, tuple)):
            allowed_ranges = list(allowed_ranges)  # any other sequence of pairs
        allowed_ranges = _ops.integer_tensor(
            allowed_ranges, "allowed_ranges", *_ops.INT64, "range bounds must be integers (int64)", device
        ).to(device)
        if from_list and allowed_ranges.dim() != 2:
            raise ValueError("allowed_ranges given as a list must hold (lo, hi) pairs")
    if allowed_ranges.dim() == 2:
        return allowed_ranges.unsqueeze(0).expand(n, -1, -1).contiguous()
    return allowed_ranges


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: RowParam = 1.0,
    top_k: RowParam = 0,
    top_p: RowParam = 1.0,
    min_p: RowParam = 0.0,
    repetition_penalty: RowParam = 1.0,
    presence_penalty: RowParam = 0.0,
    frequency_penalty: RowParam = 0.0,
    history: torch.Tensor | None = None,
    allowed_ranges: torch.Tensor | Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    offsets: torch.Tensor | None = None,
) -> SampledTokens:
    """Sample one token per row. (The seven parameters are the ModalitySampling fields;
    a test keeps this signature and its defaults equal to that schema.)

    Pipeline per row: penalties over ``history`` -> allowed-id mask -> temperature
    (0 = greedy) -> top-k -> top-p -> min-p -> draw. See cpp/include/wavalign/sampling.h.

    Args:
        logits: [N, V] float32, bfloat16 or float16, contiguous (torch or numpy).
        temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
            frequency_penalty: a number for all rows, or a [N] tensor or numpy array
            (float32; top_k int64) or a list of N numbers. Numbers and list elements must
            fit that dtype exactly (int64 range; float32 range, no flush to 0).
            Off values: top_k=0, top_p=1, min_p=0, repetition_penalty=1, penalties 0.
        history: [N, H] int64 token ids the penalties count; -1 is padding.
        allowed_ranges: half-open id ranges [lo, hi): [N, R, 2] int64 per row, or [R, 2] /
            a list of (lo, hi) shared by all rows; lo == hi pads. None allows every id.
        seed: 0 <= seed < 2**64. Row r draws from Philox(seed, offsets[r]).
        offsets: [N] int64 counter per row (default: arange(N)). Give each (sample, step)
            its own offset; the draw then never depends on which rows share the batch.

    Returns:
        SampledTokens(ids [N] int64, logprobs [N] float32, raw_logprobs [N] float32).

    CPU and CUDA (the contract in cpp/include/wavalign/sampling.h): statuses, greedy ids
    (lowest id on ties), the kept sets (top-p's up to a rounding-level tie at its
    boundary) and the Philox uniforms are identical; the processed distribution agrees
    to float32 rounding. A draw whose uniform falls within that rounding of the boundary
    between two adjacent kept ids may return the neighbouring id: about 2e-4 - 1.5e-3 of
    draws when all 168,072 ids of a vocabulary are kept (more for more peaked rows), far
    fewer with top-k/top-p/min-p.
    Logprobs agree to float32 rounding. On CUDA the call uses an [N, V] float32 workspace cached per
    (device, stream) (see wavalign._ops.release_sampling_workspace).

    Raises:
        TypeError / ValueError naming the argument for a wrong dtype, shape, device or
        layout, or a value its dtype cannot hold; ValueError naming the first bad row for
        NaN/+inf logits, an empty allowed set, an allowed set with no finite logit,
        out-of-range ids, invalid parameters, or parameters whose arithmetic overflows
        float32 (a penalised or temperature-scaled logit +inf or NaN).
    """
    arguments = locals()  # the sampling parameters, read below by schema name
    logits = _as_tensor(logits, "logits")  # numpy: zero-copy; results come back as torch tensors
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, V], got {list(logits.shape)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < _MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    n = logits.shape[0]
    device = logits.device
    params = {name: _row_param(arguments[name], name, n, device) for name in SAMPLING_PARAMS}
    if offsets is None:
        offsets = torch.arange(n, dtype=torch.int64, device=device)
    # numpy arrays cross zero-copy (the registered op takes tensors; the binding checks the rest)
    offsets = _as_tensor(offsets, "offsets")
    if history is not None:
        history = _as_tensor(history, "history")
    ranges = normalize_ranges(allowed_ranges, n, device)
    ids, logprobs, raw_logprobs, status = sample_tokens_status(logits.detach(), params, history, ranges, seed,
                                                               offsets)
    raise_for_sample_status(status, params)
    return SampledTokens(ids, logprobs, raw_logprobs)


class GroupStats(NamedTuple):
    """Per-group reward statistics; B groups of G samples. NaN rewards are excluded."""

    advantages: torch.Tensor  # [B, G] float32; 0 for missing rewards and flagged groups
    valid_count: torch.Tensor  # [B] int32
    mean: torch.Tensor  # [B] float32 (NaN when all missing)
    std: torch.Tensor  # [B] float32
    variance: torch.Tensor  # [B] float32
    max: torch.Tensor  # [B] float32
    min: torch.Tensor  # [B] float32
    zero_variance: torch.Tensor  # [B] bool: every valid reward equal -> no preference signal
    all_missing: torch.Tensor  # [B] bool: no valid reward at all

    def summary(self) -> dict[str, float]:
        """Scalars to log each step: missing rewards and flagged groups are counted, not hidden."""
        n_groups = self.valid_count.numel()
        n_samples = self.advantages.numel()
        missing = n_samples - int(self.valid_count.sum())
        zero_variance = int(self.zero_variance.sum())
        return {
            "groups": float(n_groups),
            "missing_rewards": float(missing),
            "missing_reward_fraction": missing / max(n_samples, 1),
            "zero_variance_groups": float(zero_variance),
            "zero_variance_fraction": zero_variance / max(n_groups, 1),
            "all_missing_groups": float(self.all_missing.sum()),
        }


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value


def group_stats(
    rewards: torch.Tensor, *, mode: str = "grpo", std: str = "population", eps: float = 1e-4
) -> GroupStats:
    """Group-relative advantages and statistics (native; twin: reference.group_stats).

    Args:
        rewards: [B, G] float32, one row per prompt, NaN = no reward (a failed judge call).
        mode: "grpo" (r - mean) / (std + eps) | "dr_grpo" r - mean | "rloo" r - mean(others).
        std: "population" (divide by n, the paper's masked trainer) or "sample" (n - 1).
        eps: added to std in "grpo".

    Raises:
        ValueError for +-inf rewards (naming the group and sample), a bad mode/std/eps, a
        wrong shape; TypeError for a wrong dtype.
    """
    rewards = _as_tensor(rewards, "rewards")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [B, G], got {list(rewards.shape)}")
    if std not in ("population", "sample"):
        raise ValueError(f"std must be 'population' or 'sample', got {std!r}")
    if (isinstance(eps, bool) or not isinstance(eps, (int, float)) or float32_problem(eps)
            or not (eps >= 0 and np.isfinite(eps))):
        raise ValueError(f"eps must be a finite number >= 0 that float32 can hold, got {eps!r}")
    if rewards.dtype == torch.float32:
        infinite = torch.nonzero(torch.isinf(rewards))
        if infinite.numel():
            group, sample = infinite[0].tolist()
            raise ValueError(
                f"rewards[{group}, {sample}] is {rewards[group, sample].item()}: rewards must be "
                f"finite or NaN (NaN = no reward); {infinite.shape[0]} infinite value(s) in total"
            )
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {sorted(ADVANTAGE_MODES)}, got {mode!r}")
    return GroupStats(**group_stats_unchecked(rewards, ADVANTAGE_MODES[mode], std == "sample", float(eps)))


class DtwNearest(NamedTuple):
    index: torch.Tensor  # [Q] int64, the nearest template per query (-1: none reachable)
    distance: torch.Tensor  # [Q] float32, its mean per-frame path cost (+inf: none reachable)


def dtw_nearest(queries, query_lengths, templates, template_lengths, *, template_groups=None,
                hint_groups=None) -> DtwNearest:
    """The nearest template of each query under DTW, exactly (native, CPU; twin:
    reference.dtw.reference_dtw_nearest). Contract: cpp/include/wavalign/dtw.h.

    A path runs from both first frames to both last frames, each step advancing the query by
    one frame and the template by 0, 1 or 2 (the query may be slower than a template by any
    factor, or up to twice as fast); distance = least sum of Euclidean frame distances / Tq.
    Ties go to the lowest template index.

    Args:
        queries: [Q, Tq, C] float32, zero padded past each query's length.
        query_lengths: [Q] int64 in [0, Tq].
        templates: [K, Tt, C] float32, zero padded.
        template_lengths: [K] int64 in [0, Tt].
        template_groups, hint_groups: optional [K] / [Q] int64 (given together): the
            templates of each query's hinted group (-1: none) are tried first. A hint only
            speeds the search up; the result is the same with or without it.

    Raises:
        TypeError for a wrong dtype; ValueError for a wrong shape, a CUDA tensor, a length
        outside its range or a non-finite feature (naming the argument).
    """
    queries, templates = _as_tensor(queries, "queries"), _as_tensor(templates, "templates")
    query_lengths = _as_tensor(query_lengths, "query_lengths")
    template_lengths = _as_tensor(template_lengths, "template_lengths")
    if template_groups is not None:
        template_groups = _as_tensor(template_groups, "template_groups")
    if hint_groups is not None:
        hint_groups = _as_tensor(hint_groups, "hint_groups")
    index, distance = _ops.dtw_nearest(queries, query_lengths, templates, template_lengths, template_groups,
                                       hint_groups)
    return DtwNearest(index, distance)


build_info = _ops.build_info
cuda_device_count = _ops.cuda_device_count
set_num_threads = _ops.set_num_threads
get_num_threads = _ops.get_num_threads

__all__ = [
    "GroupStats",
    "group_stats",
    "group_stats_unchecked",
    "DtwNearest",
    "dtw_nearest",
    "SampledTokens",
    "sample_tokens",
    "sample_tokens_status",
    "interleave_advance",
    "interleave_advance_status",
    "raise_for_sample_status",
    "raise_for_interleave_status",
    "seed_as_int64",
    "SCHEMAS",
    "GROUP_STATS_FIELDS",
    "build_info",
    "cuda_device_count",
    "set_num_threads",
    "get_num_threads",
    "SAMPLING_PARAMS",
]
