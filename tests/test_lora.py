"""LoRA through PEFT (model.lora): only adapters train, the reference is the base with its
adapters disabled (no second model), checkpoints hold the adapter and resume exactly, export
--merge, evaluation of an adapter directory, and 2-process gloo DDP / FSDP2 (+ CPU offload)."""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("peft")

from wavalign.train.config import ConfigError, LoraConfig, TrainConfig  # noqa: E402
from wavalign.train.run_log import read_metrics  # noqa: E402

BASE = ["data.world=fast", "optim.prompts_per_step=4", "rollout.group_size=3", "rollout.max_new_tokens=48",
        "eval.limit=6", "run.progress=false", "run.plots=false", "run.tensorboard=false", "run.save_every=0",
        "optim.warmup_steps=1"]
LORA = "model.lora={r: 4, alpha: 8}"
QUIET = ("eval.before=false", "eval.after=false")


def make_config(tmp_path, *extra):
    return TrainConfig.load(None, BASE + [f"run.output_dir={tmp_path}", *extra])


def steps_of(run_dir):
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def comparable(record):
    return {k: v for k, v in record.items() if not k.startswith("time/")}


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def run_cli(args, cwd, nproc=1):
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"] if nproc > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "wavalign.train", *args], cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)


def trainer_for(tmp_path, world, *extra, name="run", resume=False):
    from wavalign.train.trainer import Trainer

    return Trainer(make_config(tmp_path, f"run.name={name}", *extra), world=world, resume=resume)


def fit(tmp_path, world, *extra, name="run"):
    trainer = trainer_for(tmp_path, world, *extra, name=name)
    try:
        return trainer, trainer.fit()
    finally:
        trainer.close()


def is_adapter(name: str) -> bool:
    return "lora_" in name


# ---------------------------------------------------------------------------- config
def test_lora_config_section_is_validated_naming_the_field():
    assert TrainConfig().model.lora is None  # off by default
    config = TrainConfig.load(None, ["model.lora={r: 4, target_modules: [q_proj, v_proj]}"])
    assert config.model.lora == LoraConfig(r=4, target_modules=("q_proj", "v_proj"))
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.load(None, ["model.lora={}"]).model.lora.target_modules == "all-linear"
    for override, message in [("model.lora.r=0", "model.lora.r must be"),
                              ("model.lora.alpha=-1", "model.lora.alpha must be"),
                              ("model.lora.dropout=1.5", "model.lora.dropout must be"),
                              ("model.lora.target_modules=[]", "model.lora.target_modules must be"),
                              ("model.lora.target_modules=linear", "model.lora.target_modules must be"),
                              ("model.lora.rank=8", "unknown field"),
                              ("model.lora=yes", "model.lora must be a mapping"),
                              ("distributed.cpu_offload=1", "distributed.cpu_offload must be true or false"),
                              ("distributed.cpu_offload=true", "needs distributed.strategy=fsdp2")]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig.load(None, [override])
    offload = TrainConfig.load(None, ["distributed.strategy=fsdp2", "distributed.cpu_offload=true"])
    assert offload.distributed.cpu_offload


def test_lora_refuses_an_adapter_on_the_lm_head_and_unknown_modules(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from wavalign.train import lora

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    with pytest.raises(ValueError, match="must not include the LM head"):
        lora.wrap(LlamaForCausalLM(config), LoraConfig(target_modules=("q_proj", "lm_head")), tmp_path, seed=0)
    with pytest.raises(ValueError, match="model.lora.target_modules"):
        lora.wrap(LlamaForCausalLM(config), LoraConfig(target_modules=("no_such_proj",)), tmp_path, seed=0)
    a = lora.wrap(LlamaForCausalLM(config), LoraConfig(), tmp_path, seed=3)
    b = lora.wrap(LlamaForCausalLM(config), LoraConfig(), tmp_path, seed=3)
    state_b = b.state_dict()
    assert all(torch.equal(v, state_b[k]) for k, v in a.state_dict().items() if is_adapter(k))  # seeded init


# ---------------------------------------------------------------------------- training
def test_only_adapters_train_and_the_base_stays_unchanged(fast_world, tmp_path):
    from safetensors.torch import load_file

    trainer, summary = fit(tmp_path, fast_world, LORA, "optim.steps=2", "optim.lr=1e-2", *QUIET)
    policy = trainer.policy
    named = dict(policy.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(is_adapter(n) for n in trainable)
    assert any(is_adapter(n) for n in named) and len(trainable) == sum(is_adapter(n) for n in named)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(named[n]) for n in trainable}
    # the adapters moved (lora_B starts at zero), the base weights did not
    assert any(float(named[n].detach().abs().max()) > 0 for n in trainable if "lora_B" in n)
    base = load_file(str(fast_world.policy_path / "model.safetensors"))
    hf_state = policy.get_base_model().state_dict()
    for name, tensor in base.items():
        key = name if name in hf_state else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(hf_state[key], tensor), name
    records = steps_of(tmp_path / "run")
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) and r["grad_norm"] > 0 for r in records)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "modality.yaml",
                 "trainer_state.pt", "rank_0.pt"):
        assert (checkpoint / name).is_file(), name
    assert not (checkpoint / "model.safetensors").exists()


