"""Objects named in configs as "package.module:name": reward functions, speech codecs and
model adapters a user writes in their own module."""

from __future__ import annotations

import importlib


def import_object(target, where: str, field: str = "factory"):
    """ "package.module:name" -> the named object (the module imported on the way).

    where: the config location for error messages (e.g. "speech.codec"); field: the option
    that holds `target`. Raises ValueError naming both when `target` is malformed, its module
    cannot be imported, or the module lacks the name."""
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ValueError(f"{where}: {field} must look like 'package.module:name', got {target!r}")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: cannot import module {module_name!r} for {field} {target!r} ({error})") from None
    if not hasattr(module, attr):
        raise ValueError(f"{where}: module {module_name!r} has no attribute {attr!r} ({field} {target!r})")
    return getattr(module, attr)
