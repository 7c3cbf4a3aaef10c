"""Model adapters: what wavalign needs to know about a model beyond "a Hugging Face causal LM".

Most models need nothing: `ModelAdapter` (the default) loads any local HF causal LM
directory and feeds it input ids. A model that takes more — VITA-Audio's audio encoder
reads `audios` / `audio_indices` for a spoken prompt — is served by a subclass that says
which extra forward inputs each prompt carries:

    class MyAdapter(ModelAdapter):
        def prompt_inputs(self, example):          # once per prompt, cached on the example
            wave, rate = read_audio(example.prompt_audio[0])
            return {"audio_features": features(wave)[None]}      # every tensor has batch dim 1

    # config: model.adapter: {factory: "my_pkg.adapters:MyAdapter", init: {...}}

wavalign passes those inputs to the model's forward wherever the prompt is encoded, aligned
with the batch rows: the rollout's prefill (each prompt once; the decode steps then run on
the KV cache), `rollout.backend: hf_generate` (handed to `generate`, which expands them per
sample), and the training forward over prompt + response rows (each row gets its prompt's
inputs). `collate` decides how per-prompt inputs become one batch (default: concatenate
along dim 0, zero-padding other dims to the longest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from wavalign.imports import import_object

ExtraInputs = dict[str, torch.Tensor]  # forward keyword -> tensor with batch dim 1


def without_hub_kernels(options: dict) -> dict:
    """`options` for `from_pretrained` with transformers' hub kernels off.

    transformers 5.25 turned them on by default (`use_kernels=None` means True once the
    `kernels` package, now one of its dependencies, is installed): loading then fetches kernels
    from the Hugging Face Hub and swaps the layers wavalign's static KV cache reproduces, which
    sends every rollout to the slower dynamic cache. wavalign downloads nothing at run time, so
    they stay off unless the caller passes `use_kernels` itself (older transformers default to off).
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        options = {"use_kernels": False, **options}
    return options


class ModelAdapter:
    """The default adapter: any Hugging Face causal LM from a local directory, ids only."""

    def load_model(self, path: Path, *, dtype: torch.dtype, trust_remote_code: bool = False,
                   attn_implementation: str | None = None) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        options = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation is not None:
            options["attn_implementation"] = attn_implementation
        try:
            return AutoModelForCausalLM.from_pretrained(str(path), **without_hub_kernels(options))
        except ValueError as error:
            if not trust_remote_code and "trust_remote_code" in str(error):
                raise ValueError(f"{path}: this model ships its own modeling code; set model.trust_remote_code=true "
                                 f"to run it (only for directories you trust)") from None
            raise

    def load_tokenizer(self, path: Path, *, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)

    def output_embeddings(self, model) -> torch.nn.Module:
        """The LM head (its weight [V, H] scores every id)."""
        return model.get_output_embeddings()

    def prompt_inputs(self, example) -> ExtraInputs | None:
        """Extra forward inputs of one prompt (TrainExample: prompt_ids, prompt_audio paths,
        columns, ...), each tensor with batch dim 1; None when the prompt needs none."""
        return None

    def collate(self, per_row: Sequence[ExtraInputs]) -> ExtraInputs:
        """Per-row extra inputs -> one batch: each key's tensors concatenated along dim 0,
        other dims zero-padded to the longest. Override for inputs that are not batched
        tensors (e.g. lists of variable-length audio)."""
        return collate_extras(per_row)


def collate_extras(per_row: Sequence[ExtraInputs]) -> ExtraInputs:
    """[{key: [1, ...] tensor}] * N -> {key: [N, ...] tensor}, zero-padded to the longest."""
    if not per_row:
        return {}
    keys = set(per_row[0])
    for index, inputs in enumerate(per_row):
        if set(inputs) != keys:
            raise ValueError(f"extra forward inputs differ between rows: row 0 has {sorted(keys)}, row {index} has "
                             f"{sorted(inputs)}")
    out = {}
    for key in sorted(keys):
        tensors = [inputs[key] for inputs in per_row]
        for index, tensor in enumerate(tensors):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0 or tensor.shape[0] != 1:
                raise ValueError(f"extra input {key!r} of row {index} must be a tensor with batch dim 1, got "
                                 f"{getattr(tensor, 'shape', type(tensor).__name__)}")
            if tensor.dim() != tensors[0].dim():
                raise ValueError(f"extra input {key!r}: rows have {tensors[0].dim()} and {tensor.dim()} dims")
        shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
        padded = []
        for tensor in tensors:
            pad = []
            for d in reversed(range(1, tensor.dim())):
                pad += [0, shape[d] - tensor.shape[d]]
            padded.append(torch.nn.functional.pad(tensor, pad) if any(pad) else tensor)
        out[key] = torch.cat(padded, dim=0)
    return out


def rows_inputs(adapter: "ModelAdapter", per_row: Sequence[ExtraInputs | None] | None, device) -> ExtraInputs:
    """The collated extra inputs of a batch's rows on `device` ({} when no row has any)."""
    if per_row is None or all(inputs is None for inputs in per_row):
        return {}
    if any(inputs is None for inputs in per_row):
        raise ValueError("some rows of a batch carry extra forward inputs and others none; an adapter's "
                         "prompt_inputs must give every prompt the same inputs (or none to all)")
    return {k: v.to(device) for k, v in adapter.collate(per_row).items()}


def prompt_inputs_of(adapter: "ModelAdapter", examples: Sequence) -> list[ExtraInputs | None]:
    """adapter.prompt_inputs of each example, computed once and kept on the example."""
    out = []
    for example in examples:
        if not hasattr(example, "_extra_inputs"):
            example._extra_inputs = adapter.prompt_inputs(example)
        out.append(example._extra_inputs)
    return out


def load_adapter(spec: Mapping | None) -> ModelAdapter:
    """model.adapter {factory: "package.module:name", init: {...}} -> the ModelAdapter it
    builds; None -> the default adapter."""
    if spec is None:
        return ModelAdapter()
    target = spec.get("factory")
    adapter = import_object(target, "model.adapter", "factory")(**dict(spec.get("init") or {}))
    missing = [name for name in ("load_model", "load_tokenizer", "output_embeddings", "prompt_inputs", "collate")
               if not callable(getattr(adapter, name, None))]
    if missing:
        raise ValueError(f"model.adapter: {target} built a {type(adapter).__name__} without {missing}; subclass "
                         f"wavalign.adapters.ModelAdapter")
    return adapter
