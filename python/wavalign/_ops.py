"""The one module that imports the native extension ``wavalign._core``.

It allocates outputs (C++ never owns tensor memory), picks the backend once from the
logits' device, and turns the native per-row status codes into Python exceptions.
"""

from __future__ import annotations

import torch

from wavalign.sampling_params import SAMPLING_FIELD_NAMES

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
}


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


def _raise_for_status(status: torch.Tensor, params: dict) -> None:
    # status: [N] int32 on the logits' device. One small read-back; it syncs on CUDA.
    bad = torch.nonzero(status.cpu()).flatten()
    if bad.numel() == 0:
        return
    row = int(bad[0])
    code = int(status[row])
    detail = _STATUS_MESSAGES.get(code, f"native status {code}")
    if code == 7:
        values = ", ".join(f"{name}={tensor[row].item():g}" for name, tensor in params.items())
        detail += f"; row {row} has {values}"
    raise ValueError(
        f"sample_tokens: row {row} cannot be sampled: {detail} "
        f"({bad.numel()} of {status.numel()} rows failed)"
    )


def sample_tokens(
    logits: torch.Tensor,
    params: dict[str, torch.Tensor],
    history: torch.Tensor | None,
    allowed_ranges: torch.Tensor | None,
    seed: int,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Native sampler call; arguments already normalised by :func:`wavalign.ops.sample_tokens`.

    logits: [N, V] float32 | bfloat16 | float16; params: name -> [N] tensor, one per
    ModalitySampling field (the schema's order is the native argument order).
    Returns ids [N] int64, logprobs [N] float32, raw_logprobs [N] float32.
    """
    n, vocab = (logits.shape[0], logits.shape[1]) if logits.dim() == 2 else (0, 0)
    device = logits.device
    ids = torch.empty(n, dtype=torch.int64, device=device)
    logprobs = torch.empty(n, dtype=torch.float32, device=device)
    raw_logprobs = torch.empty(n, dtype=torch.float32, device=device)
    status = torch.zeros(n, dtype=torch.int32, device=device)
    workspace = None
    if device.type == "cuda":
        workspace = torch.empty((n, vocab), dtype=torch.float32, device=device)
    _core.sample_tokens(
        logits,
        *(params[name] for name in SAMPLING_FIELD_NAMES),
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
    _raise_for_status(status, params)
    return ids, logprobs, raw_logprobs


_ADVANTAGE_MODES = {"grpo": 0, "dr_grpo": 1, "rloo": 2}


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def group_stats(rewards: torch.Tensor, mode: str, sample_std: bool, eps: float) -> dict[str, torch.Tensor]:
    """rewards: [B, G] float32 (NaN = no reward). Returns per-group tensors and advantages."""
    if mode not in _ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {sorted(_ADVANTAGE_MODES)}, got {mode!r}")
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
        rewards, _ADVANTAGE_MODES[mode], bool(sample_std), float(eps),
        out["valid_count"], out["mean"], out["std"], out["variance"], out["max"], out["min"],
        out["zero_variance"], out["all_missing"], out["advantages"], _stream(device),
    )
    out["zero_variance"] = out["zero_variance"].bool()
    out["all_missing"] = out["all_missing"].bool()
    return out


def interleave_advance(config: dict, state: dict[str, torch.Tensor], sampled: torch.Tensor | None) -> torch.Tensor:
    """Advances the interleave state in place; returns the next allowed set per row [N] int32."""
    n = state["phase"].shape[0]
    device = state["phase"].device
    allowed = torch.empty(n, dtype=torch.int32, device=device)
    status = torch.zeros(n, dtype=torch.int32, device=device)
    _core.interleave_advance(
        config["schedule"], config["text_chunk"], config["speech_chunk"], config["id_modality"],
        config["eos"], config["begin_audio"], config["end_audio"], config["end_text"], sampled,
        state["max_text"], state["max_speech"], state["max_total"], state["phase"],
        state["chunk_count"], state["text_count"], state["speech_count"], state["text_done"],
        state["finish_reason"], allowed, status, _stream(device),
    )
    bad = torch.nonzero(status.cpu()).flatten()
    if bad.numel():
        row = int(bad[0])
        token = int(sampled[row]) if sampled is not None else -1
        reason = "is outside the vocabulary" if int(status[row]) == 1 else (
            f"is not allowed in the row's phase {int(state['phase'][row])} under this schedule")
        raise ValueError(f"interleave: row {row}: sampled id {token} {reason} "
                         f"({bad.numel()} of {n} rows rejected; state of those rows unchanged)")
    return allowed


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