@pytest.mark.parametrize("mode_overrides", [("mode=dpo", "dpo.pairs=gold"), ("objective.kl_beta_text=0.05",)])
def test_reference_is_the_base_with_adapters_disabled_and_no_second_model(fast_world, tmp_path, monkeypatch,
                                                                           mode_overrides):
    from transformers import AutoModelForCausalLM

    from wavalign.logprobs import ResponseLogprobs, ResponseRows, RowLogprobs

    loads = []
    original = AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counting)
    trainer, _ = fit(tmp_path, fast_world, LORA, "optim.steps=2", "optim.lr=1e-2", *QUIET, *mode_overrides)
    assert len(loads) == 1, loads  # the policy only: the reference shares its weights
    reference = trainer.reference
    assert reference is not None and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    if "mode=dpo" in mode_overrides:
        assert all(r["pairs/built"] > 0 for r in steps_of(tmp_path / "run"))
    else:
        assert all("rl/kl_mean" in r for r in steps_of(tmp_path / "run"))
    monkeypatch.undo()
    full = trainer_for(tmp_path, fast_world, *mode_overrides, name="full")  # without LoRA: a frozen copy
    full.close()
    assert full.reference is not None and full.reference.lm is not full.policy

    examples = trainer.train_examples[:3]
    rows = ResponseRows.from_lists([e.prompt_ids for e in examples], [e.response_ids for e in examples],
                                   trainer.spec, trainer.pad_id)
    base = AutoModelForCausalLM.from_pretrained(str(fast_world.policy_path)).eval()
    with torch.no_grad():
        expected, _ = RowLogprobs(ResponseLogprobs(base), trainer.pad_id, trainer.device)(rows)
        adapted, _ = trainer.logprob_fn(rows)
    got, _ = trainer.ref_logprob_fn(rows)
    valid = rows.types.to(got.device) >= 0
    assert not got.requires_grad
    torch.testing.assert_close(got[valid], expected[valid], rtol=0, atol=1e-6)
    assert (adapted[valid] - expected[valid]).abs().max() > 1e-4  # the adapters matter when enabled
    assert trainer.policy.active_adapters and all(p.requires_grad for n, p in trainer.policy.named_parameters()
                                                  if is_adapter(n))  # re-enabled after the reference


