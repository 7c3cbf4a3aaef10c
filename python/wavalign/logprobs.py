"""Memory-lean log-probabilities of chosen tokens, straight from hidden states.

The naive path materialises logits [M, V] and a log-softmax of the same size, then keeps
both alive for backward: at VITA-Audio's V = 168,072 that is ~1.3 GB per 1,000 tokens in
float32, several times over. Here the LM head is applied chunk by chunk: forward keeps
only the per-token log-sum-exp [M]; backward recomputes one chunk of logits at a time.
Values and gradients equal the naive computation up to float rounding.

    logprobs = selected_logprobs(hidden, lm_head.weight, targets)          # [N, T]
    logprobs, entropy = selected_logprobs(hidden, w, targets, return_entropy=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from wavalign.adapters import ModelAdapter, rows_inputs

DEFAULT_CHUNK_TOKENS = 256


def _chunk_logits(hidden, weight, bias, temperature, allowed=None):
    # hidden [C, H] x weight [V, H] -> [C, V] float32; temperature a float or [C];
    # allowed: [C, V] bool (ids the sampler could draw) or None
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.float()
    if isinstance(temperature, torch.Tensor):
        logits = logits / temperature[:, None]
    elif temperature != 1.0:
        logits = logits / temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return logits


def _rows(value, start, stop):
    return value[start:stop] if isinstance(value, torch.Tensor) else value


def _allowed(masks, sets, start, stop):
    """[C, V] bool for positions start:stop, or None (unmasked)."""
    return None if masks is None else masks[sets[start:stop]]


class _SelectedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, temperature, with_entropy, masks=None, sets=None):
        # hidden [M, H], weight [V, H], bias [V] | None, targets [M] int64;
        # temperature float or [M]; masks [S, V] bool and sets [M] int64 (row of masks per position)
        m = hidden.shape[0]
        logprobs = torch.empty(m, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(m, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(m if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            logits = _chunk_logits(hidden[start:stop], weight, bias, _rows(temperature, start, stop),
                                   _allowed(masks, sets, start, stop))  # [C, V]
            chunk_lse = torch.logsumexp(logits, dim=-1)
            lse[start:stop] = chunk_lse
            logprobs[start:stop] = logits.gather(1, targets[start:stop, None]).squeeze(1) - chunk_lse
            if with_entropy:
                log_probs = logits - chunk_lse[:, None]  # -sum p log p: no cancellation
                terms = log_probs.exp() * log_probs
                entropy[start:stop] = -torch.where(torch.isfinite(log_probs), terms, 0.0).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.chunk, ctx.temperature, ctx.with_entropy = chunk, temperature, with_entropy
        ctx.masks, ctx.sets = masks, sets
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, hidden.shape[0])
            h = hidden[start:stop]
            # One [C, V] buffer, transformed in place: logits -> log p -> p -> d loss / d z.
            temperature = _rows(ctx.temperature, start, stop)
            buffer = _chunk_logits(h, weight, bias, temperature, _allowed(ctx.masks, ctx.sets, start, stop))
            buffer.sub_(lse[start:stop, None])  # log p
            entropy_term = None
            if ctx.with_entropy and grad_entropy is not None:
                # H = -sum p log p;  dH/dz_j = -p_j (log p_j + H): keep (log p + H) * g_H
                entropy_term = (buffer + entropy[start:stop, None]) * grad_entropy[start:stop, None]
            buffer.exp_()  # p (0 at masked ids)
            if entropy_term is not None:
                entropy_term.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                entropy_term.mul_(buffer)
            # d logprob_t / d z = onehot(target) - p
            grad_logits = buffer.mul_(-grad_logprobs[start:stop, None])
            grad_logits.scatter_add_(1, targets[start:stop, None], grad_logprobs[start:stop, None])
            if entropy_term is not None:
                grad_logits.sub_(entropy_term)
                del entropy_term
            if isinstance(temperature, torch.Tensor):
                grad_logits /= temperature[:, None]
            elif temperature != 1.0:
                grad_logits /= temperature
            grad_logits = grad_logits.to(hidden.dtype)
            if need_h:
                grad_hidden[start:stop] = grad_logits @ weight
            if need_w:
                grad_weight += (grad_logits.t() @ h).float()
            if need_b:
                grad_bias += grad_logits.float().sum(dim=0)
        if need_w:
            grad_weight = grad_weight.to(weight.dtype)
        if need_b:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def selected_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    return_entropy: bool = False,
    allowed_masks: torch.Tensor | None = None,
    allowed_sets: torch.Tensor | None = None,
):
    """log softmax(hidden @ weight.T / temperature)[targets], chunked over tokens; with
    allowed_masks / allowed_sets, the softmax runs over each position's allowed ids only.

    Args:
        hidden: [..., H] final hidden states (any float dtype; logits are taken in float32).
        weight: [V, H] LM-head weight; bias: optional [V].
        targets: [...] int64 token ids in [0, V), same leading shape as hidden.
        chunk_tokens: tokens per chunk; extra memory ~ 2 * chunk_tokens * V floats
            (3 with entropy) plus the weight gradient.
        return_entropy: also return the entropy of each position's distribution.
        temperature: a float, or a tensor of targets' shape (one per position, each > 0).
        allowed_masks: [S, V] bool, the id sets a sampler drew from; allowed_sets: targets'
            shape, int, which row of allowed_masks applies at each position. Scoring a sampled
            token this way (at its sampling temperature) gives the log-prob it was drawn with.

    Returns:
        logprobs [...] float32 (and entropy [...] float32 when asked).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets must have the leading shape of hidden: hidden {list(hidden.shape)}, "
            f"targets {list(targets.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape [V, {hidden.shape[-1]}], got {list(weight.shape)}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must have dtype int64, got {targets.dtype}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape [{weight.shape[0]}], got {list(bias.shape)}")
    if not (isinstance(chunk_tokens, int) and chunk_tokens > 0):
        raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
    if isinstance(temperature, torch.Tensor):
        if temperature.shape != targets.shape:
            raise ValueError(f"a temperature tensor must have the targets' shape {list(targets.shape)}, got "
                             f"{list(temperature.shape)}")
        if not bool((temperature > 0).all()) or not bool(torch.isfinite(temperature).all()):
            raise ValueError("temperatures must be finite and > 0")
    elif not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (allowed_masks is None) != (allowed_sets is None):
        raise ValueError("allowed_masks and allowed_sets go together")
    if allowed_masks is not None:
        if allowed_masks.dtype != torch.bool or allowed_masks.dim() != 2 or allowed_masks.shape[1] != weight.shape[0]:
            raise ValueError(f"allowed_masks must be [S, {weight.shape[0]}] bool, got {list(allowed_masks.shape)} "
                             f"{allowed_masks.dtype}")
        if allowed_sets.shape != targets.shape:
            raise ValueError(f"allowed_sets must have the targets' shape {list(targets.shape)}")
        if allowed_sets.numel() and (int(allowed_sets.min()) < 0 or int(allowed_sets.max()) >= allowed_masks.shape[0]):
            raise ValueError(f"allowed_sets must lie in [0, {allowed_masks.shape[0]})")
    vocab = weight.shape[0]
    flat_targets = targets.reshape(-1)
    if flat_targets.numel() and (int(flat_targets.min()) < 0 or int(flat_targets.max()) >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}), found [{int(flat_targets.min())}, {int(flat_targets.max())}]")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_temperature = (temperature.reshape(-1).float() if isinstance(temperature, torch.Tensor)
                        else float(temperature))
    flat_sets = None if allowed_sets is None else allowed_sets.reshape(-1).long()
    logprobs, entropy = _SelectedLogprobs.apply(
        flat_hidden, weight, bias, flat_targets, chunk_tokens, flat_temperature, return_entropy,
        allowed_masks, flat_sets
    )
    logprobs = logprobs.reshape(targets.shape)
    if return_entropy:
        return logprobs, entropy.reshape(targets.shape)
    return logprobs


