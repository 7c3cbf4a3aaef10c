"""The one module that imports the native extension ``wavalign._core``.

It allocates outputs (C++ never owns tensor memory), picks the backend once from the
logits' device, and turns the native per-row status codes into Python exceptions.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from wavalign.sampling_params import SAMPLING_FIELD_NAMES, float32_problem

try:
    from wavalign import _core
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "wavalign's native extension wavalign._core is missing or failed to load. "
        "Install the package with `pip install .` from the repository root "
        f"(original error: {error})"
    ) from error

# Native status codes (cpp/include/wavalign/sampling.h, enum SampleStatus).
_STATUS_MESSAGES = {
    1: "its logits contain NaN or +inf",
    2: "every logit is -inf",
    3: "allowed_ranges cover no token id",
    4: "every allowed id has logit -inf after penalties, so nothing can be sampled",
    5: "history holds an id outside [0, V) (use -1 for padding)",
    6: "allowed_ranges holds a range outside [0, V] or with lo > hi",
    7: (
        "a sampling parameter is invalid (need temperature >= 0, top_k >= 0, "
        "0 < top_p <= 1, 0 <= min_p <= 1, repetition_penalty > 0, all finite)"
    ),
    8: (
        "its sampling parameters overflow float32 (a penalised or temperature-scaled logit "
        "of an allowed id became +inf or NaN, or every one became -inf); use a larger "
        "temperature or smaller penalties"
    ),
}
_STATUS_WITH_PARAMS = (7, 8)  # messages that list the row's parameter values


# ---- Exact argument conversion: every value is checked against the storage it will have
# BEFORE anything narrows it, so nothing a caller passes changes on its way to the native
# ops (the bindings then check dtype, shape, device and layout).

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def _index_text(name: str, index: tuple) -> str:
    return f"{name}[{', '.join(str(int(i)) for i in index)}]" if index else name


def exact_int(value, name: str, lo: int, hi: int, *, integral_floats: bool = True) -> int:
    """`value` (an int, or an integral float when integral_floats) as an int in [lo, hi].
    TypeError for a bool or a non-integer, ValueError for a value outside [lo, hi]."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        result = int(value)
    elif integral_floats and isinstance(value, numbers.Real) and float(value).is_integer():
        result = int(float(value))
    else:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= result <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value!r}")
    return result


def exact_float32(value, name: str) -> float:
    """A real `value` that float32 holds without overflow or a flush to 0 (NaN and +-inf
    pass: the sampler reports them per row). TypeError for a bool or a non-number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    problem = float32_problem(value)
    if problem:
        raise ValueError(f"{name} {problem}, got {value!r}")
    return float(value)


def _exact_leaves(value, name: str, convert, index=()):
    if isinstance(value, (list, tuple)):
        return [_exact_leaves(item, name, convert, index + (i,)) for i, item in enumerate(value)]
    return convert(value, _index_text(name, index))


def _from_numpy(value: np.ndarray, name: str) -> torch.Tensor:
    try:
        return torch.from_numpy(value)
    except TypeError as error:  # object arrays and element types torch lacks
        raise TypeError(f"{name}: numpy dtype {value.dtype} has no torch equivalent ({error})") from None


def as_tensor(value, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    """A tensor argument, converted without narrowing: a tensor is returned as it is and a
    numpy array keeps its dtype (the binding then checks both); a list becomes `dtype` on
    `device` after each element is checked to fit `dtype` exactly."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return _from_numpy(value, name)
    if isinstance(value, (list, tuple)):
        if dtype == torch.float32:
            leaves = _exact_leaves(value, name, exact_float32)
        else:
            lo, hi = INT32 if dtype == torch.int32 else INT64
            leaves = _exact_leaves(value, name, lambda v, where: exact_int(v, where, lo, hi))
        try:
            return torch.tensor(leaves, dtype=dtype, device=device)
        except ValueError as error:  # ragged nesting
            raise ValueError(f"{name} must be a rectangular list of numbers ({error})") from None
    raise TypeError(f"{name} must be a tensor, numpy array or list, got {type(value).__name__}")


