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
  (GLM-4-Voice: 13 text then 26 speech, repeated), ``ratio(pattern)`` (VITA-Audio's interval
  ratio list, every speech block between begin/end-of-audio) or ``free`` (the model chooses).

Token types (used by every loss): -1 = not a response token, 0 = text, 1 = speech. The
codes live in wavalign.codes (re-exported here).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import yaml

from wavalign.codes import (  # noqa: F401  (TEXT, SPEECH, NOT_RESPONSE, NEITHER re-exported)
    N_ALLOWED_SETS, NEITHER, NOT_RESPONSE, SCHEDULE_CODES, SCHEDULE_KINDS, SPEECH, TEXT,
)
from wavalign import ops
from wavalign.interleave import InterleaveState

SPECIAL_NAMES = ("eos", "bos", "pad", "begin_audio", "end_audio", "begin_text", "end_text")

Range = tuple[int, int]


@dataclass(frozen=True)
class Schedule:
    """How a response interleaves text and speech.

    sequential: all text, then begin-of-audio, all speech, end-of-audio.
    chunked(text=n, speech=m): n text tokens, m speech tokens, repeated (GLM-4-Voice: 13, 26).
    free: the model chooses.
    ratio(pattern=[t1, s1, t2, s2, ...], boundaries=True): VITA-Audio's interval ratio list.
        Pair k (the last repeating) is t_k text tokens then a speech block wrapped in
        begin/end-of-audio; with ``boundaries`` (the public code's reading) s_k counts the two
        boundary tokens, so the block holds s_k - 2 units. The public launch script's lists:
        Balance [1, 4, 3, 8, 4, 10]; Boost and Plus-Vanilla [1, 10, 4, 10].
    """

    kind: str = "sequential"
    text: int | None = None  # chunked: text tokens per chunk
    speech: int | None = None  # chunked: speech tokens per chunk
    pattern: tuple[int, ...] | None = None  # ratio: (text, speech) counts, pair after pair
    boundaries: bool | None = None  # ratio: speech counts include begin/end-of-audio (default True)

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
        if self.kind == "ratio":
            pattern = self.pattern
            if isinstance(pattern, str):  # "1 4 3 8 4 10" as the public launch script writes it
                pattern = pattern.replace(",", " ").split()
                try:
                    pattern = [int(piece) for piece in pattern]
                except ValueError:
                    raise ValueError(f"schedule.pattern must be integers, got {self.pattern!r}") from None
            if not (isinstance(pattern, (list, tuple)) and len(pattern) >= 2 and len(pattern) % 2 == 0
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in pattern)):
                raise ValueError("schedule.pattern must be an even-length list of ints [text, speech, text, "
                                 f"speech, ...] for a ratio schedule, got {self.pattern!r}")
            object.__setattr__(self, "pattern", tuple(pattern))
            if self.boundaries is None:
                object.__setattr__(self, "boundaries", True)
            if not isinstance(self.boundaries, bool):
                raise ValueError(f"schedule.boundaries must be true or false, got {self.boundaries!r}")
            least = 3 if self.boundaries else 1  # a block holds at least one unit
            for position, value in enumerate(self.pattern):
                low = 1 if position % 2 == 0 else least
                if value < low or value > 2**31 - 1:
                    what = "text" if position % 2 == 0 else "speech"
                    raise ValueError(f"schedule.pattern[{position}] ({what}) must be >= {low}"
                                     f"{' (the two boundary tokens and one unit)' if low == 3 else ''}, got {value}")
        elif self.pattern is not None or self.boundaries is not None:
            raise ValueError(f"schedule.pattern / schedule.boundaries apply only to kind 'ratio', not {self.kind!r}")

    def unit_pattern(self) -> tuple[tuple[int, int], ...]:
        """ratio: ((text tokens, speech units), ...) per pair, the units net of the boundaries."""
        if self.kind != "ratio":
            raise ValueError(f"unit_pattern is defined for ratio schedules, not {self.kind!r}")
        drop = 2 if self.boundaries else 0
        return tuple((self.pattern[i], self.pattern[i + 1] - drop) for i in range(0, len(self.pattern), 2))

    @classmethod
    def sequential(cls) -> "Schedule":
        return cls("sequential")

    @classmethod
    def chunked(cls, text: int, speech: int) -> "Schedule":
        return cls("chunked", text, speech)

    @classmethod
    def free(cls) -> "Schedule":
        return cls("free")

    @classmethod
    def ratio(cls, pattern: Sequence[int], boundaries: bool = True) -> "Schedule":
        return cls("ratio", pattern=tuple(pattern), boundaries=boundaries)


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


