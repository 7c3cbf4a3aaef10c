"""StaticDecoder: the decode step on a preallocated KV cache gives transformers' logits bit for
bit (Llama and Qwen2, multi-head and grouped-query attention, padded and unpadded prompts,
after compaction); the engine's rollouts are identical with and without it; models it does not
reproduce fall back (or fail clearly when it is required)."""

import pytest
import torch

from wavalign.modality import ModalitySpec, Schedule
from wavalign.rollout.engine import ModalitySampling, RolloutEngine, SamplingParams
from wavalign.rollout.static_decode import StaticDecoder, unsupported_reason

VOCAB = 48


def make_spec():
    # 0 pad, 1 eos, 2..29 text, 30 begin_audio, 31 end_audio, 32..47 speech
    return ModalitySpec(vocab_size=VOCAB, text_ranges=[(0, 30)], speech_ranges=[(32, 48)], eos=1, pad=0,
                        begin_audio=30, end_audio=31, schedule=Schedule.sequential())


def model_of(arch: str, *, kv_heads: int, dtype=torch.float32, attn: str = "sdpa", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                  pad_token_id=0, eos_token_id=1, bos_token_id=None, attn_implementation=attn)
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    model = (Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM)(config)
    return model.to(dtype).eval()


def prefill(model, prompts):
    engine = RolloutEngine(model, make_spec(), static_cache=False)
    return engine._prefill([torch.tensor(p) for p in prompts])


_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kv_heads", [4, 2])  # multi-head, grouped-query
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32), pytest.param("cuda", torch.float32, marks=_CUDA),
                                           pytest.param("cuda", torch.bfloat16, marks=_CUDA)])
def test_decode_logits_are_hf_bit_for_bit(arch, kv_heads, padded, device, dtype):
    model = model_of(arch, kv_heads=kv_heads, dtype=dtype).to(device)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15], [2, 3]] if padded else [[5, 6, 7], [8, 9, 10]] * 2
    steps = 12
    with torch.no_grad():
        logits, cache, mask, position = prefill(model, prompts)
        static_logits, static_cache, static_mask, _ = prefill(model, prompts)
        decoder = StaticDecoder(model, static_cache, static_mask, static_mask.shape[1] + steps)
        assert decoder.padded == padded
        generator = torch.Generator().manual_seed(1)
        for step in range(steps):
            ids = torch.randint(2, VOCAB, (len(position),), generator=generator).to(device)
            position = position + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=ids[:, None], attention_mask=mask, position_ids=position[:, None],
                        use_cache=True, cache=cache)
            logits, cache = out.logits[:, -1, :], out.cache
            static = decoder.step(ids, position)
            assert torch.equal(static, logits), f"step {step}: max |diff| {(static - logits).abs().max()}"
            if step == 5:  # compaction: rows 0 and 2 leave both caches
                keep = torch.tensor([1, 3], device=device)
                cache.batch_select_indices(keep)
                decoder.select(keep)
                mask, position = mask[keep], position[keep]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_rollouts_identical_with_and_without_static_cache(arch):
    model, spec = model_of(arch, kv_heads=2), make_spec()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    params = SamplingParams(text=ModalitySampling(temperature=0.9, top_p=0.9, repetition_penalty=1.2),
                            speech=ModalitySampling(temperature=1.1, top_k=6), max_new_tokens=40, seed=7)
    dynamic = RolloutEngine(model, spec, static_cache=False).generate(prompts, n=4, params=params)
    engine = RolloutEngine(model, spec)  # auto: Llama/Qwen2 with sdpa use the static cache
    assert engine.static_cache
    static = engine.generate(prompts, n=4, params=params)
    assert torch.equal(static.ids, dynamic.ids) and torch.equal(static.lengths, dynamic.lengths)
    assert torch.equal(static.logprobs, dynamic.logprobs)
    assert torch.equal(static.raw_logprobs, dynamic.raw_logprobs)
    assert static.finish_reasons == dynamic.finish_reasons
    assert len(set(static.lengths.tolist())) > 1  # rows finished at different steps: compaction ran


