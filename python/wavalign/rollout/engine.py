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
from wavalign.codes import FINISH_NAMES, FINISH_RUNNING, PHASE_SPEECH
from wavalign.modality import ModalitySpec
from wavalign.interleave import InterleaveState
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


class _ParamTable:
    """The seven sampling parameters of both modalities, built once per generate(): rows(phase)
    gives each row its phase's values with one gather per dtype (text values for the text and
    closing phases, speech values for the speech phase), in the sampler's argument order."""

    def __init__(self, params: SamplingParams, device):
        self.names = list(ops.SAMPLING_PARAMS)
        self.groups = {}  # dtype -> ([K, 2] values: column 0 text, 1 speech, names of its K rows)
        for dtype in {dtype for dtype, _ in ops.SAMPLING_PARAMS.values()}:
            names = [n for n in self.names if ops.SAMPLING_PARAMS[n][0] == dtype]
            values = torch.tensor([[getattr(params.text, n), getattr(params.speech, n)] for n in names],
                                  dtype=dtype, device=device)
            self.groups[dtype] = (values, names)

    def rows(self, phase: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """phase [N] int8 -> the [N] parameter tensors, in ops.SAMPLING_PARAMS order."""
        column = (phase == PHASE_SPEECH).long()
        picked = {}
        for values, names in self.groups.values():
            rows = values.index_select(1, column)  # [K, N], each row contiguous
            picked.update(zip(names, rows.unbind(0)))
        return tuple(picked[n] for n in self.names)

    def values(self, phase: int) -> dict[str, float]:
        """The parameter values a row in `phase` samples with (for error messages)."""
        column = int(phase == PHASE_SPEECH)
        out = {}
        for values, names in self.groups.values():
            out.update({n: values[i, column].item() for i, n in enumerate(names)})
        return {n: out[n] for n in self.names}


_SAMPLER, _INTERLEAVE = 1, 2  # which op a recorded error came from


class _DecodeRecord:
    """What generate() returns, kept in device buffers written by index each step (no host
    read-back per token) and copied to the host once at the end; and the first error each
    row met (op, step, status code, phase, id), raised at the next host check."""

    def __init__(self, rows: int, width: int, pad_id: int, device):
        def full(value, dtype, shape=(rows, width)):
            return torch.full(shape, value, dtype=dtype, device=device)

        self.pad_id = pad_id
        self.ids, self.logprobs, self.raw = full(pad_id, torch.int64), full(0.0, torch.float32), full(0.0, torch.float32)
        self.phases, self.sets = full(-1, torch.int8), full(-1, torch.int8)
        self.lengths = full(0, torch.int64, (rows,))
        self.reasons = full(FINISH_RUNNING, torch.int8, (rows,))
        self.error_step = full(-1, torch.int64, (rows,))
        self.error_code, self.error_op = full(0, torch.int32, (rows,)), full(0, torch.int8, (rows,))
        self.error_phase, self.error_id = full(0, torch.int8, (rows,)), full(-1, torch.int64, (rows,))

    def write(self, live, step: int, running, ids, logprobs, raw, phase, allowed) -> None:
        """Step `step` of the live rows; rows that already finished write nothing."""
        def put(buffer, values, fill):
            buffer[live, step] = torch.where(running, values.to(buffer.dtype), fill)

        put(self.ids, ids, self.pad_id)
        put(self.logprobs, logprobs, 0.0)
        put(self.raw, raw, 0.0)
        put(self.phases, phase, -1)
        put(self.sets, allowed, -1)
        self.lengths[live] += running.long()

    def note_error(self, live, step: int, status, running, phase, *, op: int, ids=None) -> None:
        """Keep the first failure of each running row."""
        failed = (status != 0) & running & (self.error_step[live] < 0)
        self.error_step[live] = torch.where(failed, step, self.error_step[live])
        self.error_code[live] = torch.where(failed, status, self.error_code[live])
        self.error_op[live] = torch.where(failed, op, self.error_op[live])
        self.error_phase[live] = torch.where(failed, phase, self.error_phase[live])
        if ids is not None:
            self.error_id[live] = torch.where(failed, ids, self.error_id[live])

    def first_error(self, table: _ParamTable) -> ValueError | None:
        """The error of the row that failed first (earliest step, then lowest row), or None.
        One host read of [rows] flags."""
        failed = self.error_step >= 0
        if not bool(failed.any()):
            return None
        steps = torch.where(failed, self.error_step, torch.full_like(self.error_step, 2**62))
        row = int(torch.argmin(steps))
        step, code, op = int(self.error_step[row]), int(self.error_code[row]), int(self.error_op[row])
        count, total = int(failed.sum()), failed.numel()
        if op == _SAMPLER:
            detail = ops.sample_status_detail(code, row, lambda: table.values(int(self.error_phase[row])))
            return ValueError(f"sample_tokens: row {row} cannot be sampled at decode step {step}: {detail} "
                              f"({count} of {total} rows failed)")
        token = int(self.error_id[row])
        reason = ops.interleave_rejection(code, int(self.error_phase[row]))
        return ValueError(f"interleave: row {row} at decode step {step}: sampled id {token} {reason} "
                          f"({count} of {total} rows failed)")

    def to_host(self):
        """(ids, logprobs, raw log-probs, phases, allowed sets, lengths, finish reason names)."""
        names = [FINISH_NAMES[int(r)] if int(r) != FINISH_RUNNING else "length" for r in self.reasons.tolist()]
        return (self.ids.cpu(), self.logprobs.cpu(), self.raw.cpu(), self.phases.cpu(), self.sets.cpu(),
                self.lengths.cpu(), names)


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
                 adapter=None, sync_every: int | None = None, static_cache: bool | None = None,
                 cuda_graphs: bool = False):
        """profile: synchronise the device around each decode-step section so that
        Rollout.timings splits forward / sampling / bookkeeping exactly on CUDA (a little
        slower). On CPU the split is exact either way. adapter: a wavalign.adapters.ModelAdapter
        that collates the prompts' extra forward inputs (default: ModelAdapter). sync_every: how
        many decode steps run between two host checks (errors, finished rows); None: every
        step on CPU (free there), every 8 on CUDA (a check waits for the device).
        static_cache: decode on a preallocated KV cache (rollout.static_decode, bit-identical
        to the model's own cache); None: whenever the model is one it reproduces (Llama/Qwen2
        with sdpa attention), else transformers' cache. True: required (an error says why a
        model cannot). cuda_graphs: capture the static decode step in CUDA graphs (CUDA only;
        implies static_cache; agrees with the eager step up to rounding)."""
        if sync_every is not None and not (isinstance(sync_every, int) and not isinstance(sync_every, bool)
                                           and sync_every >= 1):
            raise ValueError(f"sync_every must be an int >= 1 or None, got {sync_every!r}")
        self.sync_every = sync_every
        self.model = model
        from wavalign.rollout.static_decode import unsupported_reason

        if static_cache not in (None, True, False) or cuda_graphs not in (True, False):
            raise ValueError(f"static_cache must be None/True/False and cuda_graphs True/False, got "
                             f"{static_cache!r} / {cuda_graphs!r}")
        reason = unsupported_reason(model)
        if (static_cache or cuda_graphs) and reason is not None:
            raise ValueError(f"the static KV cache{' (needed by cuda_graphs)' if cuda_graphs else ''} cannot run "
                             f"this model: {reason}")
        if static_cache is False and cuda_graphs:
            raise ValueError("cuda_graphs needs the static KV cache (static_cache=False was given)")
        model_device = next(model.parameters()).device
        if cuda_graphs and model_device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a model on a CUDA device, this one is on {model_device}")
        self.static_cache = reason is None if static_cache is None else static_cache
        self.static_cache_refusal = reason  # why the static cache cannot run this model (None: it can)
        self.cuda_graphs = cuda_graphs
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
        record = _DecodeRecord(rows, params.max_new_tokens, self.pad_id, device)
        # Penalty history: [live rows, max_new_tokens], -1 = not yet generated (the sampler
        # skips -1). Preallocated, filled one column per step; kept only when a penalty is on.
        history = (torch.full((rows, params.max_new_tokens), -1, dtype=torch.int64, device=device)
                   if _penalties_active(params) else None)
        table = _ParamTable(params, device)
        decoder = None
        if self.static_cache:
            from wavalign.rollout.static_decode import StaticDecoder

            decoder = StaticDecoder(self.model, cache, mask, mask.shape[1] + params.max_new_tokens,
                                    graphs=self.cuda_graphs)
            cache = None
        # The host looks at the device (errors, finished rows) every `check_every` steps: by
        # default every step on CPU (free) and every 8 on CUDA, so the loop does not stall the
        # GPU each token; finished rows then ride along, masked, until the next check.
        check_every = self.sync_every or (1 if device.type == "cpu" else 8)
        clock = _StepClock(device, self.profile)
        decode_start = time.perf_counter()
        steps = 0

        clock.start()
        for step in range(params.max_new_tokens):
            steps += 1
            running = ~state.finished  # [live] bool: rows still decoding at this step
            phase, allowed = state.phase, state.allowed_set
            ids, logprobs, raw_logprobs, status = ops.sample_tokens_status(
                logits.float().contiguous(), table.rows(phase), history, state.allowed_ranges(), params.seed,
                (live + first_row) * _STEP_STRIDE + step)
            clock.lap("sample_s")
            record.note_error(live, step, status, running, phase, op=_SAMPLER)
            ids = torch.where(status == 0, ids, torch.full_like(ids, self.pad_id))  # a failed row feeds a valid id
            record.write(live, step, running, ids, logprobs, raw_logprobs, phase, allowed)
            status = state.advance_status(ids)
            record.note_error(live, step, status, running, phase, op=_INTERLEAVE, ids=ids)
            record.reasons[live] = state.state["finish_reason"]
            if history is not None:
                history[:, step] = ids
            last_step = step + 1 == params.max_new_tokens
            if (step + 1) % check_every == 0 or last_step:
                error = record.first_error(table)
                if error is not None:
                    raise error
                finished = state.finished
                keep = torch.nonzero(~finished).flatten()
                if keep.numel() == 0:
                    break
                if keep.numel() < live.numel():  # compaction: finished rows leave the batch
                    if decoder is not None:
                        decoder.select(keep)
                    else:
                        cache.batch_select_indices(keep)
                    state.select(keep)
                    live, mask, last_position = live[keep], mask[keep], last_position[keep]
                    history = history[keep] if history is not None else None
                    ids = ids[keep]
            if last_step:
                break
            last_position = last_position + 1
            if decoder is not None:
                clock.lap("bookkeeping_s")
                logits = decoder.step(ids, last_position)
            else:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                clock.lap("bookkeeping_s")
                out = self.model(input_ids=ids[:, None], attention_mask=mask,
                                 position_ids=last_position[:, None], use_cache=True,
                                 **{self._cache_arg: cache}, **self._last_logits_only)
                logits, cache = out.logits[:, -1, :], self._cache_of(out)
            clock.lap("forward_s")
        clock.lap("bookkeeping_s")
        decode_seconds = time.perf_counter() - decode_start

        out_ids, out_lp, out_raw, out_phase, out_set, lengths, reasons = record.to_host()
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