def naive_selected_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, return_entropy=False):
    """The straightforward full-logits computation: the oracle for tests and the benchmark baseline."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    selected = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if return_entropy:
        return selected, -(log_probs.exp() * log_probs).sum(dim=-1)
    return selected


# ---------------------------------------------------------------------------- response rows
@dataclass
class ResponseRows:
    """N (prompt, response) rows as tensors: what the training forward consumes.

    Rollouts arrive like this from the engine (ids, types and lengths stay tensors); gold or
    preference responses given as id lists are typed once by the ModalitySpec (from_lists).
    """

    prompts: list[torch.Tensor]  # N prompts, each [P_n] int64
    ids: torch.Tensor  # [N, L] int64 response ids, pad after each row's end
    lengths: torch.Tensor  # [N] int64
    types: torch.Tensor  # [N, L] int8: 0 text, 1 speech, -1 past the end
    # How each token was sampled, when it is to be scored under the sampling distribution
    # (objective.logprobs=sampling): [N, L] float32 temperature, and [N, L] int8 allowed set
    # (-1: unmasked). None: score under the raw model distribution.
    temperature: torch.Tensor | None = None
    allowed_sets: torch.Tensor | None = None
    # Extra forward inputs of each row's prompt (wavalign.adapters: audio features, ...), or None.
    extras: list[dict | None] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_lists(cls, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], spec,
                   pad_id: int, extras: Sequence[dict | None] | None = None) -> "ResponseRows":
        if len(prompts) != len(responses) or not responses:
            raise ValueError(f"need one response per prompt and at least one row, got {len(prompts)} prompts and "
                             f"{len(responses)} responses")
        width = max(len(r) for r in responses)
        ids = torch.full((len(responses), width), pad_id, dtype=torch.int64)
        for row, response in enumerate(responses):
            ids[row, :len(response)] = torch.as_tensor(list(response), dtype=torch.int64)
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.int64)
        valid = torch.arange(width)[None, :] < lengths[:, None]  # [N, L]
        return cls([torch.as_tensor(list(p), dtype=torch.int64) for p in prompts], ids, lengths,
                   spec.token_types(ids, valid), extras=_extras_list(extras, len(responses)))

    def responses(self) -> list[list[int]]:
        """The response ids as lists (for rewards and pair building)."""
        return [row[:length].tolist() for row, length in zip(self.ids, self.lengths.tolist())]

    def select(self, rows: Sequence[int]) -> "ResponseRows":
        index = torch.as_tensor(list(rows), dtype=torch.int64)
        width = int(self.lengths[index].max()) if len(index) else 0

        def part(t):
            return None if t is None else t[index, :width]

        return ResponseRows([self.prompts[i] for i in index.tolist()], self.ids[index, :width],
                            self.lengths[index], self.types[index, :width], part(self.temperature),
                            part(self.allowed_sets),
                            None if self.extras is None else [self.extras[i] for i in index.tolist()])

    def cat(self, other: "ResponseRows", pad_id: int) -> "ResponseRows":
        """These rows, then `other`'s, padded to the wider of the two."""
        width = max(self.ids.shape[1], other.ids.shape[1])

        def widen(t: torch.Tensor, fill: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)

        def sampling(a, b, a_rows, b_rows, fill, dtype):
            if a is None and b is None:
                return None
            a = torch.full((a_rows, width), fill, dtype=dtype) if a is None else a
            b = torch.full((b_rows, width), fill, dtype=dtype) if b is None else b
            return torch.cat([widen(a, fill), widen(b, fill)])

        # rows without sampling information (gold responses) are scored raw: T = 1, unmasked
        return ResponseRows(self.prompts + other.prompts,
                            torch.cat([widen(self.ids, pad_id), widen(other.ids, pad_id)]),
                            torch.cat([self.lengths, other.lengths]),
                            torch.cat([widen(self.types, -1), widen(other.types, -1)]),
                            sampling(self.temperature, other.temperature, len(self), len(other), 1.0, torch.float32),
                            sampling(self.allowed_sets, other.allowed_sets, len(self), len(other), -1, torch.int8),
                            None if self.extras is None and other.extras is None else
                            (self.extras or [None] * len(self)) + (other.extras or [None] * len(other)))


