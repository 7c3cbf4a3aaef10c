"""The per-modality sampling parameters, defined once.

ModalitySampling's fields ARE the schema: their order is the native sampler's argument
order (bindings/module.cpp, sample_tokens), and each field's metadata holds the dtype of
its per-row tensor, its off value (the value that switches the step off; also the default)
and a one-line help. wavalign.ops.SAMPLING_PARAMS, the sampler's keyword arguments, the
rollout engine's per-row parameters and the rollout CLI flags are all derived from it.

No torch import: train/config.py and the CLI may load it cheaply.
"""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass, field, fields
from typing import Any, Mapping


def _param(off, dtype: str, help: str, *, penalty: bool = False):
    # dtype: name of the torch dtype of the per-row tensor ("float32" / "int64").
    return field(default=off, metadata={"dtype": dtype, "off": off, "help": help, "penalty": penalty})


@dataclass(frozen=True)
class ModalitySampling:
    """Sampling settings for one modality (real models sample speech differently).

    Every value is checked here, so a bad config fails when it is read, naming the field,
    not at the first decode step.
    """

    temperature: float = _param(1.0, "float32", "temperature (0 = greedy)")
    top_k: int = _param(0, "int64", "keep the k most likely ids (0 = off)")
    top_p: float = _param(1.0, "float32", "nucleus: keep the smallest set of mass >= p (1 = off)")
    min_p: float = _param(0.0, "float32", "keep ids with prob >= min_p * the top prob (0 = off)")
    repetition_penalty: float = _param(1.0, "float32", "divide seen ids' positive logits by it, "
                                       "multiply negative ones (1 = off)", penalty=True)
    presence_penalty: float = _param(0.0, "float32", "subtract it from every seen id's logit (0 = off)",
                                     penalty=True)
    frequency_penalty: float = _param(0.0, "float32", "subtract it times each seen id's count (0 = off)",
                                      penalty=True)

    def __post_init__(self):
        for name in SAMPLING_FIELD_NAMES:
            problem = field_problem(name, getattr(self, name))
            if problem:
                raise ValueError(f"ModalitySampling.{name} {problem}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "ModalitySampling",
                  base: "ModalitySampling | None" = None) -> "ModalitySampling":
        """Build from a mapping of field -> value (e.g. a config section).

        Missing fields take base's values (default: the off values). Errors name the field
        as `<where>.<field>`, e.g. where="rollout.text" -> "rollout.text.top_p ...".
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping of sampling fields, got {type(data).__name__}")
        unknown = [key for key in data if key not in SAMPLING_FIELD_NAMES]
        if unknown:
            names = ", ".join(f"{where}.{key}" for key in unknown)
            raise ValueError(f"unknown sampling field(s) {names}; allowed: {', '.join(SAMPLING_FIELD_NAMES)}")
        for name, value in data.items():
            problem = field_problem(name, value)
            if problem:
                raise ValueError(f"{where}.{name} {problem}")
        values = {name: getattr(base if base is not None else cls, name) for name in SAMPLING_FIELD_NAMES}
        return cls(**{**values, **data})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SAMPLING_FIELD_NAMES}


INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38


def float32_problem(value) -> str | None:
    """What storing the real number `value` as float32 would lose, or None. NaN and +-inf
    stay what they are (None); a finite value must neither overflow to inf nor round to 0."""
    try:
        x = float(value)
        if not math.isfinite(x):
            return None
        stored = struct.unpack("<f", struct.pack("<f", x))[0]  # OverflowError past the range
    except OverflowError:
        return f"must fit float32 (magnitude at most {FLOAT32_MAX:.7g})"
    if stored == 0.0 and x != 0.0:
        return "must not be so small that float32 rounds it to 0"
    return None


def field_problem(name: str, value) -> str | None:
    """What is wrong with `value` for field `name` (e.g. "must be in (0, 1], got 2"), or None.
    The rules are the native sampler's parameter check, applied early, plus the storage the
    sampler uses (int64 top_k, float32 otherwise), so no value changes on its way there."""
    if name == "top_k":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"must be an int >= 0, got {value!r}"
        if value > INT64_MAX:
            return f"must be <= {INT64_MAX} (int64), got {value!r}"
        return None if value >= 0 else f"must be >= 0, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be a number, got {value!r}"
    storage = float32_problem(value)
    if storage:
        return f"{storage}, got {value!r}"
    if not math.isfinite(value):
        return f"must be finite, got {value!r}"
    rules = {
        "temperature": (value >= 0, "must be >= 0 (0 = greedy)"),
        "top_p": (0 < value <= 1, "must be in (0, 1]"),
        "min_p": (0 <= value <= 1, "must be in [0, 1]"),
        "repetition_penalty": (value > 0, "must be > 0"),
    }
    ok, requirement = rules.get(name, (True, ""))
    return None if ok else f"{requirement}, got {value!r}"


SAMPLING_FIELDS = fields(ModalitySampling)  # schema order = native argument order
SAMPLING_FIELD_NAMES = tuple(f.name for f in SAMPLING_FIELDS)
PENALTY_FIELD_NAMES = tuple(f.name for f in SAMPLING_FIELDS if f.metadata["penalty"])

__all__ = ["ModalitySampling", "PENALTY_FIELD_NAMES", "SAMPLING_FIELDS", "SAMPLING_FIELD_NAMES", "field_problem",
           "float32_problem"]
