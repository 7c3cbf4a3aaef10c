"""JSONL reading with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


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
