"""RolloutEngine: G interleaved text/speech samples per prompt from any HF causal LM.

Each distinct prompt is prefilled once (prompts batched, left-padded); its KV cache is then
repeated for its G samples, so no prompt is encoded twice. Decoding is batched; after every
step the native interleave state machine says which ids each row may emit next and the
native sampler draws under per-row, per-modality parameters. Rows that finish leave the
batch (their cache rows are dropped), so the cost of a step tracks the live rows.
"""

from __future__ import annotations

import inspect
import numbers
import time
from dataclasses import dataclass, field

import torch

from wavalign import ops
from wavalign.adapters import ModelAdapter, rows_inputs
from wavalign.codes import PHASE_SPEECH
from wavalign.modality import ModalitySpec
from wavalign.rollout.interleave import InterleaveState
from wavalign.sampling_params import PENALTY_FIELD_NAMES, SAMPLING_FIELDS, ModalitySampling

_STEP_STRIDE = 1 << 20  # offsets: sample_id * stride + step -> one Philox stream per sample
_INT32_MAX = 2**31 - 1  # the interleave state's budgets are int32
_INT64_MAX = 2**63 - 1  # offsets are int64


def _budget_problem(value, *, optional: bool, lowest: int) -> str | None:
    """Why `value` is not a token budget the int32 interleave state holds exactly, or None."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"must be an int{' or None' if optional else ''}, got {value!r}"
    if not lowest <= value <= _INT32_MAX:
        return f"must be in [{lowest}, {_INT32_MAX}] (int32){' or None' if optional else ''}, got {value!r}"
    return None


@dataclass(frozen=True)
class SamplingParams:
    text: ModalitySampling = field(default_factory=ModalitySampling)
    speech: ModalitySampling = field(default_factory=ModalitySampling)
    max_new_tokens: int = 256
    max_text_tokens: int | None = None
    max_speech_tokens: int | None = None
    seed: int = 0

    def __post_init__(self):
        if (isinstance(self.max_new_tokens, numbers.Integral) and not isinstance(self.max_new_tokens, bool)
                and self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        # Checked here, before the interleave state narrows them to int32 (-1 = unlimited).
        for name, optional, lowest in (("max_new_tokens", False, 1), ("max_text_tokens", True, -1),
                                       ("max_speech_tokens", True, -1)):
            problem = _budget_problem(getattr(self, name), optional=optional, lowest=lowest)
            if problem:
                raise ValueError(f"SamplingParams.{name} {problem}")


@dataclass
class Rollout:
    """B prompts x G samples = R rows, in prompt-major order (row = prompt * G + sample)."""

    prompt_ids: list[torch.Tensor]  # B prompts, each [P_b] int64
    prompt_index: torch.Tensor  # [R] int64
    ids: torch.Tensor  # [R, L] int64 response ids, pad_id after the end
    lengths: torch.Tensor  # [R] int64 response lengths
    token_types: torch.Tensor  # [R, L] int8: 0 text, 1 speech, -1 padding
    logprobs: torch.Tensor  # [R, L] float32 under the processed (sampling) distribution
    raw_logprobs: torch.Tensor  # [R, L] float32 under the raw model distribution
    finish_reasons: list[str]
    # Seconds: prefill_s, decode_s (= forward_s + sample_s + bookkeeping_s), total_s; and
    # decode_steps. On CUDA the split is exact only with RolloutEngine(profile=True).
    timings: dict[str, float]
    # What each token was sampled under, so training can score it under the same distribution
    # (temperature of its phase, ids of its allowed set): [R, L] int8, -1 past the end.
    phases: torch.Tensor | None = None  # interleave phase (0 text, 1 speech, 2 closing)
    allowed_sets: torch.Tensor | None = None  # row of ModalitySpec.interleave_table()


def _penalties_active(params: SamplingParams) -> bool:
    """Whether any modality turns a history penalty on (only then is a history kept)."""
    offs = {f.name: f.metadata["off"] for f in SAMPLING_FIELDS}
    return any(getattr(m, name) != offs[name] for m in (params.text, params.speech) for name in PENALTY_FIELD_NAMES)


class _StepClock:
    """Accumulates wall time per decode-step section. With sync=True it waits for the device
    before each reading, so asynchronous CUDA work is charged to the section that issued it."""

    def __init__(self, device: torch.device, sync: bool):
        self.sync = sync and device.type == "cuda"
        self.totals = {"forward_s": 0.0, "sample_s": 0.0, "bookkeeping_s": 0.0}
        self._last = 0.0

    def start(self):
        if self.sync:
            torch.cuda.synchronize()
        self._last = time.perf_counter()

    def lap(self, section: str):
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.totals[section] += now - self._last
        self._last = now


class RolloutEngine:
    def __init__(self, model, spec: ModalitySpec, *, pad_id: int | None = None, profile: bool = False,
                 adapter=None):
        """profile: synchronise the device around each decode-step section so that
        Rollout.timings splits forward / sampling / bookkeeping exactly on CUDA (a little
        slower). On CPU the split is exact either way. adapter: a wavalign.adapters.ModelAdapter
        that collates the prompts' extra forward inputs (default: ModelAdapter)."""
        self.model = model
        self.adapter = adapter or ModelAdapter()
        self.spec = spec
        self.pad_id = pad_id if pad_id is not None else (spec.pad if spec.pad is not None else 0)
        self.profile = profile
        # transformers 5 renamed `past_key_values` to `cache`; accept either generation. A
        # PeftModel (LoRA) forwards keyword arguments to its model: ask that model's forward.
        inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        parameters = inspect.signature(inner.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        # Prefill needs logits at the last prompt position only; models that take
        # logits_to_keep skip the LM head (V columns) for every other position.
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    @staticmethod
    def _cache_of(output):
        cache = output.get("cache", None)
        return cache if cache is not None else output.get("past_key_values", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _prefill(self, prompts: list[torch.Tensor], extras: list | None = None):
        lengths = torch.tensor([len(p) for p in prompts])
        width = int(lengths.max())
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(prompts), width), dtype=torch.int64)
        for row, prompt in enumerate(prompts):  # left padding: the last column is the last token
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # The prompts' extra inputs (audio features, ...) go to the prefill only: the decode
        # steps run on the KV cache it leaves.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self._last_logits_only, **rows_inputs(self.adapter, extras, self.device))
        return out.logits[:, -1, :], self._cache_of(out), mask, positions[:, -1]

    @staticmethod
    def _param_pairs(params: SamplingParams, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (text value, speech value) as 0-dim tensors, built once per generate()."""
        return {name: (torch.tensor(getattr(params.text, name), dtype=dtype, device=device),
                       torch.tensor(getattr(params.speech, name), dtype=dtype, device=device))
                for name, (dtype, _) in ops.SAMPLING_PARAMS.items()}

    @staticmethod
    def _row_params(phase: torch.Tensor, pairs) -> dict[str, torch.Tensor]:
        """Per-row sampling parameters [N] chosen by each row's phase."""
        speech = phase == PHASE_SPEECH
        return {name: torch.where(speech, speech_value, text_value)
                for name, (text_value, speech_value) in pairs.items()}

    @torch.no_grad()
    def generate(self, prompts, n: int = 1, params: SamplingParams | None = None, *, first_row: int = 0,
                 extras: list | None = None) -> Rollout:
        """prompts: list of 1-D id sequences (lists or tensors). Returns a Rollout of len(prompts) * n rows.

        extras: per prompt, its extra forward inputs (wavalign.adapters; None entries: none),
        passed to the prefill batched by the adapter.

        first_row: global index of this call's first row. Row r draws from the Philox stream
        of sample (first_row + r), so a batch split across processes (each passing its own
        first_row) samples exactly what one process would.
        """
        params = params or SamplingParams()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not (isinstance(first_row, int) and first_row >= 0):
            raise ValueError(f"first_row must be an int >= 0, got {first_row!r}")
        prompts = [torch.as_tensor(p, dtype=torch.int64).flatten().cpu() for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty id sequences")
        vocab = self.spec.vocab_size
        for index, p in enumerate(prompts):
            if int(p.min()) < 0 or int(p.max()) >= vocab:
                raise ValueError(f"prompt {index} holds ids outside [0, {vocab})")
        last_offset = (first_row + len(prompts) * n - 1) * _STEP_STRIDE + params.max_new_tokens - 1
        if last_offset > _INT64_MAX:  # the int64 offsets would wrap around
            raise ValueError(f"first_row={first_row} is too large: the Philox offsets (first_row + row) * "
                             f"2**20 + step must fit int64")

        start = time.perf_counter()
        if extras is not None and len(extras) != len(prompts):
            raise ValueError(f"extras must hold one entry per prompt: {len(prompts)} prompts, {len(extras)} entries")
        logits, cache, mask, last_position = self._prefill(prompts, extras)
        prefill_seconds = time.perf_counter() - start

        # Share each prompt's cache with its n samples (no re-encoding).
        rows = len(prompts) * n
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            last_position = last_position.repeat_interleave(n, dim=0)
        device = self.device
        state = InterleaveState(self.spec, rows, max_text=params.max_text_tokens,
                                max_speech=params.max_speech_tokens, max_total=params.max_new_tokens,
                                device=device)
        live = torch.arange(rows, device=device)  # original row of each live batch row
        out_ids = torch.full((rows, params.max_new_tokens), self.pad_id, dtype=torch.int64)
        out_lp = torch.zeros((rows, params.max_new_tokens), dtype=torch.float32)
        out_raw = torch.zeros((rows, params.max_new_tokens), dtype=torch.float32)
        out_phase = torch.full((rows, params.max_new_tokens), -1, dtype=torch.int8)
        out_set = torch.full((rows, params.max_new_tokens), -1, dtype=torch.int8)
        lengths = torch.zeros(rows, dtype=torch.int64)
        reasons = ["length"] * rows
        # Penalty history: [live rows, max_new_tokens], -1 = not yet generated (the sampler
        # skips -1). Preallocated, filled one column per step; kept only when a penalty is on.
        history = (torch.full((rows, params.max_new_tokens), -1, dtype=torch.int64, device=device)
                   if _penalties_active(params) else None)
        param_pairs = self._param_pairs(params, device)
        clock = _StepClock(device, self.profile)
        decode_start = time.perf_counter()
        steps = 0

        clock.start()
        for step in range(params.max_new_tokens):
            steps += 1
            sample = ops.sample_tokens(
                logits.float().contiguous(), **self._row_params(state.phase, param_pairs),
                history=history, allowed_ranges=state.allowed_ranges(), seed=params.seed,
                offsets=(live + first_row) * _STEP_STRIDE + step,
            )
            clock.lap("sample_s")
            cpu_rows = live.cpu()
            out_phase[cpu_rows, step] = state.phase.to("cpu", torch.int8, copy=True)  # before advance updates it
            out_set[cpu_rows, step] = state.allowed_set.to("cpu", torch.int8, copy=True)
            state.advance(sample.ids)
            out_ids[cpu_rows, step] = sample.ids.cpu()
            out_lp[cpu_rows, step] = sample.logprobs.cpu()
            out_raw[cpu_rows, step] = sample.raw_logprobs.cpu()
            lengths[cpu_rows] += 1
            if history is not None:
                history[:, step] = sample.ids
            finished = state.finished
            if bool(finished.any()):  # only rows that finished this step: earlier ones left
                names = state.finish_reasons()
                for local in torch.nonzero(finished).flatten().tolist():
                    reasons[int(cpu_rows[local])] = names[local]
            keep = torch.nonzero(~finished).flatten()
            if keep.numel() == 0:
                break
            if keep.numel() < live.numel():  # compaction: finished rows leave the batch
                cache.batch_select_indices(keep)
                state.select(keep)
                live, mask, last_position = live[keep], mask[keep], last_position[keep]
                history = history[keep] if history is not None else None
                next_ids = sample.ids[keep]
            else:
                next_ids = sample.ids
            if step + 1 == params.max_new_tokens:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_position = last_position + 1
            clock.lap("bookkeeping_s")
            out = self.model(input_ids=next_ids[:, None], attention_mask=mask,
                             position_ids=last_position[:, None], use_cache=True,
                             **{self._cache_arg: cache}, **self._last_logits_only)
            logits, cache = out.logits[:, -1, :], self._cache_of(out)
            clock.lap("forward_s")
        clock.lap("bookkeeping_s")
        decode_seconds = time.perf_counter() - decode_start

        width = int(lengths.max()) if rows else 0
        ids = out_ids[:, :width]
        positions = torch.arange(width)[None, :]
        response = positions < lengths[:, None]
        token_types = self.spec.token_types(torch.where(response, ids, torch.zeros_like(ids)), response)
        return Rollout(
            prompt_ids=prompts,
            prompt_index=torch.arange(len(prompts)).repeat_interleave(n),
            ids=ids, lengths=lengths, token_types=token_types,
            logprobs=out_lp[:, :width], raw_logprobs=out_raw[:, :width],
            finish_reasons=reasons,
            timings={"prefill_s": prefill_seconds, "decode_s": decode_seconds, **clock.totals,
                     "decode_steps": steps, "total_s": time.perf_counter() - start},
            phases=out_phase[:, :width], allowed_sets=out_set[:, :width],
        )
