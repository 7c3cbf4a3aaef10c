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

import torch

DEFAULT_CHUNK_TOKENS = 256


def _chunk_logits(hidden, weight, bias, temperature):
    # hidden [C, H] x weight [V, H] -> [C, V] float32
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits


class _SelectedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, temperature, with_entropy):
        # hidden [M, H], weight [V, H], bias [V] | None, targets [M] int64
        m = hidden.shape[0]
        logprobs = torch.empty(m, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(m, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(m if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            logits = _chunk_logits(hidden[start:stop], weight, bias, temperature)  # [C, V]
            chunk_lse = torch.logsumexp(logits, dim=-1)
            lse[start:stop] = chunk_lse
            logprobs[start:stop] = logits.gather(1, targets[start:stop, None]).squeeze(1) - chunk_lse
            if with_entropy:
                log_probs = logits - chunk_lse[:, None]  # -sum p log p: no cancellation
                entropy[start:stop] = -(log_probs.exp() * log_probs).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.chunk, ctx.temperature, ctx.with_entropy = chunk, temperature, with_entropy
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
            buffer = _chunk_logits(h, weight, bias, ctx.temperature)  # [C, V] logits
            buffer.sub_(lse[start:stop, None])  # log p
            entropy_term = None
            if ctx.with_entropy and grad_entropy is not None:
                # H = -sum p log p;  dH/dz_j = -p_j (log p_j + H): keep (log p + H) * g_H
                entropy_term = (buffer + entropy[start:stop, None]) * grad_entropy[start:stop, None]
            buffer.exp_()  # p
            if entropy_term is not None:
                entropy_term.mul_(buffer)
            # d logprob_t / d z = onehot(target) - p
            grad_logits = buffer.mul_(-grad_logprobs[start:stop, None])
            grad_logits.scatter_add_(1, targets[start:stop, None], grad_logprobs[start:stop, None])
            if entropy_term is not None:
                grad_logits.sub_(entropy_term)
                del entropy_term
            if ctx.temperature != 1.0:
                grad_logits /= ctx.temperature
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
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def selected_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    return_entropy: bool = False,
):
    """log softmax(hidden @ weight.T / temperature)[targets], chunked over tokens.

    Args:
        hidden: [..., H] final hidden states (any float dtype; logits are taken in float32).
        weight: [V, H] LM-head weight; bias: optional [V].
        targets: [...] int64 token ids in [0, V), same leading shape as hidden.
        chunk_tokens: tokens per chunk; extra memory ~ 2 * chunk_tokens * V floats
            (3 with entropy) plus the weight gradient.
        return_entropy: also return the entropy of each position's distribution.

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
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    vocab = weight.shape[0]
    flat_targets = targets.reshape(-1)
    if flat_targets.numel() and (int(flat_targets.min()) < 0 or int(flat_targets.max()) >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}), found [{int(flat_targets.min())}, {int(flat_targets.max())}]")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    logprobs, entropy = _SelectedLogprobs.apply(
        flat_hidden, weight, bias, flat_targets, chunk_tokens, float(temperature), return_entropy
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
