"""Real models end to end with stand-ins built here: a remote-code model directory whose
forward takes an extra audio-feature input, a ModelAdapter that supplies it, and the
hf_generate rollout backend. Nothing is downloaded."""

import json
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch

from wavalign.adapters import ModelAdapter, collate_extras
from wavalign.modality import ModalitySpec, Schedule
from wavalign.rollout import RolloutEngine, SamplingParams
from wavalign.rollout.engine import ModalitySampling
from wavalign.rollout.hf_generate import HFGenerateRollout
from wavalign.train.config import TrainConfig

MODELING = '''
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


class TinyAudioConfig(Qwen2Config):
    model_type = "tiny_audio_lm"

    def __init__(self, audio_dim=4, audio_token_id=4, **kwargs):
        super().__init__(**kwargs)
        self.audio_dim, self.audio_token_id = audio_dim, audio_token_id


class TinyAudioForCausalLM(Qwen2ForCausalLM):
    """A causal LM whose forward takes audio_features [N, F, audio_dim]: their projection is
    added to the input embedding at every <|audio_ctx|> position (as VITA-Audio splices its
    audio encoder's output into the prompt)."""

    config_class = TinyAudioConfig

    def __init__(self, config):
        super().__init__(config)
        self.audio_proj = torch.nn.Linear(config.audio_dim, config.hidden_size)
        self.audio_calls = {"no_grad": 0, "grad": 0}

    def forward(self, input_ids=None, audio_features=None, inputs_embeds=None, **kwargs):
        if audio_features is not None and input_ids is not None:
            self.audio_calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
            embeds = self.get_input_embeddings()(input_ids)
            where = (input_ids == self.config.audio_token_id).to(embeds.dtype)  # [N, W]
            feature = self.audio_proj(audio_features.to(embeds.dtype).mean(dim=1))  # [N, H]
            embeds = embeds + 8.0 * where[..., None] * feature[:, None, :]
            return super().forward(input_ids=None, inputs_embeds=embeds, **kwargs)
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
'''

ADAPTER = '''
import torch
from wavalign.adapters import ModelAdapter
from wavalign.audio_io import read_audio


class TinyAudioAdapter(ModelAdapter):
    """Audio features of a prompt: 6 frames x (energy, peak, mean, spread) of its question audio."""

    def __init__(self, frames=6):
        self.frames = frames

    def prompt_inputs(self, example):
        wave, rate = read_audio(example.columns["question_audio"])
        frames = wave[: len(wave) // self.frames * self.frames].view(self.frames, -1)
        features = torch.stack([frames.pow(2).mean(1), frames.abs().amax(1), frames.mean(1), frames.std(1)], 1)
        return {"audio_features": features[None]}  # [1, F, 4]
'''

WORDS = ["<pad>", "</s>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|audio_ctx|>"] + [f"w{i}" for i in range(20)]
WORDS += [f"<|audio_{i}|>" for i in range(16)]
AUDIO_CTX = 4


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    """A model directory with its own modeling code (config.json auto_map), a tokenizer and
    a modality.yaml that keeps <|audio_ctx|> out of both modalities (never sampled)."""
    import importlib.util

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("remote_code_model")
    (path / "modeling_tiny_audio.py").write_text(MODELING)
    loader = importlib.util.spec_from_file_location("tiny_audio_build", path / "modeling_tiny_audio.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    torch.manual_seed(0)
    config = module.TinyAudioConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1)
    module.TinyAudioForCausalLM(config).save_pretrained(path)
    saved = json.loads((path / "config.json").read_text())
    saved["auto_map"] = {"AutoConfig": "modeling_tiny_audio.TinyAudioConfig",
                         "AutoModelForCausalLM": "modeling_tiny_audio.TinyAudioForCausalLM"}
    (path / "config.json").write_text(json.dumps(saved))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>").save_pretrained(path)
    spec = ModalitySpec(vocab_size=len(WORDS), text_ranges=[(0, 4), (5, 25)], speech_ranges=[(25, 41)], eos=1, pad=0,
                        begin_audio=2, end_audio=3, schedule=Schedule.ratio([2, 4, 3, 5]))
    spec.to_yaml(path / "modality.yaml")
    return path


@pytest.fixture(scope="module")
def adapter_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter_pkg")
    (path / "tiny_adapter.py").write_text(ADAPTER)
    sys.path.insert(0, str(path))
    yield "tiny_adapter:TinyAudioAdapter"
    sys.path.remove(str(path))
    sys.modules.pop("tiny_adapter", None)


