"""The one YAML reader for wavalign's config files (train, ablation, world, modality spec).

``safe_load`` is ``yaml.safe_load`` except that ``1e-4`` is a float (YAML 1.1 wants ``1.0e-4`` and
reads ``1e-4`` as a string); ``load_mapping`` reads a file that must hold a mapping.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

__all__ = ["safe_load", "load_mapping"]


class _Loader(yaml.SafeLoader):
    """safe_load, except that 1e-4 is a float (YAML 1.1 wants 1.0e-4 and reads '1e-4' as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def safe_load(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def load_mapping(path: str | Path, what: str, *, allow_empty: bool = False, kind: str = "file",
                 error: type[Exception] = ValueError) -> dict:
    """The mapping in the YAML file `path` (read with `safe_load`).

    FileNotFoundError "<kind> not found: <path>" when there is no such file; `error`
    "<path>: expected a mapping of <what>, got <type>" when it holds something else. An empty
    file (YAML null) is {} when `allow_empty`, else that error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}")
    data = safe_load(path.read_text())
    if data is None and allow_empty:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of {what}, got {type(data).__name__}")
    return data
