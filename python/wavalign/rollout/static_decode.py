"""Decode steps of Llama-family models on a preallocated KV cache.

Hugging Face's DynamicCache grows by `torch.cat` at every step, copying each layer's whole
cache, and every forward rebuilds the attention mask and walks the generic model code. For a
small model that glue costs more than the arithmetic (the built-in world's policy: ~70% of
its decode forward). `StaticDecoder` runs the same decode step on cache buffers allocated
once per `generate`: each step writes one slot per layer and attends over the filled slots.

Its output is bit-for-bit HF's: it calls the model's own modules (embedding, norms,
projections, MLP, rotary embedding, LM head; LoRA-wrapped projections included) and the
same `scaled_dot_product_attention` call with the same arguments that transformers' sdpa
attention makes (tests compare the logits exactly). What it does not reproduce it refuses
(`unsupported_reason`), and the engine keeps the HF cache for that model.

With `graphs=True` (CUDA only) each decode step is captured once per batch-size bucket and
replayed (`torch.cuda.CUDAGraph`): shapes are then static, so attention runs over the whole
capacity with the unfilled slots masked. That changes the reduction length, so graph runs
agree with HF up to rounding rather than bit for bit.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

# Architectures whose decoder layer is exactly: x + o_proj(attn(rope(q, k), v)) after
# input_layernorm, then x + mlp(post_attention_layernorm(x)); checked again module by module.
_SUPPORTED_TYPES = ("llama", "qwen2")


def _base(model):
    """A PeftModel's model (its LoRA layers live inside it), else the model itself."""
    return model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model


