"""Trainer parts that need no world: config, data, pairs, packing + log-probs, checkpoints."""

import json
import os
import wave

import pytest
import torch

from wavalign.modality import ModalitySpec, Schedule
from wavalign.train import checkpoint as ckpt
from wavalign.train.config import ConfigError, TrainConfig, apply_override
from wavalign.train.data import PromptSampler, RecordConverter, TrainExample, batch_columns, load_jsonl_examples
from wavalign.train.pairs import best_vs_worst, gold_vs_sampled, pair_scores


# ---------------------------------------------------------------------------- config
def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    config = TrainConfig()
    assert config.mode == "hybrid" and config.objective.rl_scope == "text" and config.objective.sft_scope == "all"
    assert not config.needs_reference
    config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == config


def test_overrides_parse_values_as_yaml():
    config = TrainConfig.load(None, ["optim.lr=1e-4", "rollout.group_size=8", "gate.mode=fixed",
                                     "objective.rl_type_weights=[1, 0.5]", "mode=grpo"])
    assert config.optim.lr == 1e-4 and config.rollout.group_size == 8 and config.gate.mode == "fixed"
    assert config.objective.rl_type_weights == (1, 0.5) and config.mode == "grpo"


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"), ("rollout.group_size=0", "rollout.group_size"),
    ("rollout.top_p=1.5", "rollout.text.top_p"), ("rollout.speech.top_k=-1", "rollout.speech.top_k"),
    ("rollout.text.tempreature=1", "rollout.text.tempreature"), ("objective.rl_scope=speechy", "objective.rl_scope"),
    ("mode=ppo", "mode"), ("gate.ema=1.0", "gate.ema"), ("optim.betas=[0.9]", "optim.betas"),
    ("rewards.max_failure_rate=2", "rewards.max_failure_rate"), ("optim.nosuch=1", "optim.nosuch"),
    ("run.name=a/b", "run.name"), ("data.source=jsonl", "data.train_path"),
    ("rollout.kv_cache=paged", "rollout.kv_cache"), ("rollout.cuda_graphs=1", "rollout.cuda_graphs"),
])
def test_invalid_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.load(None, [override])


def test_cuda_graphs_need_the_engine_and_the_static_cache():
    for override in ("rollout.backend=hf_generate", "rollout.kv_cache=dynamic"):
        with pytest.raises(ConfigError, match="rollout.cuda_graphs needs rollout.backend engine"):
            TrainConfig.load(None, ["rollout.cuda_graphs=true", override])
    assert TrainConfig.load(None, ["rollout.cuda_graphs=true"]).rollout.cuda_graphs
    with pytest.raises(ConfigError, match="cannot run with distributed.strategy=fsdp2"):
        TrainConfig.load(None, ["rollout.cuda_graphs=true", "distributed.strategy=fsdp2"])


def test_reward_options_refuse_an_api_key():
    with pytest.raises(ConfigError, match="api_key_env"):
        TrainConfig.from_dict({"data": {"source": "jsonl", "train_path": "x.jsonl"}, "model": {"path": "/m"},
                               "rewards": {"components": [{"name": "j", "kind": "http_judge",
                                                           "options": {"base_url": "http://x", "api_key": "sk-1"}}]}})


def test_override_syntax_errors_are_clear():
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_override({}, "optim.lr")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"optim": 3}, "optim.lr=1")


@pytest.mark.parametrize("preset", ["world", "vita_audio_balance", "glm4_voice", "kimi_like"])
def test_train_presets_load(preset):
    from pathlib import Path

    import wavalign

    path = Path(wavalign.__file__).parent / "configs" / "train" / f"{preset}.yaml"
    config = TrainConfig.load(path)
    assert config.mode == "hybrid" and config.objective.rl_scope == "text"
    if preset == "world":
        from wavalign.train.__main__ import EMBEDDED_DEFAULT_OVERRIDES

        # the preset spells out the embedded default: the defaults plus the SFT-only baseline
        assert config == TrainConfig.load(None, EMBEDDED_DEFAULT_OVERRIDES) and config.eval.baseline == "sft"
    else:
        assert config.data.source == "jsonl" and config.rewards.components[0].kind == "http_judge"


def test_real_model_preset_without_the_model_fails_clearly(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "wavalign.train", "--config", "configs/train/vita_audio_balance.yaml",
                           "--set", f"run.output_dir={tmp_path}", "--set", "run.device=cpu"],
                          capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.returncode == 2 and "no such model directory" in proc.stderr, proc.stderr


def test_reference_model_only_when_needed():
    assert TrainConfig(mode="dpo").needs_reference
    assert TrainConfig.load(None, ["objective.kl_beta_speech=0.1"]).needs_reference
    assert not TrainConfig(mode="sft").needs_reference


# ---------------------------------------------------------------------------- data
class _Tok:
    """A character tokenizer: ids 10.. for letters, enough for GenericFormat."""

    all_special_ids = [0, 1, 2]
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [10 + (ord(c) - 97) for c in text if c.isalpha()]})()

    def decode(self, ids):
        return "".join(chr(97 + i - 10) for i in ids)


