"""The one sampling-parameter schema (ModalitySampling) and everything derived from it."""

import inspect
import math

import pytest
import torch

from wavalign import _ops, ops
from wavalign.rollout import ModalitySampling as FromRollout
from wavalign.rollout.engine import ModalitySampling as FromEngine
from wavalign.sampling_params import SAMPLING_FIELD_NAMES, SAMPLING_FIELDS, ModalitySampling

NAMES = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


def test_schema_and_derived_tables():
    assert SAMPLING_FIELD_NAMES == NAMES
    assert FromRollout is FromEngine is ModalitySampling
    assert ops.SAMPLING_PARAMS == {
        "temperature": (torch.float32, 1.0), "top_k": (torch.int64, 0), "top_p": (torch.float32, 1.0),
        "min_p": (torch.float32, 0.0), "repetition_penalty": (torch.float32, 1.0),
        "presence_penalty": (torch.float32, 0.0), "frequency_penalty": (torch.float32, 0.0),
    }
    assert all(f.default == f.metadata["off"] for f in SAMPLING_FIELDS)


def test_sample_tokens_signature_follows_the_schema():
    """ops.sample_tokens spells the parameters out for readers; they must equal the schema."""
    parameters = inspect.signature(ops.sample_tokens).parameters
    assert {name: parameters[name].default for name in NAMES} == {f.name: f.metadata["off"] for f in SAMPLING_FIELDS}
    # The native binding takes them positionally, in schema order, right after the logits.
    native = _ops._core.sample_tokens.__doc__
    positions = [native.index(f"{name}:") for name in ("logits",) + NAMES + ("history",)]
    assert positions == sorted(positions)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.1, "ModalitySampling.temperature must be >= 0"),
    ("top_k", -1, "ModalitySampling.top_k must be >= 0"),
    ("top_k", 2.0, "ModalitySampling.top_k must be an int >= 0"),
    ("top_k", True, "ModalitySampling.top_k must be an int >= 0"),
    ("top_p", 0.0, r"ModalitySampling.top_p must be in \(0, 1\]"),
    ("top_p", 1.5, r"ModalitySampling.top_p must be in \(0, 1\]"),
    ("min_p", 1.5, r"ModalitySampling.min_p must be in \[0, 1\]"),
    ("repetition_penalty", 0.0, "ModalitySampling.repetition_penalty must be > 0"),
    ("presence_penalty", math.inf, "ModalitySampling.presence_penalty must be finite"),
    ("frequency_penalty", math.nan, "ModalitySampling.frequency_penalty must be finite"),
    ("temperature", "0.7", "ModalitySampling.temperature must be a number"),
])
def test_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModalitySampling(**{field: value})


def test_valid_values_are_kept_as_given():
    s = ModalitySampling(temperature=0, top_k=8, top_p=0.9, min_p=1.0, presence_penalty=-0.5)
    assert s.to_dict() == dict(temperature=0, top_k=8, top_p=0.9, min_p=1.0, repetition_penalty=1.0,
                               presence_penalty=-0.5, frequency_penalty=0.0)


def test_from_dict():
    assert ModalitySampling.from_dict({}) == ModalitySampling()
    text = ModalitySampling.from_dict({"temperature": 0.7, "top_p": 0.95}, where="rollout.text")
    assert text == ModalitySampling(temperature=0.7, top_p=0.95)
    speech = ModalitySampling.from_dict({"top_k": 8}, where="rollout.speech", base=text)
    assert speech == ModalitySampling(temperature=0.7, top_p=0.95, top_k=8)
    with pytest.raises(ValueError, match=r"unknown sampling field\(s\) rollout.text.tempreature; allowed: temperature, "):
        ModalitySampling.from_dict({"tempreature": 0.7}, where="rollout.text")
    with pytest.raises(ValueError, match=r"rollout.speech.top_p must be in \(0, 1\], got 2"):
        ModalitySampling.from_dict({"top_p": 2}, where="rollout.speech")
    with pytest.raises(ValueError, match="rollout.text must be a mapping of sampling fields, got list"):
        ModalitySampling.from_dict([0.7], where="rollout.text")