def write_records(tmp_path, n=4):
    records = []
    for i in range(n):
        wave = (0.2 + 0.15 * i) * np.sin(2 * np.pi * (180 + 60 * i) * np.arange(4800) / 16000)
        audio = tmp_path / f"question_{i}.wav"
        soundfile.write(audio, wave.astype(np.float32), 16000, subtype="PCM_24")
        records.append({"id": f"q{i}", "prompt_ids": [5 + i, 6, AUDIO_CTX, 7], "response_text": f"w{3 + i} w4 w5",
                        "response_units": [1, 2, 3, 4, 5], "question_audio": str(audio)})
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return data


REWARD = '''
def distinct_words(prompts, completions, **columns):
    return [float(len(set(c.text.split()))) + 0.1 * len(c.speech_units) for c in completions]
'''


@pytest.fixture(scope="module")
def reward_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward_pkg")
    (path / "tiny_reward.py").write_text(REWARD)
    sys.path.insert(0, str(path))
    yield "tiny_reward:distinct_words"
    sys.path.remove(str(path))


def _config(remote_dir, adapter_module, reward_module, data, tmp_path, *extra):
    return TrainConfig.load(None, [
        f"model.path={remote_dir}", "model.trust_remote_code=true", f"model.adapter={{factory: {adapter_module}}}",
        "data.source=jsonl", f"data.train_path={data}", "eval.before=false", "eval.after=false",
        f"rewards.components=[{{name: words, kind: python, options: {{function: {reward_module}}}}}]",
        "optim.steps=2", "optim.prompts_per_step=2", "optim.warmup_steps=1", "rollout.group_size=2",
        "rollout.max_new_tokens=14", "run.device=cpu", f"run.output_dir={tmp_path}", "run.save_every=0",
        "run.plots=false", "run.progress=false", "run.report_to=[]", *extra])


@pytest.mark.parametrize("backend", ["engine", "hf_generate"])
def test_remote_code_model_trains_two_hybrid_steps_with_its_audio_input(remote_dir, adapter_module, reward_module,
                                                                         tmp_path, backend):
    from wavalign.train.trainer import Trainer

    data = write_records(tmp_path)
    trainer = Trainer(_config(remote_dir, adapter_module, reward_module, data, tmp_path,
                              f"rollout.backend={backend}", f"run.name={backend}"))
    try:
        model = trainer.policy
        assert type(model).__name__ == "TinyAudioForCausalLM"  # the directory's own code runs
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        summary = trainer.fit()
    finally:
        trainer.close()
    # The extra input reached the forward while rolling out (no grad) and while training (grad).
    assert model.audio_calls["no_grad"] >= 2 and model.audio_calls["grad"] >= 2, model.audio_calls
    assert summary["step"] == 2
    moved = [k for k, p in model.named_parameters() if not torch.equal(p.detach(), before[k])]
    assert "audio_proj.weight" in moved  # the audio path is trained through its effect on the loss
    lines = [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
    assert len([line for line in lines if "loss/total" in line]) == 2
    assert all(np.isfinite(line["loss/total"]) for line in lines if "loss/total" in line)


def test_remote_code_needs_trust_remote_code(remote_dir, adapter_module, reward_module, tmp_path):
    from wavalign.train.trainer import Trainer

    data = write_records(tmp_path)
    config = _config(remote_dir, adapter_module, reward_module, data, tmp_path, "model.trust_remote_code=false")
    with pytest.raises(ValueError, match="model.trust_remote_code=true"):
        Trainer(config)


def _load(remote_dir):
    return ModelAdapter().load_model(remote_dir, dtype=torch.float32, trust_remote_code=True,
                                     attn_implementation="eager").eval()


def _features(seed):
    return {"audio_features": torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(seed))}