SPEC = ModalitySpec(vocab_size=100, text_ranges=((0, 40),), speech_ranges=((50, 100),), eos=0, pad=1,
                    begin_audio=40, end_audio=41, schedule=Schedule.sequential())


def _converter(**kw):
    from wavalign.train.data import GenericFormat

    return RecordConverter(GenericFormat(_Tok(), SPEC), SPEC.vocab_size, **kw)


def test_wavalign_records_become_examples(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt_text": "hi", "response_text": "ok", "response_units": [0, 3],
                                "answer": "ok"}) + "\n\n" +
                    json.dumps({"prompt_ids": [5, 6], "response_ids": [10, 40, 52, 41, 0]}) + "\n")
    examples, skipped = load_jsonl_examples(path, _converter())
    assert skipped == 0 and len(examples) == 2
    first = examples[0]
    assert first.prompt_ids == [17, 18] and first.prompt_text == "hi"
    assert first.response_ids == [24, 20, 40, 50, 53, 41, 0]  # text, <boa>, units + offset 50, <eoa>, eos
    assert first.columns == {"id": "a", "answer": "ok"}
    assert examples[1].response_ids == [10, 40, 52, 41, 0]


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
    (json.dumps({"response_text": "x"}), "needs prompt_ids"),
    (json.dumps({"prompt_text": "a", "response_text": "x"}), "go together"),
    (json.dumps({"prompt_ids": [5, 500]}), "outside"),
    (json.dumps({"prompt_text": "a", "response_text": "x", "response_units": [99]}), "units must lie"),
    (json.dumps({"prompt_ids": "12"}), "list of integers"),
])
def test_bad_lines_name_file_and_line_or_are_skipped_and_counted(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt_text": "ab"})
    path.write_text(good + "\n" + line + "\n" + good + "\n")
    with pytest.raises(ValueError, match=rf"d\.jsonl:2: .*{problem}"):
        load_jsonl_examples(path, _converter())
    examples, skipped = load_jsonl_examples(path, _converter(), skip_bad_lines=True)
    assert skipped == 1 and len(examples) == 2


def test_schedule_breaking_response_ids_are_rejected(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt_text": "a", "response_text": "b", "response_units": [1]}) + "\n")
    chunked = ModalitySpec(**{**SPEC.__dict__, "end_text": 42, "schedule": Schedule.chunked(2, 3)})
    from wavalign.train.data import GenericFormat

    examples, _ = load_jsonl_examples(path, RecordConverter(GenericFormat(_Tok(), chunked), 100))
    assert examples[0].response_ids == [11, 42, 51, 41, 0]
    with pytest.raises(ValueError, match="breaks the schedule"):
        SPEC.layout_response([10, 55], [51])  # a speech id inside the text part


def _write_wav(path, samples, rate=16000):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(b"".join(int(s * 32767).to_bytes(2, "little", signed=True) for s in samples))


def test_public_wavalign_records_with_audio(tmp_path):
    _write_wav(tmp_path / "gold.wav", [0.0, 0.5, -0.5, 0.25])
    record = {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"}],
              "audios": [], "sft_target_text": "hi", "sft_target_audio": "gold.wav", "task_type": "qa",
              "question_text": "hello?"}
    (tmp_path / "p.jsonl").write_text(json.dumps(record) + "\n")
    seen = []

    class Codec:  # a SpeechCodec: only encode is needed to read records
        sample_rate = 16000

        def encode(self, waveform, rate):
            seen.append((waveform.shape[0], rate))
            return [1, 2]

    examples, _ = load_jsonl_examples(tmp_path / "p.jsonl", _converter(codec=Codec(), base_dir=tmp_path))
    assert seen == [(4, 16000)]
    e = examples[0]
    assert e.response_ids == [17, 18, 40, 51, 52, 41, 0] and e.columns["task_type"] == "qa"
    assert e.prompt_text == "hello?"
    with pytest.raises(ValueError, match=r"p\.jsonl:1: .*needs a speech codec"):
        load_jsonl_examples(tmp_path / "p.jsonl", _converter(base_dir=tmp_path))


def test_prompt_sampler_is_seeded_resumable_and_covers_each_epoch():
    a = PromptSampler(10, seed=3)
    first = a.next(10)
    assert sorted(first) == list(range(10))
    a.next(4)
    state = a.state_dict()
    rest = a.next(13)
    b = PromptSampler(10, seed=3)
    b.load_state_dict(state)
    assert b.next(13) == rest
    assert PromptSampler(10, seed=4).next(10) != first
    with pytest.raises(ValueError, match="same data"):
        PromptSampler(9, seed=3).load_state_dict(state)


def test_batch_columns_repeat_per_sample():
    examples = [TrainExample("a", [1], columns={"answer": "x"}), TrainExample("b", [1], columns={"style": "s"})]
    assert batch_columns(examples, 2) == {"answer": ["x", "x", None, None], "style": [None, None, "s", "s"]}


# ---------------------------------------------------------------------------- pairs
def test_best_vs_worst_respects_gap_and_missing_scores():
    nan = float("nan")
    scores = torch.tensor([[1.0, 4.0, 2.0], [3.0, 3.5, 3.2], [nan, 5.0, nan], [2.0, 5.0, 5.0]])
    pairs, stats = best_vs_worst(scores, min_gap=1.0)
    assert pairs == [(0, 1, 0), (3, 1, 0)]  # ties: the lower sample index wins
    assert stats == {"pairs/built": 2.0, "pairs/too_few_scores": 1.0, "pairs/below_gap": 1.0}


def test_gold_vs_sampled_skips_copies_of_the_gold():
    pairs, stats = gold_vs_sampled([[1, 2], None], [[[1, 2], [1, 3]], [[4]]])
    assert pairs == [(0, 1)] and stats["pairs/identical_to_gold"] == 1 and stats["pairs/no_gold"] == 1


def test_pair_scores():
    comps = {"semantic": torch.tensor([1.0, float("nan")]), "acoustic": torch.tensor([2.0, 3.0])}
    total = pair_scores(comps, torch.tensor([9.0, 9.0]), "sum")
    assert total[0] == 3 and torch.isnan(total[1])
    assert pair_scores(comps, torch.tensor([9.0, 8.0]), "weighted").tolist() == [9, 8]
    assert pair_scores(comps, None, "acoustic").tolist() == [2, 3]
    with pytest.raises(ValueError, match="pair_score"):
        pair_scores(comps, None, "loudness")


# ---------------------------------------------------------------------------- log-probs of packed batches
def test_packed_response_logprobs_equal_the_full_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    from wavalign.logprobs import ResponseLogprobs, ResponseRows, pack

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    responses = [[12, 40, 55, 41, 0], [20, 40, 60, 61, 62, 41, 0], [40, 51, 41, 0]]
    rows = ResponseRows.from_lists(prompts, responses, SPEC, pad_id=1)
    batch = pack(rows, pad_id=1, device="cpu")
    logp = ResponseLogprobs(model)(batch.ids, batch.mask, batch.starts, batch.width)
    assert logp.shape == (3, 7)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        full = torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0].float(), dim=-1)
        expected = full[len(p) - 1:len(p) + len(r) - 1].gather(1, torch.tensor(r)[:, None]).squeeze(1)
        torch.testing.assert_close(logp[row, :len(r)], expected, rtol=1e-4, atol=1e-5)
        assert (rows.types[row, len(r):] == -1).all() and (rows.types[row, :len(r)] >= 0).all()
    logp.sum().backward()  # the LM head (untied) gets a gradient
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- checkpoints
class _TinyModel:
    def __init__(self, value):
        self.value = value

    def save_pretrained(self, path, safe_serialization=True):
        from safetensors.torch import save_file

        save_file({"w": torch.full((2,), float(self.value))}, os.path.join(path, "model.safetensors"))