def test_lora_resume_is_exact(fast_world, tmp_path):
    from safetensors.torch import load_file

    common = (LORA.replace("}", ", dropout: 0.1}"), "objective.kl_beta_text=0.05", "optim.steps=4",
              "optim.lr=5e-3", *QUIET)
    straight, _ = fit(tmp_path, fast_world, *common, name="straight")

    trainer = trainer_for(tmp_path, fast_world, *common, name="split")
    step = trainer.train_step

    def stop_after_two():
        out = step()
        trainer.stop_requested = trainer.step == 1  # fit() counts this step, saves and stops
        return out

    trainer.train_step = stop_after_two
    try:
        assert trainer.fit() == {"interrupted": True, "step": 2}
    finally:
        trainer.close()
    resumed = trainer_for(tmp_path, fast_world, *common, name="split", resume=True)
    try:
        assert resumed.step == 2
        resumed.fit()
    finally:
        resumed.close()
    a, b = steps_of(tmp_path / "straight"), steps_of(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert comparable(x) == comparable(y), (x["step"], comparable(x), comparable(y))
    final = "checkpoints/step_000004/adapter_model.safetensors"
    w_a, w_b = load_file(str(tmp_path / "straight" / final)), load_file(str(tmp_path / "split" / final))
    assert sorted(w_a) == sorted(w_b) and all(torch.equal(w_a[k], w_b[k]) for k in w_a)


def test_export_merge_and_evaluating_an_adapter_checkpoint(fast_world, tmp_path):
    from safetensors.torch import load_file

    from wavalign.eval.checkpoints import load_model, resolve_target
    from wavalign.train import export

    trainer, _ = fit(tmp_path, fast_world, LORA, "optim.steps=3", "optim.lr=5e-2", "eval.before=false",
                     "eval.limit=8")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000003"
    assert resolve_target(str(checkpoint)).model_dir == checkpoint
    assert resolve_target(str(tmp_path / "run")).model_dir == checkpoint

    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    assert export.main([str(checkpoint), "--out", str(merged_dir), "--merge"]) == 0
    assert export.main([str(tmp_path / "run"), "--out", str(adapter_dir)]) == 0  # a run dir: its latest
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modality.yaml"):
        assert (merged_dir / name).is_file(), name
    assert not (merged_dir / "adapter_config.json").exists() and not (merged_dir / "trainer_state.pt").exists()
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "modality.yaml"):
        assert (adapter_dir / name).is_file(), name
    assert not list(adapter_dir.glob("rank_*.pt")) and not (adapter_dir / "trainer_state.pt").exists()
    assert export.main([str(checkpoint), "--out", str(merged_dir)]) == 2  # never over an existing export
    merged_weights = load_file(str(merged_dir / "model.safetensors"))
    base_weights = load_file(str(fast_world.policy_path / "model.safetensors"))
    assert sorted(merged_weights) == sorted(base_weights)
    assert any(not torch.equal(merged_weights[k], base_weights[k]) for k in base_weights)

    device = torch.device("cpu")
    merged, merged_spec = load_model(merged_dir, device)
    adapted, adapted_spec = load_model(adapter_dir, device)  # the base + the adapter, as trained
    assert merged_spec == adapted_spec == trainer.spec
    assert not any(p.requires_grad for p in adapted.parameters())
    evaluator = trainer.evaluator
    trained = evaluator.generate(trainer.policy)  # the rollout engine runs the PeftModel, adapters active
    base, _ = load_model(fast_world.policy_path, device)
    assert evaluator.generate(base) != trained
    assert evaluator.generate(adapted) == trained
    assert evaluator.generate(merged) == trained  # greedy: the merged directory answers as the adapted model


# ---------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_lora_under_two_process_gloo_ddp_fsdp2_and_cpu_offload(fast_world, tmp_path):
    from safetensors.torch import load_file

    common = sets(*BASE, LORA, "objective.kl_beta_text=0.05", "optim.lr=5e-3", "optim.steps=3", *QUIET,
                  "run.device=cpu", "run.save_every=1", "run.keep_checkpoints=5", f"run.output_dir={tmp_path}",
                  "objective.sft_normalization=sequence_mean")
    single = run_cli([*common, "--name", "one"], tmp_path)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    runs = {"ddp": [], "fsdp": sets("distributed.strategy=fsdp2"),
            "offload": sets("distributed.strategy=fsdp2", "distributed.cpu_offload=true")}
    for name, extra in runs.items():
        done = run_cli([*common, *extra, "--name", name], tmp_path, nproc=2)
        assert done.returncode == 0, name + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
    one = steps_of(tmp_path / "one")
    final = "checkpoints/step_000003/adapter_model.safetensors"
    w_one = load_file(str(tmp_path / "one" / final))
    for name in runs:
        two = steps_of(tmp_path / name)
        assert len(one) == len(two) == 3
        for a, b in zip(one, two):
            for key in ("reward/mean", "gate/lambda", "loss/rl", "loss/sft", "loss/total", "rl/kl_mean",
                        "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (name, a["step"], key, a[key], b[key])
        w_two = load_file(str(tmp_path / name / final))  # the adapter, gathered from shards under FSDP2
        assert sorted(w_one) == sorted(w_two)
        for key in w_one:
            torch.testing.assert_close(w_one[key], w_two[key], rtol=1e-4, atol=1e-5)
    # CPU offload changes where shards live, not the arithmetic: the same metrics as FSDP2 without it
    for a, b in zip(steps_of(tmp_path / "fsdp"), steps_of(tmp_path / "offload")):
        assert comparable(a) == comparable(b), (a["step"], comparable(a), comparable(b))

    # FSDP2 resume from step 2 (adapter and optimizer state loaded into the shards): step 3 again, exactly
    uninterrupted = [comparable(r) for r in read_metrics(tmp_path / "fsdp")]
    kept = load_file(str(tmp_path / "fsdp" / final))
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step_000003")
    (tmp_path / "fsdp" / "checkpoints" / "latest").write_text("step_000002\n")
    resumed = run_cli(["--resume", str(tmp_path / "fsdp")], tmp_path, nproc=2)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "at step 2" in resumed.stdout
    assert [comparable(r) for r in read_metrics(tmp_path / "fsdp")] == uninterrupted
    again = load_file(str(tmp_path / "fsdp" / final))
    assert all(torch.equal(kept[k], again[k]) for k in kept)
