"""RolloutEngine: greedy equals HF generate under the same constraints; schedule respected;
batched prompts of different lengths give the same result as alone; seeded reproducibility."""

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from wavalign.modality import ModalitySpec, Schedule
from wavalign.reference.interleave import RowState, allowed_mask, current_set, reference_step
from wavalign.rollout.engine import ModalitySampling, RolloutEngine, SamplingParams

VOCAB = 48


def make_spec(schedule=None):
    # 0 pad, 1 eos, 2..29 text, 30 begin_audio, 31 end_audio, 32..47 speech
    return ModalitySpec(vocab_size=VOCAB, text_ranges=[(0, 30)], speech_ranges=[(32, 48)], eos=1, pad=0,
                        begin_audio=30, end_audio=31, schedule=schedule or Schedule.sequential())


def tiny_model(arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, eos_token_id=1, bos_token_id=None)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.double().eval()


class ScheduleProcessor(LogitsProcessor):
    """What a user would write for HF generate: mask ids the schedule forbids (slow, per row)."""

    def __init__(self, spec, prompt_len):
        self.spec, self.prompt_len = spec, prompt_len
        self.masks = [allowed_mask(spec, s) for s in range(4)]

    def __call__(self, input_ids, scores):
        for row in range(input_ids.shape[0]):
            state = RowState()
            for token in input_ids[row, self.prompt_len:].tolist():
                reference_step(self.spec, state, token)
            allowed = self.masks[current_set(self.spec, state, -1)]
            scores[row, ~allowed] = float("-inf")
        return scores


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("schedule", [Schedule.sequential(), Schedule.chunked(text=3, speech=4)])
def test_greedy_matches_hf_generate(arch, schedule):
    model, spec = tiny_model(arch), make_spec(schedule)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    params = SamplingParams(text=ModalitySampling(temperature=0.0), speech=ModalitySampling(temperature=0.0),
                            max_new_tokens=20)
    rollout = RolloutEngine(model, spec).generate(prompts, n=1, params=params)
    for row, prompt in enumerate(prompts):
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  do_sample=False, max_new_tokens=20, pad_token_id=0, eos_token_id=1,
                                  logits_processor=LogitsProcessorList([ScheduleProcessor(spec, len(prompt))]))
        expected = expected[0, len(prompt):].tolist()
        got = rollout.ids[row, : int(rollout.lengths[row])].tolist()
        assert got == expected[: len(got)] and len(got) == len(expected), (row, got, expected)


def test_sampled_rollouts_respect_schedule_and_reproduce():
    model, spec = tiny_model("qwen2"), make_spec(Schedule.chunked(text=2, speech=5))
    params = SamplingParams(text=ModalitySampling(temperature=1.0, top_p=0.95),
                            speech=ModalitySampling(temperature=0.8, top_k=8), max_new_tokens=40, seed=3)
    engine = RolloutEngine(model, spec)
    a = engine.generate([[5, 6, 7], [8, 9]], n=4, params=params)
    b = engine.generate([[5, 6, 7], [8, 9]], n=4, params=params)
    assert torch.equal(a.ids, b.ids)
    assert a.ids.shape[0] == 8 and a.prompt_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(set(tuple(r) for r in a.ids[:4].tolist())) > 1  # the G samples differ
    for row in range(8):
        state = RowState()
        for token in a.ids[row, : int(a.lengths[row])].tolist():
            reference_step(spec, state, token, max_total=40)  # raises on any schedule violation
        response = a.token_types[row, : int(a.lengths[row])]
        assert torch.all(response >= 0) and torch.all(a.token_types[row, int(a.lengths[row]):] == -1)
    assert set(a.finish_reasons) <= {"eos", "length", "end_of_audio"}


def test_prompt_alone_equals_prompt_in_batch():
    model, spec = tiny_model("llama"), make_spec()
    params = SamplingParams(max_new_tokens=15, seed=11)
    engine = RolloutEngine(model, spec)
    batch = engine.generate([[5, 6, 7, 8, 9, 10], [11, 12]], n=2, params=params)
    alone = engine.generate([[5, 6, 7, 8, 9, 10]], n=2, params=params)
    assert torch.equal(batch.ids[:2, : alone.ids.shape[1]], alone.ids)