def test_audio_input_changes_the_logits_and_both_backends_agree(remote_dir):
    model = _load(remote_dir)
    assert model.config._attn_implementation == "eager"  # model.attn_implementation reaches from_pretrained
    spec = ModalitySpec.from_yaml(remote_dir / "modality.yaml")
    ids = torch.tensor([[5, 6, AUDIO_CTX, 7]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        heard = model(input_ids=ids, **_features(0)).logits
    assert (plain[0, -1] - heard[0, -1]).abs().max() > 1e-3
    prompts = [[5, 6, AUDIO_CTX, 7], [8, AUDIO_CTX, 9]]
    extras = [_features(1), _features(2)]
    greedy = SamplingParams(text=ModalitySampling(temperature=0.0), speech=ModalitySampling(temperature=0.0),
                            max_new_tokens=12)
    engine = RolloutEngine(model, spec, pad_id=0).generate(prompts, n=2, params=greedy, extras=extras)
    hf = HFGenerateRollout(model, spec, pad_id=0).generate(prompts, n=2, params=greedy, extras=extras)
    assert torch.equal(engine.ids, hf.ids) and torch.equal(engine.lengths, hf.lengths)
    assert engine.finish_reasons == hf.finish_reasons
    valid = torch.arange(engine.ids.shape[1])[None] < engine.lengths[:, None]
    assert torch.allclose(engine.raw_logprobs[valid], hf.raw_logprobs[valid], atol=1e-4)
    assert torch.equal(engine.phases, hf.phases) and torch.equal(engine.allowed_sets, hf.allowed_sets)
    without = RolloutEngine(model, spec, pad_id=0).generate(prompts, n=2, params=greedy)
    same = (without.ids.shape == engine.ids.shape and torch.equal(without.ids, engine.ids)
            and torch.allclose(without.raw_logprobs, engine.raw_logprobs, atol=1e-3))
    assert not same  # the engine's prefill did hear the features


def test_hf_generate_sampling_logprobs_match_the_engine_definition(remote_dir):
    """Sampled with temperature per modality: the recomputed sampling log-probs are those of
    the tempered, schedule-masked distribution (checked against a direct computation)."""
    model = _load(remote_dir)
    spec = ModalitySpec.from_yaml(remote_dir / "modality.yaml")
    params = SamplingParams(text=ModalitySampling(temperature=0.8), speech=ModalitySampling(temperature=1.3),
                            max_new_tokens=10, seed=3)
    out = HFGenerateRollout(model, spec, pad_id=0).generate([[5, 6, AUDIO_CTX, 7]], n=3, params=params,
                                                            extras=[_features(4)])
    from wavalign.logprobs import allowed_set_masks

    masks = allowed_set_masks(spec, spec.vocab_size)
    for row in range(3):
        length = int(out.lengths[row])
        ids = torch.tensor([[5, 6, AUDIO_CTX, 7] + out.ids[row, :length].tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids, **_features(4)).logits[0, 3:3 + length].float()  # [length, V]
        raw = torch.log_softmax(logits, -1).gather(1, out.ids[row, :length, None]).squeeze(1)
        assert torch.allclose(raw, out.raw_logprobs[row, :length], atol=1e-4)
        temperature = torch.where(out.phases[row, :length] == 1, 1.3, 0.8)
        masked = (logits / temperature[:, None]).masked_fill(~masks[out.allowed_sets[row, :length].long()], -torch.inf)
        sampled = torch.log_softmax(masked, -1).gather(1, out.ids[row, :length, None]).squeeze(1)
        assert torch.allclose(sampled, out.logprobs[row, :length], atol=1e-4)


def test_hf_generate_refuses_sampling_it_cannot_do(remote_dir):
    model = _load(remote_dir)
    spec = ModalitySpec.from_yaml(remote_dir / "modality.yaml")
    with pytest.raises(ValueError, match=r"rollout.text.top_p=0.9 needs rollout.backend=engine"):
        HFGenerateRollout(model, spec).generate([[5, 6]], params=SamplingParams(text=ModalitySampling(top_p=0.9)))
    with pytest.raises(ValueError, match="both be 0"):
        HFGenerateRollout(model, spec).generate(
            [[5, 6]], params=SamplingParams(text=ModalitySampling(temperature=0.0)))


def test_collate_pads_and_checks_extras():
    out = collate_extras([{"a": torch.ones(1, 2, 3)}, {"a": torch.ones(1, 4, 3)}])
    assert out["a"].shape == (2, 4, 3) and float(out["a"][0, 2:].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="batch dim 1"):
        collate_extras([{"a": torch.ones(2, 3)}])
    with pytest.raises(ValueError, match="differ between rows"):
        collate_extras([{"a": torch.ones(1, 3)}, {"b": torch.ones(1, 3)}])


def test_adapter_config_is_checked():
    from wavalign.adapters import load_adapter
    from wavalign.train.config import ConfigError

    with pytest.raises(ConfigError, match="model.adapter must be"):
        TrainConfig.load(None, ["model.adapter={factory: nocolon}"])
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_adapter({"factory": "no_such_module_xyz:Adapter"})
    assert textwrap.dedent("x") == "x"
