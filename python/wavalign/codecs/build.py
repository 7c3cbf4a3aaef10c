"""build_codec: the SpeechCodec a run's `speech.codec` config names.

    kind     options                                               module
    world    none (the built-in world's tokenizer + vocoder)       wavalign.world.codec
    python   factory: "pkg.mod:make", init: {...}                  wavalign.codecs.python_codec
    http     decode_url, sample_rate, encode_url, timeout_s, ...   wavalign.codecs.http_codec
    onnx     decoder, sample_rate, encoder, providers              wavalign.codecs.onnx_codec
    none     (no codec: rewards that listen are refused)

Unknown kinds and unknown options raise ValueError naming them, before any model loads.
"""

from __future__ import annotations

import dataclasses

from wavalign.codecs.base import SpeechCodec

KINDS = ("world", "python", "http", "onnx", "none")
PYTHON_OPTIONS = ("factory", "init")
ONNX_OPTIONS = ("decoder", "encoder", "sample_rate", "providers")


def _check_options(kind: str, options: dict, allowed, required, where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} for a {kind} codec; it takes {sorted(allowed)}")
    missing = [name for name in required if options.get(name) is None]
    if missing:
        raise ValueError(f"{where}: a {kind} codec needs option(s) {missing}")


def build_codec(kind: str | None, options: dict | None = None, *, world=None,
                where: str = "speech.codec") -> SpeechCodec | None:
    """The codec of `kind` built from `options`; None for kind None / "none".
    `where` names the config key in error messages."""
    options = dict(options or {})
    if kind is None or kind == "none":
        if options:
            raise ValueError(f"{where}: codec options {sorted(options)} given, but no codec kind")
        return None
    if kind == "world":
        _check_options(kind, options, (), (), where)
        if world is None:
            raise ValueError(f"{where}: the world codec needs the built-in world (data.world); "
                             "for your own model use a python, http or onnx codec")
        return world.codec
    if kind == "python":
        from wavalign.codecs.python_codec import PythonCodec, load_factory

        _check_options(kind, options, PYTHON_OPTIONS, ("factory",), where)
        factory = load_factory(options["factory"], where)
        init = options.get("init", {})
        if not isinstance(init, dict):
            raise ValueError(f"{where}: options.init must be a mapping of keyword arguments for {options['factory']!r}")
        return PythonCodec(factory(**init), options["factory"])
    if kind == "http":
        from wavalign.codecs.http_codec import HttpCodec, HttpCodecConfig

        fields = [f.name for f in dataclasses.fields(HttpCodecConfig)]
        _check_options(kind, options, fields, ("decode_url", "sample_rate"), where)
        return HttpCodec(HttpCodecConfig(**options))
    if kind == "onnx":
        from wavalign.codecs.onnx_codec import OnnxCodec

        _check_options(kind, options, ONNX_OPTIONS, ("decoder", "sample_rate"), where)
        return OnnxCodec(**options)
    raise ValueError(f"{where}: unknown codec kind {kind!r}; use one of {', '.join(KINDS)}")