def test_bad_prompts():
    engine = RolloutEngine(tiny_model("qwen2"), make_spec())
    with pytest.raises(ValueError, match=r"prompt 1 holds ids outside \[0, 48\)"):
        engine.generate([[5], [99]])
    with pytest.raises(ValueError, match="non-empty"):
        engine.generate([[]])
    with pytest.raises(ValueError, match="n must be >= 1"):
        engine.generate([[5]], n=0)


def test_first_token_frequencies_match_processed_distribution():
    from helpers import assert_matches_distribution
    from wavalign.reference import processed_distribution
    from wavalign.interleave import InterleaveState

    model, spec = tiny_model("qwen2"), make_spec()
    prompt = [5, 6, 7]
    text = ModalitySampling(temperature=0.5, top_p=0.9)
    params = SamplingParams(text=text, max_new_tokens=1, seed=5)
    rollout = RolloutEngine(model, spec).generate([prompt], n=6000, params=params)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[:, -1, :].float()
    allowed = InterleaveState(spec, 1).allowed_ranges()  # a fresh row's set, as the engine uses it
    probs = processed_distribution(logits, temperature=0.5, top_p=0.9, allowed_ranges=allowed)[0]
    assert_matches_distribution(rollout.ids[:, 0], probs)


class ResponsePenaltyProcessor(LogitsProcessor):
    """HF's repetition penalty restricted to the response, as the engine applies it."""

    def __init__(self, penalty, prompt_len):
        from transformers import RepetitionPenaltyLogitsProcessor

        self.inner, self.prompt_len = RepetitionPenaltyLogitsProcessor(penalty), prompt_len

    def __call__(self, input_ids, scores):
        response = input_ids[:, self.prompt_len:]
        return self.inner(response, scores) if response.shape[1] else scores


def test_greedy_with_repetition_penalty_matches_hf_generate():
    # The engine keeps a preallocated, -1-padded history for penalties; HF re-reads input_ids.
    model, spec = tiny_model("llama"), make_spec(Schedule.chunked(text=3, speech=5))
    greedy = ModalitySampling(temperature=0.0, repetition_penalty=1.8)
    params = SamplingParams(text=greedy, speech=greedy, max_new_tokens=24)
    prompts = [[5, 6, 7, 8], [9, 10]]
    rollout = RolloutEngine(model, spec).generate(prompts, n=1, params=params)
    for row, prompt in enumerate(prompts):
        processors = LogitsProcessorList([ResponsePenaltyProcessor(1.8, len(prompt)),
                                          ScheduleProcessor(spec, len(prompt))])
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  do_sample=False, max_new_tokens=24, pad_token_id=0, eos_token_id=1,
                                  logits_processor=processors)[0, len(prompt):].tolist()
        got = rollout.ids[row, : int(rollout.lengths[row])].tolist()
        assert got == expected[: len(got)] and len(got) == len(expected), (row, got, expected)
    # The penalty changes the greedy path (otherwise this test would prove nothing).
    plain = SamplingParams(text=ModalitySampling(temperature=0.0), speech=ModalitySampling(temperature=0.0),
                           max_new_tokens=24)
    assert not torch.equal(RolloutEngine(model, spec).generate(prompts, n=1, params=plain).ids, rollout.ids)


def test_interleave_logits_processor_equals_reference_processor():
    from wavalign.rollout.hf import InterleaveLogitsProcessor

    model, spec = tiny_model("qwen2"), make_spec(Schedule.chunked(text=3, speech=4))
    prompt = torch.tensor([[5, 6, 7, 8]])
    for seed in range(3):
        outputs = []
        for processor in (InterleaveLogitsProcessor(spec, 4), ScheduleProcessor(spec, 4)):
            torch.manual_seed(seed)
            outputs.append(model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                          num_return_sequences=6, max_new_tokens=30, pad_token_id=0,
                                          eos_token_id=1, logits_processor=LogitsProcessorList([processor])))
        assert torch.equal(outputs[0], outputs[1])
    # Budgets are the engine's: with max_text=2 every row switches to speech after 2 text tokens.
    torch.manual_seed(0)
    spec = make_spec(Schedule.sequential())
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, num_return_sequences=6,
                         max_new_tokens=12, pad_token_id=0, eos_token_id=None,
                         logits_processor=LogitsProcessorList([InterleaveLogitsProcessor(spec, 4, max_text=2)]))
    for row in out[:, 4:].tolist():
        state = RowState()
        for token in row:
            reference_step(spec, state, token, max_text=2)  # raises on any violation
    with pytest.raises(ValueError, match="prompt_length"):
        InterleaveLogitsProcessor(spec, 0)


