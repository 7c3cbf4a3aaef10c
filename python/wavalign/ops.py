"""Public native ops.

``sample_tokens`` draws the next token for many rows at once under per-row sampling
parameters and per-row allowed-id ranges (how text vs speech phases are enforced).
Its exact pure-PyTorch twin (the tests' oracle) is ``reference_sample_tokens`` in the
``reference`` subpackage.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import numpy as np
import torch

from wavalign import _ops
from wavalign.sampling_params import SAMPLING_FIELDS, float32_problem

RowParam = Union[float, int, torch.Tensor]

# name -> (dtype of the per-row tensor, value that switches the step off), in native
# argument order; derived from the ModalitySampling schema (wavalign.sampling_params).
SAMPLING_PARAMS: dict[str, tuple[torch.dtype, float]] = {
    f.name: (getattr(torch, f.metadata["dtype"]), f.metadata["off"]) for f in SAMPLING_FIELDS
}

_MAX_SEED = 2**64


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
    ranges = normalize_ranges(allowed_ranges, n, device)
    ids, logprobs, raw_logprobs = _ops.sample_tokens(
        logits.detach(), params, history, ranges, seed, offsets
    )
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
    out = _ops.group_stats(rewards, mode, std == "sample", float(eps))
    return GroupStats(**out)


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
    "DtwNearest",
    "dtw_nearest",
    "SampledTokens",
    "sample_tokens",
    "build_info",
    "cuda_device_count",
    "set_num_threads",
    "get_num_threads",
    "SAMPLING_PARAMS",
]