def test_checkpoints_are_atomic_pruned_and_found(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root) is None
    for step in (1, 2, 3):
        ckpt.save_checkpoint(root, step, model=_TinyModel(step), tokenizer=None, extra_files={"note.txt": "x"},
                             trainer_state={"step": step}, rank_states=[ckpt.rng_state()], keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000002", "step_000003"]
    latest = ckpt.latest_checkpoint(root)
    assert latest.name == "step_000003"
    state, rank_state = ckpt.load_trainer_state(latest, 0)
    assert state == {"step": 3} and "torch" in rank_state
    # a crash mid-save leaves only a hidden staging directory; latest still names a complete one
    (root / ".staging-step_000004-1").mkdir()
    assert ckpt.latest_checkpoint(root).name == "step_000003"
    with pytest.raises(FileNotFoundError, match="same number of processes"):
        ckpt.load_trainer_state(latest, 1)


def test_rng_state_round_trip():
    import random

    state = ckpt.rng_state()
    a = (random.random(), torch.rand(3))
    ckpt.set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_rollout_sampling_sections_and_the_old_flat_keys():
    config = TrainConfig.load(None, ["rollout.text.top_p=0.9", "rollout.speech.temperature=0.5"])
    text, speech = config.rollout.text_sampling, config.rollout.speech_sampling
    assert (text.temperature, text.top_p) == (0.7, 0.9)
    assert (speech.temperature, speech.top_p) == (0.5, 0.9)  # unset speech fields follow text
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.warns(DeprecationWarning, match=r"rollout\.temperature.*rollout\.text\.temperature"):
        old = TrainConfig.load(None, ["rollout.temperature=0.9", "rollout.speech_temperature=0.3", "rollout.top_k=5"])
    assert (old.rollout.text.temperature, old.rollout.text.top_k) == (0.9, 5)
    assert (old.rollout.speech_sampling.temperature, old.rollout.speech_sampling.top_k) == (0.3, 5)
    with pytest.raises(ConfigError, match=r"rollout\.temperature and rollout\.text\.temperature"):
        TrainConfig.load(None, ["rollout.temperature=0.9", "rollout.text.temperature=0.8"])