def test_rollout_timings_split_the_decode_time():
    model, spec = tiny_model("qwen2"), make_spec()
    rollout = RolloutEngine(model, spec).generate([[5, 6, 7]], n=3, params=SamplingParams(max_new_tokens=10))
    t = rollout.timings
    parts = t["forward_s"] + t["sample_s"] + t["bookkeeping_s"]
    assert t["decode_steps"] == int(rollout.lengths.max())
    assert all(t[k] > 0 for k in ("prefill_s", "forward_s", "sample_s", "bookkeeping_s"))
    assert parts == pytest.approx(t["decode_s"], rel=0.05, abs=1e-3)
    assert t["total_s"] >= t["prefill_s"] + t["decode_s"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_greedy_matches_hf_generate(dtype):
    # GPUs run policies in bf16/fp16; the engine samples from float32 copies of the logits, as generate does.
    model, spec = tiny_model("llama").to(dtype), make_spec(Schedule.chunked(text=3, speech=4))
    params = SamplingParams(text=ModalitySampling(temperature=0.0), speech=ModalitySampling(temperature=0.0),
                            max_new_tokens=16)
    prompt = [5, 6, 7, 8]
    rollout = RolloutEngine(model, spec).generate([prompt], n=2, params=params)
    expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                              do_sample=False, max_new_tokens=16, pad_token_id=0, eos_token_id=1,
                              logits_processor=LogitsProcessorList([ScheduleProcessor(spec, 4)]))[0, 4:].tolist()
    for row in range(2):
        assert rollout.ids[row, : int(rollout.lengths[row])].tolist() == expected
    assert rollout.logprobs.dtype == torch.float32 and torch.isfinite(rollout.logprobs[:, :16]).all()


def test_host_checks_every_k_steps_change_nothing():
    """With sync_every=k the host reads errors and finished rows every k steps only (the
    default on CUDA); finished rows ride along masked until then. Outputs are the same."""
    model, spec = tiny_model("qwen2"), make_spec(Schedule.chunked(text=3, speech=4))
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    params = SamplingParams(text=ModalitySampling(temperature=1.0, top_p=0.9),
                            speech=ModalitySampling(temperature=1.2, repetition_penalty=1.3), max_new_tokens=24, seed=5)
    every_step = RolloutEngine(model, spec).generate(prompts, n=3, params=params)
    assert len(set(every_step.lengths.tolist())) > 1  # rows finish at different steps
    for k in (2, 5, 64):
        sparse = RolloutEngine(model, spec, sync_every=k).generate(prompts, n=3, params=params)
        assert torch.equal(sparse.ids, every_step.ids) and torch.equal(sparse.lengths, every_step.lengths)
        assert sparse.finish_reasons == every_step.finish_reasons
        assert torch.equal(sparse.phases, every_step.phases) and torch.equal(sparse.allowed_sets, every_step.allowed_sets)
        assert torch.allclose(sparse.logprobs, every_step.logprobs, atol=1e-6)
        assert torch.allclose(sparse.raw_logprobs, every_step.raw_logprobs, atol=1e-6)
    with pytest.raises(ValueError, match="sync_every must be an int >= 1"):
        RolloutEngine(model, spec, sync_every=0)


@pytest.mark.parametrize("sync_every", [None, 4])
def test_a_row_that_cannot_be_sampled_is_named_with_its_step(sync_every):
    model = tiny_model("llama")
    spec = ModalitySpec(vocab_size=VOCAB, text_ranges=[(0, 30)], speech_ranges=[(32, 48)], pad=0,
                        schedule=Schedule.free())  # no EOS: every row runs to the budget
    forwards = {"n": 0}

    def poison(module, args, output):  # NaN logits for batch row 1 from decode step 3 on
        if output.shape[1] == 1:  # the prefill (last position only) gives step 0, each decode forward the next
            forwards["n"] += 1
            if forwards["n"] >= 4:
                output = output.clone()
                output[1] = float("nan")
                return output

    handle = model.lm_head.register_forward_hook(poison)
    try:
        with pytest.raises(ValueError, match=r"sample_tokens: row 1 cannot be sampled at decode step 3: its logits "
                                             r"contain NaN or \+inf \(1 of 4 rows failed\)"):
            RolloutEngine(model, spec, sync_every=sync_every).generate(
                [[5, 6], [7, 8]], n=2, params=SamplingParams(max_new_tokens=10))
    finally:
        handle.remove()
