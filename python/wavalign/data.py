"""Examples as every room sees them (TrainExample, reward columns) and JSONL reading with errors
that name the file and line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | ValueError]]:
    """Yields (line_number, record) for each non-blank line, or (line_number, ValueError naming
    file:line) for a line that is not a JSON object, and goes on reading."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, ValueError(f"{path}:{number}: not valid JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                yield number, ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                continue
            yield number, record


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yields (line_number, record) for each non-blank line; raises ValueError at file:line."""
    for number, record in iter_jsonl(path):
        if isinstance(record, ValueError):
            raise record
        yield number, record


WAVALIGN_KEYS = {"prompt_text", "prompt_units", "prompt_ids", "response_text", "response_units",
                 "response_ids", "rejected_text", "rejected_units", "rejected_ids"}


@dataclass
class TrainExample:
    id: str
    prompt_ids: list[int]
    response_ids: list[int] | None = None  # gold, laid out by the ModalitySpec schedule
    rejected_ids: list[int] | None = None  # offline DPO
    columns: dict = field(default_factory=dict)  # handed to reward functions (answer, style, ...)
    prompt_text: str | None = None  # what a judge is shown as the user's request
    where: str | None = None  # "file.jsonl:12" for records read from a file (error messages)
    # the prompt's audio files (resolved absolute paths, in placeholder order), for model
    # adapters that compute their own audio features; empty for text-only prompts
    prompt_audio: list[str] = field(default_factory=list)


def judge_prompt_text(example: TrainExample, tokenizer) -> str:
    """What a judge is shown as the user's request: the example's text, else its decoded prompt."""
    if example.prompt_text is not None:
        return example.prompt_text
    return tokenizer.decode(example.prompt_ids, skip_special_tokens=True)


def batch_columns(examples: Sequence[TrainExample], repeat: int = 1) -> dict[str, list]:
    """Reward columns for a batch, each value repeated `repeat` times (one per sample)."""
    names = sorted({name for e in examples for name in e.columns})
    return {name: [e.columns.get(name) for e in examples for _ in range(repeat)] for name in names}
