"""Response formats: how a model's prompt and response ids are built and split into channels.

A `ResponseFormat` is what the data loader, the rewards and the evaluator need to know about a
model's token layout; nothing else of the model. `GenericFormat` serves any Hugging Face
tokenizer with speech tokens; the built-in world's `ChatFormat` (wavalign.world.policy)
implements the same protocol, as a user's own format would.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from wavalign.modality import ModalitySpec, split_response


@runtime_checkable
class ResponseFormat(Protocol):
    def prompt_ids(self, text: str | None = None, units: Sequence[int] | None = None,
                   messages: list[dict] | None = None) -> list[int]:
        """The prompt as ids: a user turn given as text, speech units, or chat messages."""

    def response_ids(self, text: str, units: Sequence[int]) -> list[int]:
        """A gold response (text and speech units) laid out as the model emits it."""

    def split(self, response: Sequence[int]) -> tuple[str, list[int]]:
        """Generated response ids -> (text channel, speech units)."""


def user_text(messages: Sequence[dict]) -> str:
    """The user's written words in chat messages (turns holding an <audio> placeholder are speech)."""
    return " ".join(str(m["content"]) for m in messages if m.get("role", "user") == "user"
                    and str(m["content"]).strip() and "<audio>" not in str(m["content"]))


class GenericFormat:
    """Prompt and response ids for any Hugging Face tokenizer with speech tokens.

    Prompts go through the tokenizer's chat template when it has one (else the plain text);
    gold responses are laid out by the ModalitySpec; speech units are offsets into the
    spec's (single, contiguous) speech id range.
    """

    def __init__(self, tokenizer, spec: ModalitySpec):
        if len(spec.speech_ranges) != 1:
            raise ValueError("speech units map onto vocabulary ids only when the speech ids are one contiguous range")
        self.tokenizer, self.spec = tokenizer, spec
        self.unit_offset, end = spec.speech_ranges[0]
        self.n_units = end - self.unit_offset
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def unit_ids(self, units: Sequence[int]) -> list[int]:
        units = [int(u) for u in units]
        if any(not 0 <= u < self.n_units for u in units):
            raise ValueError(f"speech units must lie in [0, {self.n_units})")
        return [self.unit_offset + u for u in units]

    def prompt_ids(self, text: str | None = None, units: Sequence[int] | None = None,
                   messages: list[dict] | None = None) -> list[int]:
        if units is not None:
            raise ValueError("speech prompts need prompt_ids for this model (its chat template is text-only here)")
        if messages is None:
            if text is None:
                raise ValueError("a prompt needs text or messages")
            messages = [{"role": "user", "content": text}]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) else ids)
        return self.text_ids("\n".join(str(m.get("content", "")) for m in messages))

    def response_ids(self, text: str, units: Sequence[int]) -> list[int]:
        return self.spec.layout_response(self.text_ids(text), self.unit_ids(units))

    def split(self, response: Sequence[int]) -> tuple[str, list[int]]:
        text_ids, units = split_response(response, self.unit_offset, self.n_units, self.special_ids)
        return self.tokenizer.decode(text_ids).strip(), units