def _mask_to_ranges(mask: torch.Tensor) -> tuple[Range, ...]:
    """[V] bool -> sorted half-open ranges of its True ids (ids_to_ranges of its nonzeros,
    without a Python loop over ids)."""
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), mask.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    step = padded[1:] - padded[:-1]  # [V + 1]: +1 where a run starts, -1 one past its end
    starts = torch.nonzero(step == 1).flatten().tolist()
    ends = torch.nonzero(step == -1).flatten().tolist()
    return tuple(zip(starts, ends))


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
        if self.schedule.kind == "ratio" and (self.begin_audio is None or self.end_audio is None):
            raise ValueError("a ratio schedule wraps every speech block in begin_audio / end_audio: the spec needs both ids")

    # ------------------------------------------------------------------ typing
    @property
    def boundary_ids(self) -> tuple[int, ...]:
        return tuple(t for t in (self.begin_audio, self.end_audio) if t is not None)

    def modality_table(self) -> torch.Tensor:
        """[vocab_size] int8, the one id -> modality table: 0 text, 1 speech, 2 neither.

        The interleave state machine reads it as is; token_types maps neither to text.
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

        Built from the native state machine's own predicate, so the two cannot disagree.
        """
        modality = self.modality_table()  # [V] int8

        def code(token):
            return -1 if token is None else token

        specials = (code(self.eos), code(self.begin_audio), code(self.end_audio), code(self.end_text))
        per_set = [_mask_to_ranges(ops.interleave_allowed_mask(SCHEDULE_CODES[self.schedule.kind],
                                                                modality, *specials, s))
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
        table = self.modality_table()  # [V] int8; ids in no range count as text
        table = table.masked_fill(table == NEITHER, TEXT).to(ids.device)
        types = table[ids.clamp(0, self.vocab_size - 1).long()]
        if response_mask is not None:
            types = torch.where(response_mask.bool(), types, torch.full_like(types, NOT_RESPONSE))
        return types

    # ------------------------------------------------------------------ layout
    def layout_response(self, text_ids: Sequence[int], speech_ids: Sequence[int]) -> list[int]:
        """A gold response (text ids, speech vocabulary ids) laid out by the schedule, ending
        in end-of-audio and EOS, and checked token by token by the native interleave state
        machine (one row), so it is exactly a sequence the sampler could emit.

        sequential / free: text, begin-of-audio, speech, end-of-audio, EOS.
        chunked(n, m): n text, m speech, ... with end-of-text closing the text channel.
        ratio(pattern): the public WavAlign rule (ratio_layout), then EOS.
        """

        text_ids, speech_ids = [int(t) for t in text_ids], [int(s) for s in speech_ids]
        if self.eos is None or self.end_audio is None:
            raise ValueError("laying out a response needs the spec's eos and end_audio ids")
        if self.schedule.kind in ("sequential", "free"):
            if self.begin_audio is None:
                raise ValueError("a sequential layout needs the spec's begin_audio id")
            out = text_ids + [self.begin_audio] + speech_ids + [self.end_audio, self.eos]
        elif self.schedule.kind == "ratio":
            out = ratio_layout(text_ids, speech_ids, self.schedule.unit_pattern(), self.begin_audio,
                               self.end_audio) + [self.eos]
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
        row = InterleaveState(self, 1)
        for position, token in enumerate(out):
            if bool(row.finished[0]):  # after EOS the state machine ignores ids (so did the twin)
                continue
            if not 0 <= token < self.vocab_size:
                detail = f"id {token} is outside [0, {self.vocab_size})"
            else:
                phase = int(row.phase[0])  # a rejected id leaves the row unchanged
                try:
                    row.advance(torch.tensor([token], dtype=torch.int64))
                    continue
                except ValueError:
                    detail = f"id {token} is not allowed in phase {phase}"
            raise ValueError(f"response token {position} (id {token}) breaks the schedule: {detail}")
        return out

    # ------------------------------------------------------------------ builders
    def to_dict(self) -> dict:
        data = asdict(self)
        data["text_ranges"] = [list(r) for r in self.text_ranges]
        data["speech_ranges"] = [list(r) for r in self.speech_ranges]
        data["schedule"] = {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in asdict(self.schedule).items() if v is not None}
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
        from wavalign.yaml_config import load_mapping

        path = Path(path)
        data = load_mapping(path, "ModalitySpec fields", kind="modality spec")
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


def _chunks(ids: list[int], sizes: Sequence[int]) -> list[list[int]]:
    """ids cut into consecutive chunks of sizes[0], sizes[1], ..., the last size repeating."""
    out, start, index = [], 0, 0
    while start < len(ids):
        size = sizes[min(index, len(sizes) - 1)]
        out.append(ids[start:start + size])
        start, index = start + size, index + 1
    return out


def ratio_layout(text_ids: Sequence[int], speech_ids: Sequence[int], unit_pattern: Sequence[tuple[int, int]],
                 begin_audio: int, end_audio: int) -> list[int]:
    """A gold response's text and speech ids interleaved by a ratio list, as the public
    WavAlign trainer lays out its SFT targets (`_apply_text_audio_interval`):

    text and speech are cut independently into chunks of the pattern's sizes (the last pair
    repeating); the stream with more chunks has its extra chunks merged into its last one, so
    the two counts match; then each pair is its text chunk followed by its speech chunk
    between begin/end-of-audio. Speech only: one block. No speech: the text alone (the
    public code would keep only the first text chunk there, dropping the rest). No EOS.
    """
    text_ids, speech_ids = list(text_ids), list(speech_ids)
    if not speech_ids:
        return text_ids
    if not text_ids:
        return [begin_audio] + speech_ids + [end_audio]
    text_chunks = _chunks(text_ids, [t for t, _ in unit_pattern])
    speech_chunks = _chunks(speech_ids, [u for _, u in unit_pattern])
    pairs = min(len(text_chunks), len(speech_chunks))
    text_chunks = text_chunks[:pairs - 1] + [sum(text_chunks[pairs - 1:], [])]
    speech_chunks = speech_chunks[:pairs - 1] + [sum(speech_chunks[pairs - 1:], [])]
    out: list[int] = []
    for text, speech in zip(text_chunks, speech_chunks):
        out += text + [begin_audio] + speech + [end_audio]
    return out


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
    """A spec shipped in configs/modality/<name>.yaml (e.g. 'vita_audio_balance')."""
    presets = Path(__file__).resolve().parent / "configs" / "modality"
    path = presets / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in presets.glob("*.yaml"))
        raise FileNotFoundError(f"no modality preset {name!r}; available: {available}")
    return ModalitySpec.from_yaml(path)


