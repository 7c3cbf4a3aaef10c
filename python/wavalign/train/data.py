"""Training examples: prompts, gold responses and reward columns, from the world, JSONL or a
local Hugging Face dataset (``datasets``, the ``[datasets]`` extra).

Two record formats are read (docs/data_format.md):

- **wavalign**: ``prompt_text`` / ``prompt_units`` / ``prompt_ids``, ``response_text`` +
  ``response_units`` or ``response_ids``, optional ``rejected_text`` + ``rejected_units`` or
  ``rejected_ids`` (offline DPO); every other key is a reward column.
- **public**: the WavAlign release's records: ``messages`` (chat turns), ``audios``
  (input audio files), ``sft_target_text`` + ``sft_target_audio`` (gold), optional
  ``rejected_text`` + ``rejected_audio``; ``question_text``, ``task_type`` and the rest are
  reward columns. The i-th ``<|audio|>`` (or ``<audio>``) placeholder across the messages is
  ``audios[i]``; system and earlier turns are kept as history, trailing assistant turns are
  dropped. Audio files (WAV / FLAC / OGG, read by wavalign.audio_io) are resampled to the
  codec's rate and turned into speech units by the run's SpeechCodec (the built-in world
  ships one; real models' speech tokenizers are not bundled), each file once per run
  (RecordConverter.unit_cache); the prompt keeps every turn's text and, at each placeholder,
  its audio (ResponseFormat.prompt_ids(messages=..., audio_units=...)).

A malformed record fails naming ``file:line`` (``dataset[split][index]`` for a HF dataset)
and the problem, or, with ``skip_bad_lines``, is skipped and counted.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch

from wavalign.audio_io import read_audio, resample
from wavalign.data import WAVALIGN_KEYS, TrainExample, iter_jsonl
from wavalign.formats import ResponseFormat, count_placeholders, user_text

log = logging.getLogger(__name__)

PUBLIC_KEYS = {"messages", "audios", "sft_target_text", "sft_target_audio", "rejected_text", "rejected_audio"}


class RecordConverter:
    """JSON records -> TrainExample, for one record format.

    fmt: the model's ResponseFormat; codec: a SpeechCodec that turns audio files of public
    records into speech units (None: records with audio are refused, naming the field).
    base_dir: what relative audio paths resolve against (None: the directory of the JSONL
    file being read, else the working directory; a call's base_dir overrides it).

    unit_cache: the speech units of every audio file encoded so far, keyed by (resolved path,
    file size, mtime in ns, codec class, id(codec), codec.sample_rate), so a question audio
    that many records share is read and encoded once per run (in memory, never on disk).
    encodes: how many files were actually encoded (cache misses).
    """

    def __init__(self, fmt: ResponseFormat, vocab_size: int, *, record_format: str = "auto", codec=None,
                 base_dir: Path | None = None, max_prompt_tokens: int = 2048):
        self.fmt, self.vocab_size, self.record_format = fmt, vocab_size, record_format
        self.codec, self.base_dir = codec, base_dir
        self.max_prompt_tokens = max_prompt_tokens
        self.unit_cache: dict[tuple, tuple[int, ...]] = {}
        self.encodes = 0

    def __call__(self, record: dict, index: int, base_dir: Path | None = None) -> TrainExample:
        kind = self.record_format
        if kind == "auto":
            kind = "public" if ("messages" in record or "sft_target_text" in record) else "wavalign"
        if kind == "public":
            example = self._public(record, index, base_dir if base_dir is not None else self.base_dir)
        else:
            example = self._wavalign(record, index)
        self._check_ids(example)
        return example

    # --------------------------------------------------------------- formats
    def _wavalign(self, record: dict, index: int) -> TrainExample:
        if "prompt_ids" in record:
            prompt = _int_list(record["prompt_ids"], "prompt_ids")
        elif "prompt_text" in record or "prompt_units" in record:
            units = record.get("prompt_units")
            prompt = self.fmt.prompt_ids(text=_str(record.get("prompt_text"), "prompt_text", optional=True),
                                         units=None if units is None else _int_list(units, "prompt_units"))
        else:
            raise ValueError("needs prompt_ids, prompt_text or prompt_units")
        response = self._response(record, "response")
        rejected = self._response(record, "rejected")
        columns = {k: v for k, v in record.items() if k not in WAVALIGN_KEYS}
        return TrainExample(str(record.get("id", index)), prompt, response, rejected, columns,
                            record.get("prompt_text"))

    def _response(self, record: dict, prefix: str) -> list[int] | None:
        if f"{prefix}_ids" in record:
            return _int_list(record[f"{prefix}_ids"], f"{prefix}_ids")
        has_text, has_units = f"{prefix}_text" in record, f"{prefix}_units" in record
        if not (has_text or has_units):
            return None
        if not (has_text and has_units):
            raise ValueError(f"{prefix}_text and {prefix}_units go together (or give {prefix}_ids)")
        return self.fmt.response_ids(_str(record[f"{prefix}_text"], f"{prefix}_text"),
                                     _int_list(record[f"{prefix}_units"], f"{prefix}_units"))

    def _public(self, record: dict, index: int, base_dir: Path | None) -> TrainExample:
        messages = record.get("messages")
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) and "content" in m
                                                                 for m in messages)):
            raise ValueError("messages must be a non-empty list of {role, content} objects")
        for number, message in enumerate(messages):
            if not isinstance(message["content"], str):
                raise ValueError(f"messages[{number}].content must be a string, got "
                                 f"{type(message['content']).__name__}")
        audios = record.get("audios") or []
        if not isinstance(audios, list):
            raise ValueError("audios must be a list of file paths")
        counts = count_placeholders(messages)
        if sum(counts) != len(audios):
            raise ValueError(f"the messages hold {sum(counts)} audio placeholder(s) (<|audio|> / <audio>) but "
                             f"audios lists {len(audios)} file(s); each placeholder, in order, is one file")
        kept = len(messages)
        while kept and messages[kept - 1].get("role") == "assistant":  # the model answers the last user turn
            kept -= 1
        if not kept:
            raise ValueError("messages hold no turn before the assistant's (the prompt would be empty)")
        messages, used = messages[:kept], sum(counts[:kept])
        files = [self._audio_file(path, f"audios[{i}]", base_dir) for i, path in enumerate(audios[:used])]
        if files:
            audio_units = [self._units_of(file, f"audios[{i}]") for i, file in enumerate(files)]
            prompt = self.fmt.prompt_ids(messages=messages, audio_units=audio_units)
        else:
            prompt = self.fmt.prompt_ids(messages=messages)
        response = rejected = None
        if "sft_target_text" in record:
            if "sft_target_audio" not in record:
                raise ValueError("sft_target_text needs sft_target_audio")
            units = self._units_of(self._audio_file(record["sft_target_audio"], "sft_target_audio", base_dir),
                                   "sft_target_audio")
            response = self.fmt.response_ids(_str(record["sft_target_text"], "sft_target_text"), units)
        if "rejected_text" in record:
            if "rejected_audio" not in record:
                raise ValueError("rejected_text needs rejected_audio")
            units = self._units_of(self._audio_file(record["rejected_audio"], "rejected_audio", base_dir),
                                   "rejected_audio")
            rejected = self.fmt.response_ids(_str(record["rejected_text"], "rejected_text"), units)
        columns = {k: v for k, v in record.items() if k not in PUBLIC_KEYS}
        return TrainExample(str(record.get("id", index)), prompt, response, rejected, columns,
                            record.get("question_text") or user_text(messages) or None,
                            prompt_audio=[str(file) for file in files])

    def _audio_file(self, path, key: str, base_dir: Path | None) -> Path:
        """A record's audio path -> the resolved absolute file (relative paths against base_dir)."""
        if self.codec is None:
            raise ValueError(f"{key}: turning audio files into speech units needs a speech codec; this run has "
                             f"none (only the built-in world ships one) - give units in the wavalign format instead")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{key} must hold file paths, got {path!r}")
        file = Path(path).expanduser()
        if not file.is_absolute() and base_dir is not None:
            file = Path(base_dir) / file
        return file.resolve()

    def _units_of(self, file: Path, key: str) -> list[int]:
        """An audio file -> its speech units: read (wavalign.audio_io), resampled to the codec's
        rate, encoded; once per file and codec (unit_cache)."""
        try:
            stat = file.stat()
        except OSError:
            raise ValueError(f"{key}: audio file not found: {file}") from None
        if not callable(getattr(self.codec, "encode", None)) or getattr(self.codec, "can_encode", True) is False:
            raise ValueError(f"{key}: turning audio files into speech units needs a codec that encodes; this "
                             f"run's speech.codec ({type(self.codec).__name__}) only decodes")
        rate = int(self.codec.sample_rate)
        cache_key = (str(file), stat.st_size, stat.st_mtime_ns, type(self.codec).__qualname__, id(self.codec), rate)
        cached = self.unit_cache.get(cache_key)
        if cached is not None:
            return list(cached)
        try:
            waveform, file_rate = read_audio(file)
            if file_rate != rate:
                waveform = resample(waveform, file_rate, rate)
            units = [int(u) for u in self.codec.encode(waveform, rate)]
        except ValueError as error:
            message = str(error)
            raise ValueError(f"{key}: {message}" if str(file) in message else f"{key}: {file}: {message}") from None
        if not units:
            raise ValueError(f"{key}: {file}: the codec gave no speech units (the audio is too short?)")
        self.encodes += 1
        self.unit_cache[cache_key] = tuple(units)
        return units

    def _check_ids(self, example: TrainExample) -> None:
        for name in ("prompt_ids", "response_ids", "rejected_ids"):
            ids = getattr(example, name)
            if ids is None:
                continue
            if not ids:
                raise ValueError(f"{name} is empty")
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ValueError(f"{name} holds ids outside [0, {self.vocab_size})")
        if len(example.prompt_ids) > self.max_prompt_tokens:
            raise ValueError(f"prompt has {len(example.prompt_ids)} tokens, over data.max_prompt_tokens="
                             f"{self.max_prompt_tokens}")


def _int_list(value, name: str) -> list[int]:
    if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{name} must be a list of integers")
    return value


def _str(value, name: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _convert_records(records: Iterable[tuple[str, int, dict | ValueError]], convert: RecordConverter, *,
                     skip_bad_lines: bool, label: str) -> tuple[list[TrainExample], int]:
    """records: (where, index, record, or a ValueError already naming where) -> (examples, skipped).
    A bad record raises ValueError("<where>: <problem>"), or with skip_bad_lines is skipped and counted."""
    examples, skipped = [], 0
    for where, index, record in records:
        try:
            if isinstance(record, ValueError):  # e.g. a line that is not JSON
                raise record
            try:
                example = convert(record, index)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
            example.where = where
            examples.append(example)
        except ValueError as error:
            if not skip_bad_lines:
                raise
            skipped += 1
            log.warning("skipping %s", error)
    if skipped:
        log.warning("%s: skipped %d bad record(s)", label, skipped)
    if not examples:
        raise ValueError(f"{label}: no usable records")
    return examples, skipped


def load_jsonl_examples(path: str | Path, convert: RecordConverter, *, skip_bad_lines: bool = False
                        ) -> tuple[list[TrainExample], int]:
    """-> (examples, number of skipped bad lines). Errors name file:line. Relative audio paths
    of public records resolve against convert.base_dir, else this file's directory."""
    path = Path(path)
    base_dir = convert.base_dir if convert.base_dir is not None else path.parent
    return _convert_records(((f"{path}:{number}", number, record) for number, record in iter_jsonl(path)),
                            functools.partial(convert, base_dir=base_dir), skip_bad_lines=skip_bad_lines,
                            label=str(path))


# A single data file's loader (datasets' packaged builders), by suffix.
HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed; the message names the extra to install.
    (A ValueError too, so the CLI reports it like any other bad-data error.)"""


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise MissingExtraError("data.source 'hf_dataset' needs the `datasets` package, which is not installed: "
                                "pip install 'wavalign[datasets]'") from None
    return datasets


def load_hf_split(path: str | Path, split: str):
    """One split of a local Hugging Face dataset, as a `datasets.Dataset`.

    path: a `save_to_disk` directory (`datasets.load_from_disk`; a single saved Dataset holds
    one split, its recorded split name or "train"), a directory `datasets.load_dataset` reads
    (data files, splits named by the file names), or one data file (HF_FILE_BUILDERS; its one
    split is "train"). Never touches the network."""
    datasets = _import_datasets()
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data.path: {path} does not exist")
    if root.is_dir() and ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path}: no split {split!r}; it has {sorted(loaded)}")
            return loaded[split]
        name = loaded.split or "train"
        if split != name:
            raise ValueError(f"{path}: a single saved Dataset holds one split, {name!r}; asked for {split!r} "
                             f"(save a DatasetDict for several splits)")
        return loaded
    if root.is_file():
        builder = HF_FILE_BUILDERS.get(root.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: cannot tell how to read a {root.suffix or 'suffix-less'} file; give a "
                             f"{', '.join(HF_FILE_BUILDERS)} file or a directory")
        args, kwargs = (builder,), {"data_files": str(root)}
    else:
        args, kwargs = (str(root),), {}
    try:
        return datasets.load_dataset(*args, split=split, **kwargs)
    except (ValueError, FileNotFoundError, ConnectionError) as error:  # unknown split, no data files, ...
        raise ValueError(f"{path}: datasets.load_dataset failed for split {split!r}: {error}") from None


def load_hf_examples(path: str | Path, split: str, convert: RecordConverter, *, skip_bad_lines: bool = False
                     ) -> tuple[list[TrainExample], int]:
    """-> (examples, number of skipped bad records) from one split of a local HF dataset.
    Errors (and TrainExample.where) name "dataset[split][index]", the index counting rows from 0.
    Null fields (Arrow fills a column a row lacks with null) count as absent."""
    dataset = load_hf_split(path, split)
    label = f"{path}[{split}]"
    rows = ((f"{label}[{index}]", index, {k: v for k, v in row.items() if v is not None})
            for index, row in enumerate(dataset))
    return _convert_records(rows, convert, skip_bad_lines=skip_bad_lines, label=label)


class PromptSampler:
    """Seeded epoch-wise shuffling with a resumable cursor: each epoch is a fresh permutation
    (generator seeded by seed and epoch), consumed in order."""

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError("no training examples")
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def next(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(count - len(out), self.size - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def rank_batches(self, per_step: int, accumulation: int, rank: int, world_size: int
                     ) -> list[tuple[list[int], int]]:
        """The next optimizer step's prompts for one rank: `accumulation` global batches of
        `per_step` prompts, each sharded evenly over the ranks; -> (this rank's example
        indices, the global index of its first prompt in the step) per batch, so accumulated
        batches draw their own sample streams and judge keys."""
        out = []
        for index in range(accumulation):
            indices = self.next(per_step)
            share = len(indices) // world_size
            out.append((indices[rank * share:(rank + 1) * share], index * per_step + rank * share))
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(f"data cursor was saved for {state['size']} examples with seed {state['seed']}, "
                             f"this run has {self.size} with seed {self.seed}; resume with the same data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def load_examples(config, world, fmt: ResponseFormat, vocab_size: int, codec=None
                  ) -> tuple[list[TrainExample], list[TrainExample], int]:
    """A run's (train examples, eval examples, skipped bad records) from the world, JSONL
    (data.train_path / eval_path) or a local HF dataset (data.path, data.split / eval_split).

    codec: the SpeechCodec that turns audio files of public records into units (the world's,
    when a world is loaded), or None. Relative audio paths resolve against the JSONL file's
    directory, or the dataset's directory (a data file's directory). One RecordConverter (and
    so one unit cache) serves both splits."""
    c = config.data
    if c.source == "world":
        return world.train_examples("train"), world.train_examples(config.eval.split), 0
    if c.source == "hf_dataset":
        root = Path(c.path)
        base_dir = root if root.is_dir() else root.parent
        sources = [c.split, c.eval_split]

        def load(split):
            return load_hf_examples(c.path, split, convert, skip_bad_lines=c.skip_bad_lines)
    else:
        base_dir = None  # each JSONL file's own directory
        sources = [c.train_path, c.eval_path]

        def load(file):
            return load_jsonl_examples(file, convert, skip_bad_lines=c.skip_bad_lines)
    convert = RecordConverter(fmt, vocab_size, record_format=c.format, codec=codec,
                              base_dir=base_dir, max_prompt_tokens=c.max_prompt_tokens)
    train, skipped = load(sources[0])
    evaluation: list[TrainExample] = []
    if sources[1]:
        evaluation, more = load(sources[1])
        skipped += more
    return train, evaluation, skipped


def check_columns(examples: Sequence[TrainExample], reward) -> None:
    """Every example must carry (non-null) each column the reward's components declare
    (`required_columns`). Raises ValueError naming the component, the column and file:line."""
    needs = reward.column_needs() if hasattr(reward, "column_needs") else {}
    for example in examples:
        for name, columns in needs.items():
            for column in columns:
                if example.columns.get(column) is None:
                    where = example.where or f"record {example.id!r}"
                    raise ValueError(f"{where}: reward {name!r} needs the column {column!r}, which this record "
                                     f"does not have (its columns: {sorted(example.columns) or 'none'})")