def unsupported_reason(model) -> str | None:
    """Why StaticDecoder cannot run this model (None: it can)."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:  # its attention and mask code is what is mirrored
        return f"transformers {transformers.__version__} (the static cache mirrors transformers 5)"
    model = _base(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _SUPPORTED_TYPES:
        return f"model_type {model_type!r} is not one of {_SUPPORTED_TYPES}"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attn_implementation {getattr(config, '_attn_implementation', None)!r} (only 'sdpa' is reproduced)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "no model.model.layers / lm_head"
    if any(layer_type != "full_attention" for layer_type in getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    rope = str(getattr(getattr(inner, "rotary_emb", None), "rope_type", "default"))
    if "dynamic" in rope or rope == "longrope":
        return f"rope_type {rope!r} depends on the sequence length"
    if getattr(model, "use_kernels", False):
        return "use_kernels=True (hub kernels replace the rotary and attention code that is mirrored)"
    if os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA", "0") == "1":
        return "TRANSFORMERS_SDPA_FORCE_GQA=1 changes transformers' attention branch"
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "sharded (FSDP2) parameters"
    return None


class StaticDecoder:
    """Decode steps for `rows` sequences on cache buffers of `capacity` slots.

    Built from the prefill's HF cache and its [rows, width] attention mask (1 = a prompt
    token, 0 = left padding); the prefill's keys/values fill the first `width` slots.
    """

    def __init__(self, model, prefill_cache, mask: torch.Tensor, capacity: int, *, graphs: bool = False):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"StaticDecoder cannot run this model: {reason}")
        self.model = _base(model)
        self.inner = self.model.model
        rows, width = mask.shape
        if capacity < width:
            raise ValueError(f"capacity {capacity} is smaller than the prompt width {width}")
        layers = list(self.inner.layers)
        first = prefill_cache.layers[0].keys  # [rows, kv heads, width, head dim]
        kv_heads, head_dim = first.shape[1], first.shape[3]
        shape = (len(layers), rows, kv_heads, capacity, head_dim)
        # Eager steps read only filled slots, so the buffers need no initialisation; graph
        # replays attend over every slot (masked), and a masked NaN would still poison the sum.
        allocate = first.new_zeros if graphs else first.new_empty
        self.keys = allocate(shape)  # [layers, rows, kv heads, capacity, head dim]
        self.values = allocate(shape)
        for index in range(len(layers)):
            cached = prefill_cache.layers[index]
            self.keys[index, :, :, :width] = cached.keys
            self.values[index, :, :, :width] = cached.values
        self.valid = torch.zeros((rows, capacity), dtype=torch.bool, device=mask.device)  # slots a row attends to
        self.valid[:, :width] = mask.bool()
        self.rows, self.filled, self.capacity = rows, width, capacity
        # transformers' sdpa attention passes no mask when no row is padded (then the query
        # attends to every slot, as the mask would say) and a [rows, 1, 1, slots] boolean mask
        # otherwise; which one decides the GQA branch, so it is mirrored exactly.
        self.padded = not bool(mask.bool().all())
        self.head_dim = head_dim
        self.graphs = None
        if graphs:
            from wavalign.rollout.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self)  # holds no reference back: the buffers free with the decoder

    def select(self, keep: torch.Tensor) -> None:
        """Keep rows `keep` (1-D indices, ascending), moved to the front of the buffers."""
        n, filled = keep.numel(), self.filled
        for buffer in (self.keys, self.values):
            for layer in buffer:  # [rows, kv heads, capacity, D]; per layer, only the filled slots
                # (an index_select per layer is ~6x faster here than one strided advanced index)
                layer[:n, :, :filled] = layer[:, :, :filled].index_select(0, keep)
        self.valid[:n] = self.valid[keep]
        self.rows = n
        if self.graphs is None:  # views, so a captured graph keeps its addresses
            self.keys, self.values, self.valid = self.keys[:, :n], self.values[:, :n], self.valid[:n]
        self.padded = self.padded and not bool(self.valid[:n, :self.filled].all())

    def step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids, positions: [rows] int64 (each row's new token and its position id).
        Returns the next-token logits, [rows, vocab]; the token's keys/values take the next slot."""
        if self.filled >= self.capacity:
            raise RuntimeError(f"the static cache is full ({self.capacity} slots)")
        slot = self.filled
        if self.graphs is not None:
            logits = self.graphs.step(self, ids, positions, slot)
        else:
            self.valid[:, slot] = True
            logits = self.forward(ids, positions, slot, self.keys, self.values,
                                  self.valid[:, None, None, :slot + 1] if self.padded else None, slot + 1)
        self.filled = slot + 1
        return logits

    def forward(self, ids, positions, slot, keys, values, attend, length):
        """One decode step: write slot `slot` (an int, or a [1] device tensor for graph
        capture), attend over slots [0, length) (None: all) under `attend` ([rows, 1, 1,
        slots] bool, or None for all). keys/values: [layers, rows, kv heads, capacity, D],
        or a list of each layer's [rows, kv heads, capacity, D] (what a `torch.compile`d
        step needs to update the buffers in place; benchmarks/bench_decode_compile.py).
        The layer code follows transformers' LlamaDecoderLayer / LlamaAttention /
        sdpa_attention_forward line for line."""
        inner = self.inner
        rows, head_dim = ids.shape[0], self.head_dim
        hidden = inner.embed_tokens(ids[:, None])  # [rows, 1, hidden]
        cos, sin = inner.rotary_emb(hidden, positions[:, None])  # [rows, 1, head dim]
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1, 1, head dim], broadcast over heads
        for index, layer in enumerate(inner.layers):
            attention = layer.self_attn
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            query = attention.q_proj(hidden).view(rows, 1, -1, head_dim).transpose(1, 2)  # [rows, heads, 1, D]
            key = attention.k_proj(hidden).view(rows, 1, -1, head_dim).transpose(1, 2)  # [rows, kv heads, 1, D]
            value = attention.v_proj(hidden).view(rows, 1, -1, head_dim).transpose(1, 2)
            query = (query * cos) + (_rotate_half(query) * sin)
            key = (key * cos) + (_rotate_half(key) * sin)
            layer_keys, layer_values = keys[index], values[index]  # [rows, kv heads, capacity, D]
            if isinstance(slot, torch.Tensor):
                layer_keys.index_copy_(2, slot, key)
                layer_values.index_copy_(2, slot, value)
            else:
                layer_keys[:, :, slot:slot + 1] = key
                layer_values[:, :, slot:slot + 1] = value
            out = _attend(attention, query, layer_keys[:, :, :length], layer_values[:, :, :length], attend)
            hidden = residual + attention.o_proj(out)
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = inner.norm(hidden)
        return self.model.lm_head(hidden)[:, -1, :]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attend(attention, query, key, value, mask):
    """transformers' sdpa_attention_forward for one query token (no dropout, no softcap):
    query [rows, heads, 1, D], key/value [rows, kv heads, slots, D], mask None or
    [rows, 1, 1, slots] bool. Returns [rows, 1, heads * D]."""
    rows = query.shape[0]
    groups = getattr(attention, "num_key_value_groups", 1)
    extra = {}
    if groups > 1:
        if mask is None and key.shape[-1] == value.shape[-1] <= 256:
            extra["enable_gqa"] = True
        else:  # one query token: the group's query heads become the query-length axis
            query = query.reshape(rows, query.shape[1] // groups, groups, query.shape[-1])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                         scale=attention.scaling, is_causal=False, **extra)
    out = out.reshape(out.shape[0], -1, 1, value.shape[-1]).transpose(1, 2).contiguous()
    return out.reshape(rows, 1, -1)
