"""Batched interleave state: which ids each row may emit next, advanced natively per step.

    state = InterleaveState(spec, n_rows=64, max_text=200, max_speech=800)
    for step in range(max_new_tokens):
        out = ops.sample_tokens(logits, allowed_ranges=state.allowed_ranges(), ...)
        state.advance(out.ids)          # no Python loop over rows
        if state.finished.all(): break

Transitions are documented in cpp/include/wavalign/interleave.h; their pure-Python twin
(the tests' oracle) is reference/interleave.py in this package.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from wavalign import ops
from wavalign.codes import FINISH_NAMES, FINISH_RUNNING, PHASE_SPEECH, PHASE_TEXT, SCHEDULE_CODES

_INT32_MAX = ops.INT32[1]
_BUDGET_RULE = f"budgets must be integers in [-1, {_INT32_MAX}] (int32; -1 = unlimited)"


def _budget(value, n: int, name: str, device) -> torch.Tensor:
    """[n] int32 budgets from a number (or None) or a [n] tensor / numpy array / list; every
    value is checked to be an integer in [-1, 2**31 - 1] BEFORE the int32 conversion."""
    if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
        # integral float tensors are accepted; list elements must be ints
        exact = ops.integer_tensor(value, name, -1, _INT32_MAX, _BUDGET_RULE, device,
                                    integral_floats=False)
        if exact.shape != (n,):
            raise ValueError(f"{name} must be a number or a [{n}] tensor, got shape {list(exact.shape)}")
        return exact.to(device=device, dtype=torch.int32).contiguous()
    if value is None:
        value = -1
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
            or not -1 <= value <= _INT32_MAX):
        raise ValueError(f"{name} must be an int >= 0 and <= {_INT32_MAX} (int32), or -1/None for "
                         f"unlimited, got {value!r}")
    return torch.full((n,), int(value), dtype=torch.int32, device=device)


class InterleaveState:
    """Per-row phase, chunk position, text/speech counts and finish reason for N rows.

    spec: the model's wavalign.modality.ModalitySpec (its id tables and schedule; this module
    sits below modality, which steps gold responses through the state)."""

    def __init__(self, spec, n_rows: int, *, max_text=None, max_speech=None,
                 max_total=None, device: torch.device | str = "cpu"):
        self.spec = spec
        device = torch.device(device)
        schedule = spec.schedule
        self._config = {
            "schedule": SCHEDULE_CODES[schedule.kind],
            "text_chunk": schedule.text or 0,
            "speech_chunk": schedule.speech or 0,
            # ratio: [2 * pairs] int32 (text tokens, speech units) per pair
            "ratio_pattern": (torch.tensor([v for pair in schedule.unit_pattern() for v in pair],
                                           dtype=torch.int32, device=device)
                              if schedule.kind == "ratio" else None),
            "id_modality": spec.modality_table().to(device),
            "eos": -1 if spec.eos is None else spec.eos,
            "begin_audio": -1 if spec.begin_audio is None else spec.begin_audio,
            "end_audio": -1 if spec.end_audio is None else spec.end_audio,
            "end_text": -1 if spec.end_text is None else spec.end_text,
        }
        self.table = spec.interleave_table().to(device)  # [4, R, 2]
        self.state = {
            "max_text": _budget(max_text, n_rows, "max_text", device),
            "max_speech": _budget(max_speech, n_rows, "max_speech", device),
            "max_total": _budget(max_total, n_rows, "max_total", device),
            "phase": torch.full((n_rows,), PHASE_TEXT, dtype=torch.int8, device=device),
            "chunk_count": torch.zeros(n_rows, dtype=torch.int32, device=device),
            "chunk_index": torch.zeros(n_rows, dtype=torch.int32, device=device),
            "text_count": torch.zeros(n_rows, dtype=torch.int32, device=device),
            "speech_count": torch.zeros(n_rows, dtype=torch.int32, device=device),
            "text_done": torch.zeros(n_rows, dtype=torch.int8, device=device),
            "finish_reason": torch.zeros(n_rows, dtype=torch.int8, device=device),
        }
        if schedule.kind == "chunked":  # a zero text budget starts in speech
            no_text = self.state["max_text"] == 0
            self.state["text_done"][no_text] = 1
            self.state["phase"][no_text] = PHASE_SPEECH
        self.allowed_set = ops.interleave_advance(self._config, self.state, None)

    def allowed_ranges(self) -> torch.Tensor:
        """[N, R, 2] int64 allowed id ranges for the next sample (sampler input)."""
        return self.table[self.allowed_set.long()]

    def advance(self, sampled: torch.Tensor) -> None:
        """sampled: [N] int64 ids just emitted (a tensor, an int64 numpy array or a list of
        ints); finished rows ignore theirs."""
        if not isinstance(sampled, (torch.Tensor, np.ndarray, list, tuple)):
            raise TypeError(f"sampled must be a [N] int64 tensor, numpy array or list of ints, "
                            f"got {type(sampled).__name__}")
        if isinstance(sampled, (list, tuple)):  # exact: ints only, in int64
            sampled = ops.integer_tensor(sampled, "sampled", *ops.INT64, "ids must be integers (int64)",
                                          self.state["phase"].device, integral_floats=False)
        sampled = ops.as_tensor(sampled, "sampled", torch.int64, self.state["phase"].device)
        self.allowed_set = ops.interleave_advance(self._config, self.state, sampled.contiguous())

    def advance_status(self, sampled: torch.Tensor) -> torch.Tensor:
        """advance() without the host-side check, for a decode loop that must not wait for the
        device each token: sampled is a [N] int64 tensor on the state's device; returns the
        [N] int32 status (0 ok, 1 id outside the vocabulary, 2 id not allowed in the row's
        phase; a rejected row keeps its state). The caller checks it (interleave_status_error)."""
        self.allowed_set, status = ops.interleave_advance_status(self._config, self.state, sampled.contiguous())
        return status

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (int64 indices), e.g. to drop finished rows from the batch."""
        self.state = {name: value[rows] for name, value in self.state.items()}
        self.allowed_set = self.allowed_set[rows]

    @property
    def finished(self) -> torch.Tensor:
        return self.state["finish_reason"] != FINISH_RUNNING

    @property
    def phase(self) -> torch.Tensor:
        return self.state["phase"]

    def finish_reasons(self) -> list[str]:
        return [FINISH_NAMES[int(r)] for r in self.state["finish_reason"].tolist()]