def _extras_list(extras, n: int) -> list | None:
    if extras is None:
        return None
    extras = list(extras)
    if len(extras) != n:
        raise ValueError(f"need one extras entry per row: {n} rows, {len(extras)} entries")
    return None if all(e is None for e in extras) else extras


@dataclass
class Packed:
    ids: torch.Tensor  # [N, W] int64 prompt + response, right-padded
    mask: torch.Tensor  # [N, W] int64
    starts: torch.Tensor  # [N] int64 first response position
    width: int  # L: response positions scored per row
    temperature: torch.Tensor | None = None  # [N, L] float32 (sampling distribution), or None
    allowed_sets: torch.Tensor | None = None  # [N, L] int64 rows of the mask table (-1: unmasked), or None
    extras: dict | None = None  # collated extra forward inputs (batch dim N), or None


def pack(rows: ResponseRows, pad_id: int, device, adapter=None) -> Packed:
    """Prompt + response of every row, right-padded to one [N, W] batch; rows' extra
    forward inputs collated by `adapter` (wavalign.adapters.ModelAdapter)."""
    totals = [len(p) + int(n) for p, n in zip(rows.prompts, rows.lengths.tolist())]
    width = max(totals)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for row, (prompt, total) in enumerate(zip(rows.prompts, totals)):
        ids[row, :len(prompt)] = prompt
        ids[row, len(prompt):total] = rows.ids[row, :total - len(prompt)]
        mask[row, :total] = 1
    starts = torch.tensor([len(p) for p in rows.prompts], dtype=torch.int64)
    temperature = None if rows.temperature is None else rows.temperature.to(device)
    allowed = None if rows.allowed_sets is None else rows.allowed_sets.long().to(device)
    extras = None
    if rows.extras is not None:
        extras = rows_inputs(adapter or ModelAdapter(), rows.extras, device) or None
    return Packed(ids.to(device), mask.to(device), starts.to(device), rows.ids.shape[1], temperature, allowed, extras)


