"""Pure-PyTorch twin of the native sampler (``wavalign.ops.sample_tokens``).

Readable, slow, exact. Pipeline order per row (each filter is a threshold on z, so the
kept set is always {allowed ids : z >= tau}):

1. raw log-softmax of the unmodified logits at temperature 1 (for raw_logprobs)
2. penalties over the row's history (ids counted, -1 = padding):
   repetition (HF: positive logits / r, negative * r), then - frequency * count,
   then - presence for every id seen at least once
3. allowed-id mask: ids outside the row's [lo, hi) ranges get -inf
4. temperature == 0: greedy argmax (first maximum); processed logprob is 0
5. z = logits / temperature
6. top-k: keep z >= k-th largest z (ties kept)
7. top-p: over the top-k survivors sorted by z descending, m = first position where the
   cumulative probability reaches p; keep z >= z_m (ties kept)
8. min-p: keep exp(z - max z) >= min_p
9. draw: u = Philox(seed, offset) in [0, 1); the first id, in ascending id order, whose
   cumulative kept mass exceeds u * total

A row that cannot be sampled gets the native status code (cpp/include/wavalign/sampling.h),
decided in the native order, and the call raises the native sampler's ValueError for the
first such row (same words, through wavalign.ops.sample_status_error).
"""

from __future__ import annotations

from typing import Sequence

import torch

from wavalign.ops import sample_status_error
from wavalign.reference.philox import philox_uniform
from wavalign.sampling_params import SAMPLING_FIELDS

NEG_INF = float("-inf")


def _row_values(value, n: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype).cpu()
    return torch.full((n,), value, dtype=dtype)


def _allowed_mask(allowed_ranges, n: int, vocab: int) -> torch.Tensor:
    """[N, V] bool: union of each row's half-open ranges."""
    if allowed_ranges is None:
        return torch.ones(n, vocab, dtype=torch.bool)
    ranges = torch.as_tensor(allowed_ranges, dtype=torch.int64).cpu()
    if ranges.dim() == 2:
        ranges = ranges.unsqueeze(0).expand(n, -1, -1)
    ids = torch.arange(vocab)
    lo = ranges[..., 0].unsqueeze(-1)  # [N, R, 1]
    hi = ranges[..., 1].unsqueeze(-1)
    return ((ids >= lo) & (ids < hi)).any(dim=1)


def _bad_ranges(allowed_ranges, n: int, vocab: int) -> torch.Tensor:
    """[N] bool: a range with lo < 0, hi > vocab or lo > hi."""
    if allowed_ranges is None:
        return torch.zeros(n, dtype=torch.bool)
    ranges = torch.as_tensor(allowed_ranges, dtype=torch.int64).cpu()
    if ranges.dim() == 2:
        ranges = ranges.unsqueeze(0).expand(n, -1, -1)
    lo, hi = ranges[..., 0], ranges[..., 1]
    return ((lo < 0) | (hi > vocab) | (lo > hi)).any(dim=1)


def _penalized(x, history, repetition, presence, frequency) -> torch.Tensor:
    """x: [N, V] float32 -> penalised copy. history: [N, H] int64 or None."""
    if history is None or history.numel() == 0:
        return x
    history = history.cpu()
    counts = torch.zeros_like(x)
    valid = history >= 0
    counts.scatter_add_(1, history.clamp(min=0), valid.to(x.dtype))
    present = counts > 0
    rep = repetition.unsqueeze(1)
    x = torch.where(present, torch.where(x < 0, x * rep, x / rep), x)
    x = torch.where(present, x - frequency.unsqueeze(1) * counts, x)
    x = torch.where(present, x - presence.unsqueeze(1), x)
    return x


