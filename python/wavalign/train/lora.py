"""LoRA through PEFT (`model.lora`): the policy becomes a PeftModel whose only trainable
parameters are the adapters.

    policy = wrap(policy, config.model.lora, base_path)     # before DDP / FSDP2
    reference = AdapterDisabledReference(logprob_module)    # the base: adapters disabled, no copy

The reference for DPO or a KL penalty is the same module run under peft's
`disable_adapter()` (no second copy of the weights). A LoRA checkpoint holds the adapter
(`save_pretrained`: adapter_config.json + adapter_model.safetensors, whose
`base_model_name_or_path` names the base directory), the tokenizer, modality.yaml and the
trainer state; `python -m wavalign.train.export` merges it into a full model directory.
peft is imported only when a run asks for LoRA (`pip install 'wavalign[peft]'`).
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("model.lora needs peft: pip install 'wavalign[peft]'") from None
    return peft


def wrap(policy: torch.nn.Module, lora, base_path: Path, *, seed: int) -> torch.nn.Module:
    """The Hugging Face causal LM -> a PeftModel with LoRA adapters; the base weights frozen.
    lora: train.config.LoraConfig. base_path: recorded as base_model_name_or_path. The adapters'
    initial values come from `seed` alone (the same on every rank, whatever ran before), and
    the global RNG streams are left as they were."""
    peft = _peft()
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    peft_config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=targets, task_type="CAUSAL_LM")
    device = next(policy.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _quiet():
            torch.manual_seed(seed)
            model = peft.get_peft_model(policy, peft_config)
    except ValueError as error:  # e.g. "Target modules {...} not found in the base model"
        raise ValueError(f"model.lora.target_modules: {error}") from None
    head = model.get_base_model().get_output_embeddings()
    if _is_tuner_layer(head):  # ResponseLogprobs applies the head's weight itself, so an adapter there is skipped
        raise ValueError("model.lora.target_modules must not include the LM head (the output embedding); "
                         "name the attention / MLP projections or use 'all-linear'")
    model.peft_config[model.active_adapter].base_model_name_or_path = str(Path(base_path).resolve())
    return model


@contextmanager
def _quiet():
    """peft asks transformers 5 the deprecated is_gradient_checkpointing: not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _is_tuner_layer(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def adapter_names(model) -> dict[str, str]:
    """{key in adapter_model.safetensors: the PeftModel's parameter name} for every adapter
    parameter. peft saves the names without the adapter's own name ('.default')."""
    adapter = model.active_adapter
    return {name.replace(f".{adapter}", ""): name for name, p in model.named_parameters() if p.requires_grad}


def full_adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter parameters as full CPU tensors, keyed by the PeftModel's parameter names
    (what PeftModel.save_pretrained(state_dict=...) takes). Under FSDP2 the parameters are
    shards: each is gathered (a collective: every rank calls this, in the same order)."""
    state = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        value = p.detach()
        if hasattr(value, "full_tensor"):  # a DTensor shard; CPU-offloaded shards go to the mesh's device first
            if value.device.type != value.device_mesh.device_type:
                value = value.to(value.device_mesh.device_type)
            value = value.full_tensor()
        state[name] = value.cpu()
    return state


def check_adapter_weights(model, weights: dict, source) -> dict[str, torch.Tensor]:
    """Weights read from adapter_model.safetensors -> {PeftModel parameter name: tensor};
    fails naming `source` when they do not match the run's adapters."""
    names = adapter_names(model)
    missing = sorted(set(names) - set(weights))
    unexpected = sorted(set(weights) - set(names))
    if missing or unexpected:
        raise ValueError(f"{source}: the adapter weights do not match this run's model.lora (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return {names[key]: value for key, value in weights.items()}


class AdapterDisabledReference:
    """The reference policy of a LoRA run: the policy's own ResponseLogprobs run under
    `disable_adapter()` and torch.no_grad, i.e. the frozen base, without a second copy.

    Called like a ResponseLogprobs (ids, mask, starts, width, ...) -> [N, L]. Not an
    nn.Module: its weights are the policy's, and `parameters()` yields only the (frozen) base ones.
    """

    training = False

    def __init__(self, module: torch.nn.Module):
        self.module = module  # a ResponseLogprobs whose .lm is a PeftModel (an FSDP2 root, maybe)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        with torch.no_grad(), self.module.lm.disable_adapter():
            return self.module(*args, **kwargs)

    def reshard(self) -> None:
        """Nothing: under FSDP2 the root is the policy's, and the policy's backward reshards it."""

    def eval(self) -> "AdapterDisabledReference":
        return self

    def parameters(self):
        trainable = {id(p) for p in self.module.parameters() if p.requires_grad}
        return (p for p in self.module.parameters() if id(p) not in trainable)


def load_adapter_model(model_dir: Path, device: torch.device, dtype: torch.dtype = torch.float32,
                       *, trainable: bool = False):
    """A LoRA checkpoint or exported adapter directory -> the PeftModel over its base
    (adapter_config.json's base_model_name_or_path) on `device`."""
    from transformers import AutoModelForCausalLM

    peft = _peft()
    model_dir = Path(model_dir)
    base = base_model_path(model_dir)
    from wavalign.adapters import without_hub_kernels

    lm = AutoModelForCausalLM.from_pretrained(str(base), **without_hub_kernels({"dtype": dtype}))
    with _quiet():
        return peft.PeftModel.from_pretrained(lm, str(model_dir), is_trainable=trainable).to(device)


def base_model_path(model_dir: Path) -> Path:
    config_file = Path(model_dir) / ADAPTER_CONFIG
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file}: cannot read the adapter config ({error})") from None
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(f"{config_file}: base_model_name_or_path {base!r} is not a local model directory")
    return Path(base)


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()
