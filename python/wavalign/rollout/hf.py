"""Use a ModalitySpec's interleave schedule inside Hugging Face `generate()`.

    processor = InterleaveLogitsProcessor(spec, prompt_length=input_ids.shape[1], max_text=32)
    model.generate(input_ids, logits_processor=LogitsProcessorList([processor]), ...)

The processor keeps one native InterleaveState per generate() call and advances it on the
last generated column, so each step costs one gather and one masked_fill, not a Python walk
over every row's history. It lets `generate` obey exactly the constraints RolloutEngine
enforces (tests check both against the reference twin), which is what makes
benchmarks/bench_rollout.py a like-for-like comparison.

Limits: prompts must be left-padded (every row's prompt ends at column prompt_length, as
`generate` requires for decoder-only models), and a processor instance serves one
generate() call at a time; it resets itself when a new call starts.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from wavalign.modality import ModalitySpec
from wavalign.interleave import InterleaveState


def _set_masks(spec: ModalitySpec) -> torch.Tensor:
    """[4, V] bool: the ids each interleave set allows (rows of spec.interleave_table())."""
    table = spec.interleave_table()  # [4, R, 2]
    ids = torch.arange(spec.vocab_size)
    lo, hi = table[..., 0], table[..., 1]  # [4, R]
    inside = (ids[None, None, :] >= lo[..., None]) & (ids[None, None, :] < hi[..., None])  # [4, R, V]
    return inside.any(dim=1)


class InterleaveLogitsProcessor(LogitsProcessor):
    """A transformers LogitsProcessor that sets every id the schedule forbids to -inf.

    Args:
        spec: the model's ModalitySpec.
        prompt_length: width of the (left-padded) prompt batch given to generate().
        max_text, max_speech, max_total: the same budgets RolloutEngine takes (None = unlimited).

    Rows the state machine has finished are left unmasked when their allowed set is empty
    (a spec without EOS); generate() then decides what they emit, as it would without us.
    Score columns beyond spec.vocab_size (padded LM heads) are always forbidden.
    """

    def __init__(self, spec: ModalitySpec, prompt_length: int, *, max_text: int | None = None,
                 max_speech: int | None = None, max_total: int | None = None):
        if not isinstance(prompt_length, int) or prompt_length < 1:
            raise ValueError(f"prompt_length must be an int >= 1, got {prompt_length!r}")
        self.spec, self.prompt_length = spec, prompt_length
        self.budgets = {"max_text": max_text, "max_speech": max_speech, "max_total": max_total}
        self.masks = _set_masks(spec)  # [4, V]
        self.nonempty = self.masks.any(dim=1)  # [4]
        self.state: InterleaveState | None = None
        self.generated = 0

    def _sync_state(self, input_ids: torch.Tensor) -> None:
        generated = input_ids.shape[1] - self.prompt_length
        if generated < 0:
            raise ValueError(f"input_ids has {input_ids.shape[1]} columns, fewer than prompt_length="
                             f"{self.prompt_length}")
        if self.state is None or generated == 0 or self.state.phase.shape[0] != input_ids.shape[0]:
            if generated != 0:
                raise ValueError("InterleaveLogitsProcessor must see every step of generate() from the first; "
                                 f"it first saw {generated} generated tokens")
            self.state = InterleaveState(self.spec, input_ids.shape[0], device=input_ids.device, **self.budgets)
            self.generated = 0
            return
        if generated != self.generated + 1:
            raise ValueError(f"expected {self.generated + 1} generated tokens, got {generated}: one processor "
                             "instance serves one generate() call, step by step")
        last = input_ids[:, -1].to(torch.int64)  # [N]
        # Rows generate() has finished emit pad ids, which may lie outside the vocabulary
        # table; the state machine ignores finished rows' ids, so clamp them harmlessly.
        last = torch.where(self.state.finished, torch.zeros_like(last), last)
        self.state.advance(last.contiguous())
        self.generated = generated

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids [N, prompt_length + t] int64, scores [N, V'] float -> scores with forbidden ids at -inf."""
        self._sync_state(input_ids)
        sets = self.state.allowed_set.long().to(scores.device)  # [N]
        masks, nonempty = self.masks.to(scores.device), self.nonempty.to(scores.device)
        allowed = masks[sets]  # [N, V]
        allowed |= ~nonempty[sets][:, None]  # empty set (finished, no EOS): leave the row alone
        vocab = self.spec.vocab_size
        if scores.shape[1] < vocab:
            raise ValueError(f"scores have {scores.shape[1]} columns, fewer than the spec's vocab_size {vocab}")
        out = scores.clone()
        out[:, :vocab] = scores[:, :vocab].masked_fill(~allowed, float("-inf"))
        out[:, vocab:] = float("-inf")
        return out