class ResponseLogprobs(torch.nn.Module):
    """Causal LM -> log-probs of the response tokens [N, L], without materialising logits.

    The base model gives hidden states; the LM head is applied chunk by chunk
    (selected_logprobs). A module of its own so DDP sees the whole computation.
    """

    def __init__(self, lm, adapter=None):
        """adapter: a wavalign.adapters.ModelAdapter (its LM-head accessor), or None."""
        super().__init__()
        self.lm = lm
        self._head_of = adapter.output_embeddings if adapter is not None else (lambda model: model.get_output_embeddings())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor, width: int,
                temperature: torch.Tensor | None = None, allowed_masks: torch.Tensor | None = None,
                allowed_sets: torch.Tensor | None = None, extras: dict | None = None) -> torch.Tensor:
        # ids, mask [N, W] right-padded prompt+response; starts [N] first response position;
        # temperature / allowed_sets [N, width]: score under the sampling distribution;
        # extras: extra forward inputs of the rows' prompts (batch dim N), e.g. audio features
        # A PeftModel (LoRA) holds the HF model, its LoRA layers in place: they run in this forward.
        lm = self.lm.get_base_model() if callable(getattr(self.lm, "get_base_model", None)) else self.lm
        head = self._head_of(lm)
        if extras:
            hidden = _head_inputs(self.lm, head, ids, mask, extras)  # [N, W, H]
        else:
            base = getattr(lm, lm.base_model_prefix)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, W, H]
        span = torch.arange(width, device=ids.device)
        # hidden at position t predicts token t + 1
        positions = (starts[:, None] - 1 + span[None, :]).clamp(0, ids.shape[1] - 2)  # [N, width]
        picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # [N, width, H]
        targets = ids.gather(1, positions + 1)  # [N, width]
        extra = {}
        if temperature is not None:
            extra["temperature"] = temperature
        if allowed_sets is not None:
            extra.update(allowed_masks=allowed_masks, allowed_sets=allowed_sets)
        return selected_logprobs(picked, head.weight, targets, bias=getattr(head, "bias", None), **extra)


