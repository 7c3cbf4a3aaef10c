"""rollout.backend: hf_generate — group rollouts through the model's own `generate()`.

For models whose forward does not fit RolloutEngine's cache handling (custom generation
code, multi-token-prediction heads, a cache class of their own), this backend calls
`model.generate` with wavalign's `InterleaveLogitsProcessor` (the same schedule and
budgets the engine enforces, per-modality temperature on top) and returns the same
`Rollout`: response ids, token types, finish reasons, the phase and allowed set of every
token, and both log-probs recomputed by one teacher-forced forward of the model, so they
are exactly what training scores.

Supported sampling: a temperature per modality (0 for both = greedy). top-k / top-p /
min-p and the penalties apply to the engine only; asking for them here is an error.
Draws come from torch's generator seeded by `params.seed` and `first_row`: reproducible,
but not the engine's Philox streams.
"""

from __future__ import annotations

import time

import torch

from wavalign.adapters import ModelAdapter, rows_inputs
from wavalign.codes import PHASE_SPEECH
from wavalign.logprobs import ResponseLogprobs, ResponseRows, RowLogprobs, allowed_set_masks
from wavalign.rollout.engine import Rollout, SamplingParams
from wavalign.rollout.hf import InterleaveLogitsProcessor
from wavalign.interleave import InterleaveState
from wavalign.sampling_params import SAMPLING_FIELDS


class _ScheduleAndTemperature(InterleaveLogitsProcessor):
    """InterleaveLogitsProcessor that also divides each row's scores by its phase's
    temperature and records every step's phase and allowed set ([R] each)."""

    def __init__(self, spec, prompt_length, *, text_temperature: float, speech_temperature: float, **budgets):
        super().__init__(spec, prompt_length, **budgets)
        self.temperatures = (text_temperature, speech_temperature)
        self.phases: list[torch.Tensor] = []
        self.sets: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        out = super().__call__(input_ids, scores)  # syncs self.state on the last column, masks
        phase = self.state.phase.to(scores.device)
        self.phases.append(phase.to("cpu", torch.int8, copy=True))
        self.sets.append(self.state.allowed_set.to("cpu", torch.int8, copy=True))
        text_t, speech_t = self.temperatures
        if text_t > 0 and speech_t > 0 and (text_t != 1.0 or speech_t != 1.0):
            temperature = torch.where(phase == PHASE_SPEECH, speech_t, text_t).to(out.dtype)  # [R]
            out = out / temperature[:, None]
        return out


def _check_params(params: SamplingParams) -> None:
    for section in ("text", "speech"):
        sampling = getattr(params, section)
        for field in SAMPLING_FIELDS:
            if field.name != "temperature" and getattr(sampling, field.name) != field.metadata["off"]:
                raise ValueError(f"rollout.backend=hf_generate supports a temperature per modality only; "
                                 f"rollout.{section}.{field.name}={getattr(sampling, field.name)!r} needs "
                                 f"rollout.backend=engine")
    text_t, speech_t = params.text.temperature, params.speech.temperature
    if (text_t == 0) != (speech_t == 0):
        raise ValueError("rollout.backend=hf_generate samples both modalities or neither: rollout.text.temperature "
                         f"and rollout.speech.temperature must both be 0 (greedy) or both > 0, got {text_t} and "
                         f"{speech_t}")