def test_unsupported_models_fall_back_or_fail_clearly():
    eager = model_of("llama", kv_heads=4, attn="eager")
    assert "attn_implementation 'eager'" in unsupported_reason(eager)
    assert not RolloutEngine(eager, make_spec()).static_cache  # auto: transformers' cache
    with pytest.raises(ValueError, match="static KV cache cannot run this model: attn_implementation"):
        RolloutEngine(eager, make_spec(), static_cache=True)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    assert "model_type 'gpt2'" in unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="cuda_graphs"):
        RolloutEngine(model_of("llama", kv_heads=4), make_spec(), static_cache=False, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs needs a model on a CUDA device, this one is on cpu"):
        RolloutEngine(model_of("llama", kv_heads=4), make_spec(), cuda_graphs=True)


def test_an_automatic_fallback_to_the_dynamic_cache_is_reported_once(monkeypatch, caplog):
    import wavalign.rollout as rollout

    monkeypatch.setattr(rollout, "_reported_refusals", set())
    eager = model_of("llama", kv_heads=4, attn="eager")
    with caplog.at_level("WARNING", logger="wavalign.rollout"):
        for _ in range(3):  # the trainer builds a sampler every step
            assert not rollout.make_sampler("engine", eager, make_spec()).static_cache
        rollout.make_sampler("engine", eager, make_spec(), kv_cache="dynamic")  # asked for: nothing to say
        rollout.make_sampler("engine", model_of("llama", kv_heads=4), make_spec())  # static: nothing to say
    said = [r.getMessage() for r in caplog.records if "static KV cache cannot run" in r.getMessage()]
    assert len(said) == 1 and "attn_implementation 'eager'" in said[0], said


def test_settings_that_change_transformers_attention_are_refused(monkeypatch):
    model = model_of("llama", kv_heads=2)
    assert unsupported_reason(model) is None
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    assert "TRANSFORMERS_SDPA_FORCE_GQA" in unsupported_reason(model)
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA")
    model.model.rotary_emb.rope_type = "longrope"
    assert "rope_type 'longrope'" in unsupported_reason(model)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_forward_on_per_layer_buffers_equals_the_stacked_buffers(kv_heads):
    # bench_decode_compile.py hands forward a list of per-layer buffers and a tensor slot
    # (what a compiled step updates in place); logits and the written cache must be the same.
    model = model_of("llama", kv_heads=kv_heads)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    with torch.no_grad():
        _, cache_a, mask, position = prefill(model, prompts)
        _, cache_b, _, _ = prefill(model, prompts)
        stacked = StaticDecoder(model, cache_a, mask, mask.shape[1] + 4)
        layered = StaticDecoder(model, cache_b, mask, mask.shape[1] + 4)
        keys, values = list(layered.keys), list(layered.values)  # views of layered's buffers
        attend = stacked.valid[:, None, None, :]
        for step in range(3):
            slot = mask.shape[1] + step
            stacked.valid[:, slot] = True
            ids = torch.tensor([4 + step, 20, 33])
            a = stacked.forward(ids, position + 1 + step, slot, stacked.keys, stacked.values,
                                attend[..., :slot + 1], slot + 1)
            b = layered.forward(ids, position + 1 + step, torch.tensor([slot]), keys, values,
                                attend[..., :slot + 1], slot + 1)
            assert torch.equal(a, b), f"step {step}"
        filled = slice(0, mask.shape[1] + 3)  # the slots beyond were never written (allocated uninitialised)
        assert torch.equal(stacked.keys[..., filled, :], layered.keys[..., filled, :])
        assert torch.equal(stacked.values[..., filled, :], layered.values[..., filled, :])


def test_the_cache_refuses_to_overflow():
    model = model_of("llama", kv_heads=4)
    with torch.no_grad():
        _, cache, mask, position = prefill(model, [[5, 6, 7]])
        decoder = StaticDecoder(model, cache, mask, mask.shape[1] + 1)
        decoder.step(torch.tensor([4]), position + 1)
        with pytest.raises(RuntimeError, match="static cache is full"):
            decoder.step(torch.tensor([4]), position + 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_steps_match_the_eager_static_step(dtype):
    model = model_of("qwen2", kv_heads=2, dtype=dtype).cuda()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15], [2, 3]]  # padded: the mask matters
    steps = 20
    with torch.no_grad():
        _, cache, mask, position = prefill(model, prompts)
        eager = StaticDecoder(model, cache, mask, mask.shape[1] + steps)
        _, cache, mask, _ = prefill(model, prompts)
        graphs = StaticDecoder(model, cache, mask, mask.shape[1] + steps, graphs=True)
        generator = torch.Generator().manual_seed(1)
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        for step in range(steps):  # teacher-forced: both decoders see the same ids
            ids = torch.randint(2, VOCAB, (len(position),), generator=generator).cuda()
            position = position + 1
            a, b = eager.step(ids, position), graphs.step(ids, position)
            torch.testing.assert_close(b.float(), a.float(), atol=tolerance, rtol=tolerance)
            if step == 8:  # compaction moves rows inside the captured buffers; a smaller bucket
                keep = torch.tensor([0, 3], device="cuda")
                eager.select(keep)
                graphs.select(keep)
                position = position[keep]
        assert sorted(graphs.graphs.graphs) == [2, 4]  # one graph per bucket used


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_engine_with_cuda_graphs_matches_eager_greedy_and_is_deterministic():
    model, spec = model_of("qwen2", kv_heads=2).cuda(), make_spec()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    greedy = SamplingParams(text=ModalitySampling(temperature=0.0), speech=ModalitySampling(temperature=0.0),
                            max_new_tokens=40)
    eager = RolloutEngine(model, spec).generate(prompts, n=3, params=greedy)
    graphs = RolloutEngine(model, spec, cuda_graphs=True).generate(prompts, n=3, params=greedy)
    assert torch.equal(graphs.ids, eager.ids) and torch.equal(graphs.lengths, eager.lengths)
    sampled = SamplingParams(text=ModalitySampling(temperature=0.9, top_p=0.9), max_new_tokens=40, seed=3)
    a = RolloutEngine(model, spec, cuda_graphs=True).generate(prompts, n=8, params=sampled)
    b = RolloutEngine(model, spec, cuda_graphs=True).generate(prompts, n=8, params=sampled)
    assert torch.equal(a.ids, b.ids)  # replays are deterministic


def test_lora_policy_decodes_through_its_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model_of("llama", kv_heads=2), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapters change the output
                parameter.normal_(std=0.5)
    model.eval()
    spec, prompts = make_spec(), [[5, 6, 7, 8], [9, 10]]
    params = SamplingParams(text=ModalitySampling(temperature=0.8), max_new_tokens=24, seed=2)
    engine = RolloutEngine(model, spec)
    assert engine.static_cache
    static = engine.generate(prompts, n=3, params=params)
    dynamic = RolloutEngine(model, spec, static_cache=False).generate(prompts, n=3, params=params)
    assert torch.equal(static.ids, dynamic.ids) and torch.equal(static.logprobs, dynamic.logprobs)
    with model.disable_adapter():  # and the adapters did matter
        plain = RolloutEngine(model, spec, static_cache=False).generate(prompts, n=3, params=params)
    assert not torch.equal(plain.logprobs, dynamic.logprobs)