def _head_inputs(lm, head, ids, mask, extras) -> torch.Tensor:
    """[N, W, H] the hidden states the LM head receives, from the model's full forward with
    its extra inputs. A model that merges, say, audio features into its input embeddings does
    so in its top-level forward, which the base model alone would skip. A pre-hook on the head
    keeps the hidden states and hands the head only the last position, so no [N, W, V] logits
    are made; log-probs then come from selected_logprobs, chunk by chunk, as without extras."""
    kept = {}

    def keep(module, args):
        kept["hidden"] = args[0]
        return (args[0][:, -1:],)

    handle = head.register_forward_pre_hook(keep)
    try:
        lm(input_ids=ids, attention_mask=mask, use_cache=False, **extras)
    finally:
        handle.remove()
    if "hidden" not in kept:
        raise RuntimeError("the model's forward never called its output embeddings (LM head); give a ModelAdapter "
                           "whose output_embeddings returns the module that makes the logits")
    return kept["hidden"]


def allowed_set_masks(spec, vocab: int) -> torch.Tensor:
    """[S + 1, vocab] bool: the ids of each interleave set (ModalitySpec.interleave_table), and a
    last row allowing every id (set -1: scored unmasked). Columns past spec.vocab_size (padded
    LM heads) are never in a set: the sampler never draws them."""
    table = spec.interleave_table()  # [S, R, 2]
    ids = torch.arange(vocab)
    lo, hi = table[..., 0], table[..., 1]  # [S, R]
    inside = ((ids[None, None, :] >= lo[..., None]) & (ids[None, None, :] < hi[..., None])).any(dim=1)  # [S, V]
    return torch.cat([inside, torch.ones(1, vocab, dtype=torch.bool)])


class RowLogprobs:
    """rows -> (log-probs [N, L] float32 on the device, token types [N, L] int8 on the device):
    the `logprob_fn` the learn-side step functions call. `module` is a ResponseLogprobs (or
    the DDP / FSDP2 wrapper around one)."""

    def __init__(self, module, pad_id: int, device, *, reshard: bool = False, set_masks: torch.Tensor | None = None,
                 adapter=None):
        """set_masks: allowed_set_masks(spec, V), needed for rows that carry allowed_sets;
        adapter: collates rows' extra forward inputs (default: wavalign.adapters.ModelAdapter)."""
        self.module, self.pad_id, self.device, self.reshard = module, pad_id, device, reshard
        self.adapter = adapter
        self.set_masks = None if set_masks is None else set_masks.to(device)

    def __call__(self, rows: ResponseRows) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pack(rows, self.pad_id, self.device, self.adapter)
        if batch.extras is not None:
            logp = self.module(batch.ids, batch.mask, batch.starts, batch.width, *self._sampling(batch),
                               extras=batch.extras)
        elif batch.temperature is None and batch.allowed_sets is None:
            logp = self.module(batch.ids, batch.mask, batch.starts, batch.width)
        else:
            logp = self.module(batch.ids, batch.mask, batch.starts, batch.width, *self._sampling(batch))
        if self.reshard:  # FSDP2, frozen reference: no backward will free the root's gathered weights
            self.module.reshard()
        return logp, rows.types.to(self.device)

    def _sampling(self, batch) -> tuple:
        """(temperature, set masks, sets) for the module, None where the rows are scored raw."""
        sets = batch.allowed_sets
        if sets is None:
            return batch.temperature, None, None
        if self.set_masks is None:
            raise ValueError("rows carry allowed sets, but this logprob function was built without set_masks")
        return batch.temperature, self.set_masks, torch.where(sets < 0, torch.full_like(sets, self.set_masks.shape[0] - 1), sets)