def integer_tensor(value, name: str, lo: int, hi: int, requirement: str, device,
                   *, integral_floats: bool = True) -> torch.Tensor:
    """An int64 tensor holding exactly the integers in `value` (tensor, numpy array or
    list), each checked to lie in [lo, hi] before any conversion. Float elements must be
    integral (lists: only with integral_floats). TypeError for bool/complex/other element
    types; ValueError naming the first bad element and its value, then `requirement`."""
    if isinstance(value, (list, tuple)):
        leaves = _exact_leaves(value, name, lambda v, where: exact_int(
            v, where, lo, hi, integral_floats=integral_floats))
        try:
            return torch.tensor(leaves, dtype=torch.int64, device=device)
        except ValueError as error:  # ragged nesting
            raise ValueError(f"{name} must be a rectangular list of integers ({error})") from None
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "u" and value.dtype.itemsize == 8 and value.size and int(value.max()) > hi:
            flat = int(np.argmax(value > hi))
            index = np.unravel_index(flat, value.shape)
            raise ValueError(f"{_index_text(name, index)} is {int(value.flat[flat])}: {requirement}")
        value = _from_numpy(value.astype(np.int64) if value.dtype.kind == "u" else value, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, numpy array or list of integers, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must have an integer or float dtype, got {value.dtype}")
    if value.is_floating_point():
        exact = value.double()  # exact for every float dtype
        bad = ~torch.isfinite(exact) | (exact != exact.round()) | (exact < lo) | (exact >= float(hi) + 1)
    else:
        exact = value.long()  # exact: int64 and narrower (uint64 handled above)
        bad = (exact < lo) | (exact > hi)
    if bool(bad.any()):
        index = tuple(torch.nonzero(bad)[0].tolist())
        raise ValueError(f"{_index_text(name, index)} is {exact[index].item()!r}: {requirement}")
    return exact.long()


def build_info() -> dict:
    """Version and build flags of the compiled extension."""
    return dict(_core.build_info())


def cuda_device_count() -> int:
    """Usable CUDA devices as seen by the extension (0 when built without CUDA)."""
    return int(_core.cuda_device_count())


def set_num_threads(n: int) -> None:
    """Threads used by CPU ops (default: the CPUs this process may run on)."""
    if int(n) < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    return int(_core.get_num_threads())


def sample_status_error(op: str, status: torch.Tensor, params: dict) -> ValueError | None:
    """The error for the first failed row of a sampler status vector, or None if none failed.

    status: [N] int32 (SampleStatus codes); params: name -> [N] tensor of the row parameters.
    The reference twin reports its statuses through this too, so both word an error alike.
    """
    status = status.cpu()  # one small read-back; it syncs on CUDA
    bad = torch.nonzero(status).flatten()
    if bad.numel() == 0:
        return None
    row = int(bad[0])
    detail = sample_status_detail(int(status[row]), row, lambda: {name: t[row].item() for name, t in params.items()})
    return ValueError(
        f"{op}: row {row} cannot be sampled: {detail} "
        f"({bad.numel()} of {status.numel()} rows failed)"
    )


def sample_status_detail(code: int, row: int, values) -> str:
    """What a sampler status code means for `row`; values() -> {parameter: value} of that row,
    called only for the codes whose message lists them (the engine and the ops share this)."""
    detail = _STATUS_MESSAGES.get(code, f"native status {code}")
    if code in _STATUS_WITH_PARAMS:
        detail += f"; row {row} has " + ", ".join(f"{name}={value:g}" for name, value in values().items())
    return detail


def sample_tokens_status(
    logits: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    history: torch.Tensor | None,
    allowed_ranges: torch.Tensor | None,
    seed: int,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The native sampler call without the status check (no host sync, never raises per row):
    params are the [N] tensors in SAMPLING_FIELD_NAMES order. Returns ids [N] int64,
    logprobs [N] float32, raw_logprobs [N] float32, status [N] int32 (SampleStatus; 0 = ok).
    Argument errors (dtype, shape, device, layout) still raise. Used by sample_tokens and
    by the torch.library op wavalign::sample_tokens (wavalign.ops)."""
    n, vocab = (logits.shape[0], logits.shape[1]) if logits.dim() == 2 else (0, 0)
    device = logits.device
    ids = torch.empty(n, dtype=torch.int64, device=device)
    logprobs = torch.empty(n, dtype=torch.float32, device=device)
    raw_logprobs = torch.empty(n, dtype=torch.float32, device=device)
    status = torch.zeros(n, dtype=torch.int32, device=device)
    workspace = _sampling_workspace(device, n, vocab) if device.type == "cuda" else None  # CPU: none
    _core.sample_tokens(
        logits,
        *params,
        history,
        allowed_ranges,
        seed,
        offsets,
        ids,
        logprobs,
        raw_logprobs,
        status,
        workspace,
        _stream(device),
    )
    return ids, logprobs, raw_logprobs, status


# ---- CUDA sampler workspace cache.
# The CUDA sampler needs an [N, V] float32 scratch tensor (the processed logits of every
# row): N * V * 4 bytes, 2.75 GB at N = 4096, V = 168,072. Allocating it on every call
# churns the caching allocator at that size, so one flat buffer is kept per (device,
# stream) and reused by every call whose N * V fits; a larger call replaces it with a
# buffer of the new size (the old one returns to PyTorch's allocator). Keyed by stream as
# well as device because two streams of one device may run samplers concurrently: calls
# on one stream are ordered by that stream, so they can share a buffer. The cache holds
# that memory until release_sampling_workspace() (it shows in torch.cuda.memory_allocated).
# During CUDA-graph capture nothing is cached or replaced: the captured graph keeps
# pointing at its workspace, so the call allocates a fresh one from the graph's pool, as
# before (replacing a cached buffer later would free memory a graph still writes).
_WORKSPACES: dict[tuple[int, int], torch.Tensor] = {}


def _sampling_workspace(device: torch.device, n: int, vocab: int) -> torch.Tensor:
    """An [n, vocab] float32 view of the cached workspace of (device, current stream)."""
    numel = n * vocab
    if _capturing(device):
        return torch.empty((n, vocab), dtype=torch.float32, device=device)
    key = (device.index, _stream(device))
    buffer = _WORKSPACES.get(key)
    if buffer is None or buffer.numel() < numel:
        if buffer is not None:
            del _WORKSPACES[key]
            del buffer  # free the smaller buffer before allocating the larger one
        buffer = torch.empty(numel, dtype=torch.float32, device=device)
        _WORKSPACES[key] = buffer
    return buffer[:numel].view(n, vocab)


def _capturing(device: torch.device) -> bool:
    """Whether `device`'s current stream is capturing a CUDA graph."""
    if device.index is None or device.index == torch.cuda.current_device():
        return torch.cuda.is_current_stream_capturing()
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def release_sampling_workspace(device: torch.device | str | int | None = None) -> None:
    """Drops the cached CUDA sampler workspaces (all devices, or only `device`'s) so their
    memory goes back to PyTorch's allocator (then torch.cuda.empty_cache() returns it to
    the driver). The next CUDA sampler call allocates again."""
    index = None
    if device is not None:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
    for key in [key for key in _WORKSPACES if index is None or key[0] == index]:
        del _WORKSPACES[key]


def _stream(device: torch.device) -> int:
    """The raw handle of `device`'s current stream, which the native op launches on; the
    launcher makes `device` current for the launch (a handle belongs to one device, and 0,
    the default stream, means "the current device's"), so this must be the stream of the
    tensors' own device, never torch.cuda.current_stream() of the current device."""
    if device.type != "cuda":
        return 0
    stream = torch.cuda.current_stream(device)
    if device.index is not None and stream.device.index != device.index:  # cannot happen; guards the contract
        raise RuntimeError(f"the current stream of {device} is on {stream.device}")
    return stream.cuda_stream


def group_stats_native(rewards: torch.Tensor, mode: int, sample_std: bool, eps: float) -> dict[str, torch.Tensor]:
    """The native group_stats call with the mode as its code (0 grpo, 1 dr_grpo, 2 rloo);
    zero_variance and all_missing stay int8 as the kernel writes them."""
    b, g = (rewards.shape[0], rewards.shape[1]) if rewards.dim() == 2 else (0, 0)
    device = rewards.device
    out = {
        "valid_count": torch.empty(b, dtype=torch.int32, device=device),
        "mean": torch.empty(b, dtype=torch.float32, device=device),
        "std": torch.empty(b, dtype=torch.float32, device=device),
        "variance": torch.empty(b, dtype=torch.float32, device=device),
        "max": torch.empty(b, dtype=torch.float32, device=device),
        "min": torch.empty(b, dtype=torch.float32, device=device),
        "zero_variance": torch.empty(b, dtype=torch.int8, device=device),
        "all_missing": torch.empty(b, dtype=torch.int8, device=device),
        "advantages": torch.empty((b, g), dtype=torch.float32, device=device),
    }
    _core.group_stats(
        rewards, int(mode), bool(sample_std), float(eps),
        out["valid_count"], out["mean"], out["std"], out["variance"], out["max"], out["min"],
        out["zero_variance"], out["all_missing"], out["advantages"], _stream(device),
    )
    return out


def dtw_nearest(queries: torch.Tensor, query_lengths: torch.Tensor, templates: torch.Tensor,
                template_lengths: torch.Tensor, template_groups: torch.Tensor | None = None,
                hint_groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The native nearest-template DTW (CPU). -> (best_index [Q] int64, best_distance [Q] float32)."""
    n = queries.shape[0] if queries.dim() == 3 else 0
    best_index = torch.empty(n, dtype=torch.int64)
    best_distance = torch.empty(n, dtype=torch.float32)
    _core.dtw_nearest(queries, query_lengths, templates, template_lengths, template_groups, hint_groups, best_index,
                      best_distance)
    return best_index, best_distance


# interleave_advance_status's state tensors, in argument order: read and updated in place.
INTERLEAVE_STATE_NAMES = ("phase", "chunk_count", "chunk_index", "text_count", "speech_count", "text_done",
                          "finish_reason")


def interleave_advance_status(schedule: int, text_chunk: int, speech_chunk: int, ratio_pattern, id_modality,
                              eos: int, begin_audio: int, end_audio: int, end_text: int, sampled,
                              max_text, max_speech, max_total, phase, chunk_count, chunk_index, text_count,
                              speech_count, text_done, finish_reason) -> tuple[torch.Tensor, torch.Tensor]:
    """The native interleave step without the status check (no host sync, never raises per
    row): updates the state tensors in place and returns (allowed_set [N] int32, status [N]
    int32: 0 ok, 1 sampled id outside the vocabulary, 2 id not allowed in the row's phase;
    rejected rows keep their state). Used by interleave_advance and wavalign::interleave_advance."""
    n = phase.shape[0]
    device = phase.device
    allowed = torch.empty(n, dtype=torch.int32, device=device)
    status = torch.zeros(n, dtype=torch.int32, device=device)
    _core.interleave_advance(
        schedule, text_chunk, speech_chunk, ratio_pattern, id_modality, eos, begin_audio, end_audio, end_text,
        sampled, max_text, max_speech, max_total, phase, chunk_count, chunk_index, text_count, speech_count,
        text_done, finish_reason, allowed, status, _stream(device),
    )
    return allowed, status


def interleave_rejection(code: int, phase: int) -> str:
    """Why the state machine rejected a sampled id (status 1 or 2) in a row of `phase`."""
    return "is outside the vocabulary" if code == 1 else f"is not allowed in the row's phase {phase} under this schedule"


def interleave_status_error(status: torch.Tensor, phase: torch.Tensor,
                            sampled: torch.Tensor | None) -> ValueError | None:
    """The error for the first rejected row of an interleave status vector, or None."""
    n = status.numel()
    status = status.cpu()  # one small read-back; it syncs on CUDA
    bad = torch.nonzero(status).flatten()
    if not bad.numel():
        return None
    row = int(bad[0])
    token = int(sampled[row]) if sampled is not None else -1
    reason = interleave_rejection(int(status[row]), int(phase[row]))
    return ValueError(f"interleave: row {row}: sampled id {token} {reason} "
                      f"({bad.numel()} of {n} rows rejected; state of those rows unchanged)")


def interleave_allowed_mask(schedule: int, id_modality: torch.Tensor, eos: int, begin_audio: int,
                            end_audio: int, end_text: int, allowed_set: int) -> torch.Tensor:
    """[V] bool: the ids allowed set `allowed_set` admits, by the state machine's own
    predicate (interleave_allows). id_modality: [V] int8 (0 text, 1 speech, 2 neither);
    special ids are -1 when absent. CPU; called once per spec, not per step."""
    id_modality = id_modality.contiguous()  # the binding checks int8 [V] on CPU
    mask = torch.empty(id_modality.shape[0], dtype=torch.int8)  # [V]
    _core.interleave_allowed_mask(int(schedule), id_modality, int(eos), int(begin_audio), int(end_audio),
                                  int(end_text), int(allowed_set), mask)
    return mask.bool()
