"""ModalitySpec: which token ids are text, which are speech, and how they interleave.

WavAlign treats the two modalities differently (RL on text, SFT anchor on speech), so every
component needs one precise answer to "what modality is this id?". A spec holds:

- ``text_ranges`` / ``speech_ranges``: half-open id ranges ``[lo, hi)``; they may not overlap.
  Ids in neither (e.g. padding rows of an enlarged embedding) are never sampled.
- special ids (EOS, BOS, pad, begin/end of audio, optional begin/end of text). Specials may sit
  inside the text ranges (as in real tokenizers) but never inside the speech ranges.
- ``boundary_is_speech``: begin/end-of-audio count as speech tokens (default, as the public
  WavAlign code) or as text.
- ``schedule``: ``sequential`` (all text, then all speech), ``chunked(text=n, speech=m)``
  (GLM-4-Voice: 13 text then 26 speech, repeated) or ``free`` (the model chooses).

Token types (used by every loss): -1 = not a response token, 0 = text, 1 = speech.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import yaml

TEXT, SPEECH, NOT_RESPONSE = 0, 1, -1
NEITHER = 2  # an id in no modality range (e.g. padding rows of an enlarged embedding)
SCHEDULE_KINDS = ("sequential", "chunked", "free")  # native codes 0, 1, 2
SPECIAL_NAMES = ("eos", "bos", "pad", "begin_audio", "end_audio", "begin_text", "end_text")

Range = tuple[int, int]


@dataclass(frozen=True)
class Schedule:
    kind: str = "sequential"
    text: int | None = None  # chunked: text tokens per chunk
    speech: int | None = None  # chunked: speech tokens per chunk

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule.kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.kind == "chunked":
            for name in ("text", "speech"):
                value = getattr(self, name)
                if not (isinstance(value, int) and value > 0):
                    raise ValueError(f"schedule.{name} must be a positive int for a chunked schedule, got {value!r}")
        elif self.text is not None or self.speech is not None:
            raise ValueError(f"schedule.text / schedule.speech apply only to kind 'chunked', not {self.kind!r}")

    @classmethod
    def sequential(cls) -> "Schedule":
        return cls("sequential")

    @classmethod
    def chunked(cls, text: int, speech: int) -> "Schedule":
        return cls("chunked", text, speech)

    @classmethod
    def free(cls) -> "Schedule":
        return cls("free")


def _normalize_ranges(ranges: Iterable[Sequence[int]], name: str) -> tuple[Range, ...]:
    out = []
    for item in ranges:
        if len(item) != 2:
            raise ValueError(f"{name} entries must be [lo, hi) pairs, got {item!r}")
        lo, hi = int(item[0]), int(item[1])
        if lo >= hi:
            raise ValueError(f"{name} range [{lo}, {hi}) is empty or reversed")
        out.append((lo, hi))
    return tuple(sorted(out))


def ids_to_ranges(ids: Iterable[int]) -> tuple[Range, ...]:
    """Compress ids into sorted half-open ranges: [3, 4, 5, 9] -> ((3, 6), (9, 10))."""
    ranges: list[list[int]] = []
    for token in sorted(set(int(i) for i in ids)):
        if ranges and token == ranges[-1][1]:
            ranges[-1][1] += 1
        else:
            ranges.append([token, token + 1])
    return tuple((lo, hi) for lo, hi in ranges)


def _inside(token: int, ranges: Sequence[Range]) -> bool:
    return any(lo <= token < hi for lo, hi in ranges)


@dataclass(frozen=True)
class ModalitySpec:
    vocab_size: int
    text_ranges: tuple[Range, ...]
    speech_ranges: tuple[Range, ...]
    eos: int | None = None
    bos: int | None = None
    pad: int | None = None
    begin_audio: int | None = None
    end_audio: int | None = None
    begin_text: int | None = None
    end_text: int | None = None
    boundary_is_speech: bool = True
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self):
        if not (isinstance(self.vocab_size, int) and self.vocab_size > 0):
            raise ValueError(f"vocab_size must be a positive int, got {self.vocab_size!r}")
        object.__setattr__(self, "text_ranges", _normalize_ranges(self.text_ranges, "text_ranges"))
        object.__setattr__(self, "speech_ranges", _normalize_ranges(self.speech_ranges, "speech_ranges"))
        if isinstance(self.schedule, dict):
            object.__setattr__(self, "schedule", Schedule(**self.schedule))
        for name in ("text_ranges", "speech_ranges"):
            ranges = getattr(self, name)
            if not ranges:
                raise ValueError(f"{name} is empty: a spoken dialogue model needs both text and speech ids")
            if ranges[-1][1] > self.vocab_size or ranges[0][0] < 0:
                raise ValueError(f"{name} {list(ranges)} reach outside [0, vocab_size={self.vocab_size})")
        every = sorted([(lo, hi, "text") for lo, hi in self.text_ranges] +
                       [(lo, hi, "speech") for lo, hi in self.speech_ranges])
        for (lo_a, hi_a, kind_a), (lo_b, hi_b, kind_b) in zip(every, every[1:]):
            if lo_b < hi_a:
                raise ValueError(f"{kind_a} range [{lo_a}, {hi_a}) overlaps {kind_b} range [{lo_b}, {hi_b})")
        for name in SPECIAL_NAMES:
            token = getattr(self, name)
            if token is None:
                continue
            if not (isinstance(token, int) and 0 <= token < self.vocab_size):
                raise ValueError(f"special id {name}={token!r} is outside [0, vocab_size={self.vocab_size})")
            if _inside(token, self.speech_ranges):
                raise ValueError(f"special id {name}={token} lies inside the speech ranges; specials must be separate ids")

    # ------------------------------------------------------------------ typing
    @property
    def boundary_ids(self) -> tuple[int, ...]:
        return tuple(t for t in (self.begin_audio, self.end_audio) if t is not None)

    def type_table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[vocab_size] int8: the modality of every id (0 text, 1 speech)."""
        table = torch.zeros(self.vocab_size, dtype=torch.int8)
        for lo, hi in self.speech_ranges:
            table[lo:hi] = SPEECH
        for token in self.boundary_ids:
            table[token] = SPEECH if self.boundary_is_speech else TEXT
        return table.to(device)

    def modality_table(self) -> torch.Tensor:
        """[vocab_size] int8 for the interleave state machine: 0 text, 1 speech, 2 neither.

        Boundary ids follow boundary_is_speech; other specials outside every range are text.
        """
        table = torch.full((self.vocab_size,), NEITHER, dtype=torch.int8)
        for lo, hi in self.text_ranges:
            table[lo:hi] = TEXT
        for lo, hi in self.speech_ranges:
            table[lo:hi] = SPEECH
        for name in SPECIAL_NAMES:
            token = getattr(self, name)
            if token is not None and table[token] == NEITHER:
                table[token] = TEXT
        for token in self.boundary_ids:
            table[token] = SPEECH if self.boundary_is_speech else TEXT
        return table

    def interleave_table(self) -> torch.Tensor:
        """[4, R, 2] int64: the allowed id ranges of each interleave set (AllowedSet in
        cpp/include/wavalign/interleave.h), padded with empty (0, 0) ranges.

        Built from the reference predicate, so it matches the native state machine exactly.
        """
        from wavalign.reference.interleave import N_ALLOWED_SETS, allowed_mask

        per_set = [ids_to_ranges(torch.nonzero(allowed_mask(self, s)).flatten().tolist())
                   for s in range(N_ALLOWED_SETS)]
        width = max(1, max(len(r) for r in per_set))
        if width > 64:
            raise ValueError(f"an interleave set needs {width} id ranges; the sampler takes at most 64")
        table = torch.zeros(N_ALLOWED_SETS, width, 2, dtype=torch.int64)
        for index, ranges in enumerate(per_set):
            if ranges:
                table[index, : len(ranges)] = torch.tensor(ranges)
        return table

    def token_types(self, ids: torch.Tensor, response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [N, T] int64 -> [N, T] int8 (0 text, 1 speech, -1 where response_mask is False).

        Raises ValueError for ids outside [0, vocab_size) at positions that count.
        """
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
        if response_mask is not None and response_mask.shape != ids.shape:
            raise ValueError(f"response_mask must have the shape of ids {list(ids.shape)}, got {list(response_mask.shape)}")
        counted = ids if response_mask is None else ids[response_mask.bool()]
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= self.vocab_size):
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size}), found [{int(counted.min())}, {int(counted.max())}]"
            )
        table = self.type_table(ids.device)
        types = table[ids.clamp(0, self.vocab_size - 1).long()]
        if response_mask is not None:
            types = torch.where(response_mask.bool(), types, torch.full_like(types, NOT_RESPONSE))
        return types

    # ------------------------------------------------------------------ layout
    def layout_response(self, text_ids: Sequence[int], speech_ids: Sequence[int]) -> list[int]:
        """A gold response (text ids, speech vocabulary ids) laid out by the schedule, ending
        in end-of-audio and EOS, and checked token by token against the interleave state
        machine's reference twin, so it is exactly a sequence the sampler could emit.

        sequential / free: text, begin-of-audio, speech, end-of-audio, EOS.
        chunked(n, m): n text, m speech, ... with end-of-text closing the text channel.
        """
        from wavalign.reference.interleave import RowState, reference_step

        text_ids, speech_ids = [int(t) for t in text_ids], [int(s) for s in speech_ids]
        if self.eos is None or self.end_audio is None:
            raise ValueError("laying out a response needs the spec's eos and end_audio ids")
        if self.schedule.kind in ("sequential", "free"):
            if self.begin_audio is None:
                raise ValueError("a sequential layout needs the spec's begin_audio id")
            out = text_ids + [self.begin_audio] + speech_ids + [self.end_audio, self.eos]
        else:
            if self.end_text is None:
                raise ValueError("a chunked layout needs the spec's end_text id")
            n, m = self.schedule.text, self.schedule.speech
            out, text, speech = [], text_ids + [self.end_text], speech_ids
            while text:
                out += text[:n]
                text = text[n:]
                if text:
                    out += speech[:m]
                    speech = speech[m:]
            out += speech + [self.end_audio, self.eos]
        row = RowState()
        for position, token in enumerate(out):
            try:
                reference_step(self, row, token)
            except ValueError as error:
                raise ValueError(f"response token {position} (id {token}) breaks the schedule: {error}") from None
        return out

    # ------------------------------------------------------------------ phases
    def phase_ranges(self, phase: int) -> tuple[Range, ...]:
        """Ids a row may emit while in `phase` (TEXT or SPEECH), as sorted disjoint ranges.

        Text phase: text ids (which hold EOS and the text-side specials) plus begin-of-audio.
        Speech phase: speech ids plus end-of-audio and EOS. The rollout engine's interleave
        state machine narrows these further by schedule (chunk counts, forced switches).
        """
        if phase == TEXT:
            extra = [self.begin_audio]
            base = self.text_ranges
        elif phase == SPEECH:
            extra = [self.end_audio, self.eos]
            base = self.speech_ranges
        else:
            raise ValueError(f"phase must be TEXT ({TEXT}) or SPEECH ({SPEECH}), got {phase!r}")
        ids = [t for t in extra if t is not None and not _inside(t, base)]
        merged = sorted(list(base) + [(t, t + 1) for t in ids])
        out: list[list[int]] = []
        for lo, hi in merged:
            if out and lo <= out[-1][1]:
                out[-1][1] = max(out[-1][1], hi)
            else:
                out.append([lo, hi])
        return tuple((lo, hi) for lo, hi in out)

    # ------------------------------------------------------------------ builders
    def to_dict(self) -> dict:
        data = asdict(self)
        data["text_ranges"] = [list(r) for r in self.text_ranges]
        data["speech_ranges"] = [list(r) for r in self.speech_ranges]
        data["schedule"] = {k: v for k, v in asdict(self.schedule).items() if v is not None}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModalitySpec":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModalitySpec fields {sorted(unknown)}; allowed: {sorted(known)}")
        data = dict(data)
        if "schedule" in data and isinstance(data["schedule"], dict):
            data["schedule"] = Schedule(**data["schedule"])
        return cls(**data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModalitySpec":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"modality spec not found: {path}")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of ModalitySpec fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        *,
        speech_pattern: str = r"<\|audio_(\d+)\|>",
        begin_audio: str | None = "<|begin_of_audio|>",
        end_audio: str | None = "<|end_of_audio|>",
        vocab_size: int | None = None,
        schedule: Schedule | None = None,
        boundary_is_speech: bool = True,
    ) -> "ModalitySpec":
        """Build a spec from a Hugging Face tokenizer whose speech tokens match `speech_pattern`.

        Text ids are every other id of the tokenizer. `vocab_size` may exceed len(tokenizer)
        (padded embeddings); the extra ids belong to neither modality.
        """
        vocab = tokenizer.get_vocab()
        pattern = re.compile(speech_pattern)
        speech_ids = [i for name, i in vocab.items() if pattern.fullmatch(name)]
        if not speech_ids:
            raise ValueError(f"no token of the tokenizer matches speech_pattern {speech_pattern!r}")
        size = vocab_size if vocab_size is not None else len(tokenizer)
        specials = {}
        for name, token in (("begin_audio", begin_audio), ("end_audio", end_audio)):
            if token is None:
                continue
            if token not in vocab:
                raise ValueError(f"{name} token {token!r} is not in the tokenizer's vocabulary")
            specials[name] = vocab[token]
        for name in ("eos", "bos", "pad"):
            token_id = getattr(tokenizer, f"{name}_token_id", None)
            if token_id is not None:
                specials[name] = int(token_id)
        beyond = [i for i in speech_ids if i >= size]
        if beyond:
            raise ValueError(f"{len(beyond)} speech tokens have ids >= vocab_size {size} (e.g. {beyond[0]}); "
                             f"the model's embedding is smaller than the tokenizer")
        speech_set = set(speech_ids)
        # Ids the model cannot emit (tokenizer entries beyond its embedding) belong to no modality.
        text_ids = [i for i in range(min(len(tokenizer), size))
                    if i not in speech_set and i not in specials.values()]
        text_ids += [specials[n] for n in ("eos", "bos", "pad") if n in specials and specials[n] < size]
        return cls(
            vocab_size=size,
            text_ranges=ids_to_ranges(text_ids),
            speech_ranges=ids_to_ranges(speech_ids),
            boundary_is_speech=boundary_is_speech,
            schedule=schedule or Schedule.sequential(),
            **specials,
        )


def split_response(response: Iterable[int], unit_offset: int, n_units: int,
                   special_ids: frozenset[int]) -> tuple[list[int], list[int]]:
    """Response ids -> (text ids without specials, speech units = id - unit_offset) for a model
    whose speech tokens are the contiguous ids [unit_offset, unit_offset + n_units)."""
    text_ids, units = [], []
    for token in response:
        token = int(token)
        if unit_offset <= token < unit_offset + n_units:
            units.append(token - unit_offset)
        elif token not in special_ids:
            text_ids.append(token)
    return text_ids, units


def load_preset(name: str) -> ModalitySpec:
    """A spec shipped in configs/modality/<name>.yaml (e.g. 'vita_audio_like')."""
    presets = Path(__file__).resolve().parent / "configs" / "modality"
    path = presets / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in presets.glob("*.yaml"))
        raise FileNotFoundError(f"no modality preset {name!r}; available: {available}")
    return ModalitySpec.from_yaml(path)
