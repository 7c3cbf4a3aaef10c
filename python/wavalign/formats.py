"""Response formats: how a model's prompt and response ids are built and split into channels.

A `ResponseFormat` is what the data loader, the rewards and the evaluator need to know about a
model's token layout; nothing else of the model. `GenericFormat` serves any Hugging Face
tokenizer with speech tokens; the built-in world's `ChatFormat` (wavalign.world.policy)
implements the same protocol, as a user's own format would.
"""

from __future__ import annotations

import re
import uuid
from typing import Protocol, Sequence, runtime_checkable

from wavalign.modality import ModalitySpec, split_response

#: where a chat message's audio goes: ``<|audio|>`` (the public WavAlign release) or ``<audio>``
AUDIO_PLACEHOLDER = re.compile(r"<\|audio\|>|<audio>")
_PLACEHOLDER_AND_SPACE = re.compile(r"\s*(?:<\|audio\|>|<audio>)\s*")


def count_placeholders(messages: Sequence[dict]) -> list[int]:
    """The number of audio placeholders in each message's content, in order."""
    return [len(AUDIO_PLACEHOLDER.findall(str(m.get("content", "")))) for m in messages]


@runtime_checkable
class ResponseFormat(Protocol):
    def prompt_ids(self, text: str | None = None, units: Sequence[int] | None = None,
                   messages: list[dict] | None = None,
                   audio_units: Sequence[Sequence[int]] | None = None) -> list[int]:
        """The prompt as ids: a user turn given as text and/or speech units, or chat messages.

        audio_units (with messages only): the speech units of each audio placeholder
        (``<|audio|>`` / ``<audio>``) in the messages, in placeholder order; one entry per
        placeholder. Data loaders pass it only when the messages hold placeholders, so a
        format for text-only chats may leave it out of its signature.
        """

    def response_ids(self, text: str, units: Sequence[int]) -> list[int]:
        """A gold response (text and speech units) laid out as the model emits it."""

    def split(self, response: Sequence[int]) -> tuple[str, list[int]]:
        """Generated response ids -> (text channel, speech units)."""


def strip_placeholders(text: str) -> str:
    """Text with its audio placeholders (and the whitespace around them) taken out."""
    return _PLACEHOLDER_AND_SPACE.sub(" ", text).strip()


def user_text(messages: Sequence[dict]) -> str:
    """The user's written words in chat messages: every user turn's text, audio placeholders
    stripped (a turn holding only a placeholder contributes nothing), joined by spaces."""
    parts = (strip_placeholders(str(m.get("content", ""))) for m in messages if m.get("role", "user") == "user")
    return " ".join(part for part in parts if part)


class GenericFormat:
    """Prompt and response ids for any Hugging Face tokenizer with speech tokens.

    Prompts go through the tokenizer's chat template when it has one (else the turns' text
    joined by newlines), each audio placeholder replaced by begin_audio + unit ids + end_audio;
    gold responses are laid out by the ModalitySpec; speech units are offsets into the
    spec's (single, contiguous) speech id range.
    """

    def __init__(self, tokenizer, spec: ModalitySpec):
        if len(spec.speech_ranges) != 1:
            raise ValueError("speech units map onto vocabulary ids only when the speech ids are one contiguous range")
        self.tokenizer, self.spec = tokenizer, spec
        self.unit_offset, end = spec.speech_ranges[0]
        self.n_units = end - self.unit_offset
        # The tokenizer's named specials and the spec's own (boundaries, EOS, ...): none is text.
        spec_specials = (getattr(spec, name) for name in ("eos", "bos", "pad", "begin_audio", "end_audio",
                                                          "begin_text", "end_text"))
        self.special_ids = frozenset(tokenizer.all_special_ids) | {t for t in spec_specials if t is not None}

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def unit_ids(self, units: Sequence[int]) -> list[int]:
        units = [int(u) for u in units]
        if any(not 0 <= u < self.n_units for u in units):
            raise ValueError(f"speech units must lie in [0, {self.n_units})")
        return [self.unit_offset + u for u in units]

    def audio_block(self, units: Sequence[int]) -> list[int]:
        """Speech units as prompt ids: begin_audio (when the spec has one), the unit ids, end_audio."""
        head = [] if self.spec.begin_audio is None else [self.spec.begin_audio]
        tail = [] if self.spec.end_audio is None else [self.spec.end_audio]
        return head + self.unit_ids(units) + tail

    def prompt_ids(self, text: str | None = None, units: Sequence[int] | None = None,
                   messages: list[dict] | None = None,
                   audio_units: Sequence[Sequence[int]] | None = None) -> list[int]:
        """The prompt through the chat template (add_generation_prompt), else the turns'
        contents joined by newlines. Each audio placeholder of the messages becomes
        audio_block(audio_units[i]): the template is rendered to a string with a unique marker
        per placeholder, the text between markers is tokenised (no special tokens added) and
        the audio ids are spliced in, so units never pass through the text tokenizer.
        `units` without messages is a spoken user turn: its text (if any), then the audio."""
        if messages is None:
            if audio_units is not None:
                raise ValueError("audio_units go with messages (one entry per audio placeholder)")
            if text is None and units is None:
                raise ValueError("a prompt needs text, speech units, or messages")
            if units is not None:
                content = "<|audio|>" if not text else f"{text}\n<|audio|>"
                messages, audio_units = [{"role": "user", "content": content}], [units]
            else:
                messages = [{"role": "user", "content": text}]
        elif text is not None or units is not None:
            raise ValueError("give a prompt as messages (with audio_units per placeholder), or as text / units")
        audio_units = list(audio_units or [])
        counts = count_placeholders(messages)
        if sum(counts) != len(audio_units):
            raise ValueError(f"the messages hold {sum(counts)} audio placeholder(s) (<|audio|> / <audio>) but "
                             f"{len(audio_units)} audio unit sequence(s) were given")
        blocks = [self.audio_block(u) for u in audio_units]
        tag = uuid.uuid4().hex
        markers = [f"<<wavalign-audio-{i}-{tag}>>" for i in range(len(blocks))]
        numbered = iter(markers)
        marked = [{**m, "content": AUDIO_PLACEHOLDER.sub(lambda _: next(numbered), str(m.get("content", "")))}
                  if count else m for m, count in zip(messages, counts)]
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
        else:
            rendered = "\n".join(str(m.get("content", "")) for m in marked)
        pieces = re.split("(" + "|".join(re.escape(m) for m in markers) + ")", rendered) if markers else [rendered]
        found = pieces[1::2]
        if found != markers:
            raise ValueError(f"the chat template did not keep the {len(markers)} audio placeholder(s) in order "
                             f"(found {len(found)}); cannot place the audio")
        ids: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2:
                ids += blocks[index // 2]
            elif piece:
                ids += self.text_ids(piece)
        return ids

    def response_ids(self, text: str, units: Sequence[int]) -> list[int]:
        return self.spec.layout_response(self.text_ids(text), self.unit_ids(units))

    def split(self, response: Sequence[int]) -> tuple[str, list[int]]:
        text_ids, units = split_response(response, self.unit_offset, self.n_units, self.special_ids)
        return self.tokenizer.decode(text_ids).strip(), units