class HFGenerateRollout:
    """The hf_generate backend; `generate` has RolloutEngine.generate's signature."""

    def __init__(self, model, spec, *, pad_id: int | None = None, adapter: ModelAdapter | None = None):
        self.model, self.spec = model, spec
        self.pad_id = pad_id if pad_id is not None else (spec.pad if spec.pad is not None else 0)
        self.adapter = adapter or ModelAdapter()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts, n: int = 1, params: SamplingParams | None = None, *, first_row: int = 0,
                 extras: list | None = None) -> Rollout:
        from transformers import LogitsProcessorList

        params = params or SamplingParams()
        _check_params(params)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        prompts = [torch.as_tensor(p, dtype=torch.int64).flatten().cpu() for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty id sequences")
        if extras is not None and len(extras) != len(prompts):
            raise ValueError(f"extras must hold one entry per prompt: {len(prompts)} prompts, {len(extras)} entries")
        start = time.perf_counter()
        device = self.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):  # left padding, as generate() wants for decoder-only models
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        greedy = params.text.temperature == 0
        processor = _ScheduleAndTemperature(
            self.spec, width, text_temperature=params.text.temperature, speech_temperature=params.speech.temperature,
            max_text=params.max_text_tokens, max_speech=params.max_speech_tokens, max_total=params.max_new_tokens)
        torch.manual_seed(params.seed * 1_000_003 + first_row)
        # Each prompt repeated n times (not num_return_sequences, which greedy decoding refuses).
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        row_extras = None if extras is None else [e for e in extras for _ in range(n)]
        options = dict(do_sample=not greedy, max_new_tokens=params.max_new_tokens,
                       logits_processor=LogitsProcessorList([processor]), pad_token_id=self.pad_id,
                       eos_token_id=self.spec.eos)
        if not greedy:  # the processor tempers and masks; generate() must not warp again
            options.update(top_k=0, top_p=1.0, temperature=1.0)
        self.model.eval()
        sequences = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **options,
                                        **rows_inputs(self.adapter, row_extras, device))
        generated = sequences[:, width:].cpu()  # [R, T]
        decode_seconds = time.perf_counter() - start
        rows = generated.shape[0]
        response_ids, lengths, reasons = self._trim(generated, params)
        steps = generated.shape[1]
        phases = torch.stack(processor.phases[:steps], dim=1) if steps else torch.zeros(rows, 0, dtype=torch.int8)
        sets = torch.stack(processor.sets[:steps], dim=1) if steps else torch.zeros(rows, 0, dtype=torch.int8)
        L = response_ids.shape[1]
        valid = torch.arange(L)[None, :] < lengths[:, None]
        phases = torch.where(valid, phases[:, :L], torch.full_like(phases[:, :L], -1))
        sets = torch.where(valid, sets[:, :L], torch.full_like(sets[:, :L], -1))
        token_types = self.spec.token_types(torch.where(valid, response_ids, torch.zeros_like(response_ids)), valid)
        raw, processed = self._logprobs(prompts, n, response_ids, lengths, token_types, phases, sets, params, extras)
        return Rollout(prompt_ids=prompts, prompt_index=torch.arange(len(prompts)).repeat_interleave(n),
                       ids=response_ids, lengths=lengths, token_types=token_types, logprobs=processed,
                       raw_logprobs=raw, finish_reasons=reasons,
                       timings={"prefill_s": 0.0, "decode_s": decode_seconds, "decode_steps": steps,
                                "total_s": time.perf_counter() - start},
                       phases=phases, allowed_sets=sets)

    def _trim(self, generated: torch.Tensor, params: SamplingParams):
        """Each row's response ends where the schedule finished it (EOS, end of audio or a
        budget): replayed through a fresh InterleaveState, so padding after the end is ignored."""
        rows, steps = generated.shape
        state = InterleaveState(self.spec, rows, max_text=params.max_text_tokens, max_speech=params.max_speech_tokens,
                                max_total=params.max_new_tokens)
        lengths = torch.zeros(rows, dtype=torch.int64)
        for step in range(steps):
            running = ~state.finished
            if not bool(running.any()):
                break
            column = torch.where(running, generated[:, step], torch.zeros_like(generated[:, step]))
            state.advance(column.contiguous())
            lengths += running.long()
        reasons = [reason if reason != "running" else "length" for reason in state.finish_reasons()]
        width = int(lengths.max()) if rows else 0
        ids = torch.full((rows, width), self.pad_id, dtype=torch.int64)
        for row in range(rows):
            ids[row, :lengths[row]] = generated[row, :lengths[row]]
        return ids, lengths, reasons

    def _logprobs(self, prompts, n, ids, lengths, types, phases, sets, params, extras):
        """(raw, sampling) log-probs [R, L] of the generated tokens, by one forward."""
        rows = ResponseRows([p for p in prompts for _ in range(n)], ids, lengths, types,
                            extras=None if extras is None else [e for e in extras for _ in range(n)])
        if not len(rows) or ids.shape[1] == 0:
            empty = torch.zeros(ids.shape, dtype=torch.float32)
            return empty, empty.clone()
        device = self.device
        module = ResponseLogprobs(self.model, self.adapter)
        head_size = self.adapter.output_embeddings(self.model).weight.shape[0]
        raw, _ = RowLogprobs(module, self.pad_id, device, adapter=self.adapter)(rows)
        valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        if params.text.temperature == 0:  # greedy: the processed distribution is a point mass
            processed = torch.zeros_like(raw)
        else:
            rows.temperature = torch.where(phases == PHASE_SPEECH, params.speech.temperature,
                                           params.text.temperature).float()
            rows.allowed_sets = sets
            processed, _ = RowLogprobs(module, self.pad_id, device, set_masks=allowed_set_masks(self.spec, head_size),
                                       adapter=self.adapter)(rows)
        zero = torch.zeros((), dtype=torch.float32)
        return (torch.where(valid, raw.float().cpu(), zero), torch.where(valid, processed.float().cpu(), zero))