def _process(
    logits, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
    frequency_penalty, history, allowed_ranges,
):
    """Returns (z, keep, max_z, greedy, greedy_ids, raw_lse) for every row.

    z: [N, V] float32 processed logits (-inf where not allowed); keep: [N, V] bool kept set.
    """
    raw = logits.detach().cpu().float()
    n, vocab = raw.shape
    raw_lse = torch.logsumexp(raw.double(), dim=-1)

    params = {
        "temperature": _row_values(temperature, n, torch.float32),
        "top_k": _row_values(top_k, n, torch.int64),
        "top_p": _row_values(top_p, n, torch.float32),
        "min_p": _row_values(min_p, n, torch.float32),
        "repetition_penalty": _row_values(repetition_penalty, n, torch.float32),
        "presence_penalty": _row_values(presence_penalty, n, torch.float32),
        "frequency_penalty": _row_values(frequency_penalty, n, torch.float32),
    }
    t, k = params["temperature"], params["top_k"]
    p, mp = params["top_p"].double(), params["min_p"].double()
    allowed = _allowed_mask(allowed_ranges, n, vocab)

    # Row statuses in the native order: the first code a row meets is its status.
    status = torch.zeros(n, dtype=torch.int32)

    def fail(code: int, rows: torch.Tensor) -> None:
        status.masked_fill_((status == 0) & rows, code)

    fin = torch.isfinite
    rep, pres, freq = (params[name] for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"))
    fail(7, ~(fin(t) & (t >= 0) & (k >= 0) & fin(p) & (p > 0) & (p <= 1) & fin(mp) & (mp >= 0) & (mp <= 1)
              & fin(rep) & (rep > 0) & fin(pres) & fin(freq)))
    fail(6, _bad_ranges(allowed_ranges, n, vocab))
    fail(3, ~allowed.any(dim=-1))
    fail(1, (raw.isnan() | (raw == float("inf"))).any(dim=-1))
    fail(2, (raw == NEG_INF).all(dim=-1))
    if history is not None and history.numel():
        history = history.cpu()
        bad_ids = (history != -1) & ((history < 0) | (history >= vocab))
        fail(5, bad_ids.any(dim=-1))
        history = torch.where(bad_ids, torch.full_like(history, -1), history)  # those rows failed
    x = _penalized(raw, history, rep, pres, freq)
    fail(8, (allowed & (x.isnan() | (x == float("inf")))).any(dim=-1))  # a penalty overflowed
    masked = torch.where(allowed, x, torch.full_like(x, NEG_INF))

    greedy = t == 0
    greedy_ids = masked.argmax(dim=-1)
    z = masked / torch.where(greedy, torch.ones_like(t), t).unsqueeze(1)
    max_z = z.max(dim=-1).values
    # +inf / NaN max: overflowed; -inf: the caller's own -inf logits (4) or finite ones the
    # penalties or the temperature pushed to -inf (8). Mirrors sample_max_status.
    finite_before = (allowed & (raw > NEG_INF)).any(dim=-1)
    fail(8, max_z.isnan() | (max_z == float("inf")) | ((max_z == NEG_INF) & finite_before))
    fail(4, max_z == NEG_INF)
    error = sample_status_error("reference_sample_tokens", status, params)
    if error is not None:
        raise error
    sorted_z = z.sort(dim=-1, descending=True).values

    # top-k
    n_allowed = allowed.sum(dim=-1)
    topk_on = (k > 0) & (k < n_allowed)
    kth = sorted_z.gather(1, (k - 1).clamp(0, vocab - 1).unsqueeze(1)).squeeze(1)
    tau_k = torch.where(topk_on, kth, torch.full_like(kth, NEG_INF))
    z_k = torch.where(z >= tau_k.unsqueeze(1), z, torch.full_like(z, NEG_INF))

    # top-p over the top-k survivors
    sorted_zk = z_k.sort(dim=-1, descending=True).values
    sorted_mass = torch.exp(sorted_zk.double() - max_z.double().unsqueeze(1))
    cumulative = sorted_mass.cumsum(dim=-1)
    target = p * cumulative[:, -1]
    first_reaching = (cumulative < target.unsqueeze(1)).sum(dim=-1).clamp(max=vocab - 1)
    tau_p = sorted_zk.gather(1, first_reaching.unsqueeze(1)).squeeze(1)
    tau_p = torch.where(p < 1.0, tau_p, torch.full_like(tau_p, NEG_INF))

    # min-p: exp(z - max) >= min_p, i.e. z >= max + log(min_p), compared in float64
    log_min_p = torch.where(mp > 0, mp.log(), torch.full_like(mp, NEG_INF))
    bound = max_z.double() + log_min_p

    keep = (
        allowed
        & (z > NEG_INF)
        & (z >= tau_k.unsqueeze(1))
        & (z >= tau_p.unsqueeze(1))
        & (z.double() >= bound.unsqueeze(1))
    )
    return z, keep, max_z, greedy, greedy_ids, raw_lse


def processed_distribution(logits: torch.Tensor, **kwargs) -> torch.Tensor:
    """Exact processed distribution the sampler draws from: [N, V] float64 (rows sum to 1).

    Greedy rows (temperature 0) are one-hot at the argmax. Takes the keyword arguments of
    :func:`reference_sample_tokens` except seed/offsets.
    """
    z, keep, max_z, greedy, greedy_ids, _ = _process(logits, **_with_defaults(kwargs))
    mass = torch.where(keep, torch.exp(z.double() - max_z.double().unsqueeze(1)), 0.0)
    probs = mass / mass.sum(dim=-1, keepdim=True)
    one_hot = torch.nn.functional.one_hot(greedy_ids, z.shape[1]).double()
    return torch.where(greedy.unsqueeze(1), one_hot, probs)


def _with_defaults(kwargs: dict) -> dict:
    defaults = {f.name: f.metadata["off"] for f in SAMPLING_FIELDS}  # the seven parameters, off
    defaults.update(history=None, allowed_ranges=None)
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown sampling arguments: {sorted(unknown)}")
    defaults.update(kwargs)
    return defaults


def reference_sample_tokens(
    logits: torch.Tensor,
    *,
    seed: int = 0,
    offsets: torch.Tensor | None = None,
    allowed_ranges: torch.Tensor | Sequence[tuple[int, int]] | None = None,
    **params,
):
    """Same contract as :func:`wavalign.ops.sample_tokens`; returns CPU tensors
    (ids [N] int64, logprobs [N] float32, raw_logprobs [N] float32)."""
    kwargs = _with_defaults(dict(params, allowed_ranges=allowed_ranges))
    z, keep, max_z, greedy, greedy_ids, raw_lse = _process(logits, **kwargs)
    n, vocab = z.shape
    if offsets is None:
        offsets = torch.arange(n, dtype=torch.int64)
    mass = torch.where(keep, torch.exp(z.double() - max_z.double().unsqueeze(1)), 0.0)
    total = mass.sum(dim=-1)  # > 0 in every row: _process raised for rows without a finite z
    u = philox_uniform(seed, offsets)
    cumulative = mass.cumsum(dim=-1)
    drawn = torch.searchsorted(cumulative, (u * total).unsqueeze(1), right=True).squeeze(1)
    last_kept = vocab - 1 - keep.flip(-1).to(torch.int8).argmax(dim=-1)
    drawn = torch.where(drawn >= vocab, last_kept, drawn)

    ids = torch.where(greedy, greedy_ids, drawn)
    z_at = z.gather(1, ids.unsqueeze(1)).squeeze(1).double()
    logprobs = torch.where(greedy, torch.zeros_like(total), z_at - max_z.double() - total.log())
    raw_at = logits.detach().cpu().float().gather(1, ids.unsqueeze(1)).squeeze(1).double()
    return ids, logprobs.float(), (raw_at - raw_lse).float()


__all__ = ["processed_distribution", "reference_sample_tokens"]