def resolve_spec(model_dir: str | Path, tokenizer=None, *, modality: str | None = None,
                 schedule: Mapping | None = None, speech_pattern: str | None = None,
                 vocab_size: int | None = None) -> ModalitySpec:
    """The ModalitySpec of a model directory, resolved the same way by every entry point.

    1. `modality` given: a .yaml / .yml path -> ModalitySpec.from_yaml, else a preset name
       (load_preset);
    2. else <model_dir>/modality.yaml, when present (what checkpoints and the world save);
    3. else ModalitySpec.from_tokenizer(tokenizer), loading the tokenizer from model_dir when
       none is given; `speech_pattern` / `vocab_size` are passed on when not None.
    Then a `schedule` mapping (Schedule fields) replaces the spec's schedule.
    """
    model_dir = Path(model_dir)
    if modality is not None:
        spec = (ModalitySpec.from_yaml(modality) if str(modality).endswith((".yaml", ".yml"))
                else load_preset(str(modality)))
    elif (model_dir / "modality.yaml").is_file():
        spec = ModalitySpec.from_yaml(model_dir / "modality.yaml")
    else:
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        options = {name: value for name, value in (("speech_pattern", speech_pattern), ("vocab_size", vocab_size))
                   if value is not None}
        spec = ModalitySpec.from_tokenizer(tokenizer, **options)
    if schedule is not None:
        spec = ModalitySpec.from_dict({**spec.to_dict(), "schedule": dict(schedule)})
    return spec
