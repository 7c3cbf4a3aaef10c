"""wavalign.codecs: the SpeechCodec protocol, the built-in world's codec, and build_codec's
python, http (against a loopback server that misbehaves) and onnx codecs; make_completions
when decoding fails."""

import logging
import time

import numpy as np
import pytest
import torch

from wavalign.codecs import SpeechCodec, build_codec
from wavalign.codecs.fake_codec_server import SLOW_S, CodecServer, tones
from wavalign.codecs.http_codec import CodecError
from wavalign.rewards.completions import make_completions
from wavalign.world import audio
from wavalign.world.codec import WorldCodec


class _NotACodec:
    sample_rate = 16_000

    def encode(self, waveform, sample_rate):
        return []


def test_protocol_is_structural():
    assert not isinstance(_NotACodec(), SpeechCodec)  # no decode


def test_world_codec_is_the_scorers_vocoder_and_the_trainers_tokenizer(fast_world):
    codec = fast_world.codec
    assert isinstance(codec, SpeechCodec) and isinstance(codec, WorldCodec)
    assert codec.sample_rate == audio.SAMPLE_RATE and codec.units is fast_world.scorer.units

    units = [int(u) for u in fast_world.examples("test")[0]["response_units"]]  # a gold spoken response
    wave = codec.decode(units)
    assert torch.equal(wave, fast_world.scorer.wave(units))  # what the judges listen to
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert torch.equal(codec.decode(tuple(units)), wave)

    again = codec.encode(wave, codec.sample_rate)  # what the trainer tokenizes a JSONL record's audio to
    assert isinstance(again, list) and all(isinstance(u, int) for u in again)
    assert again == fast_world.scorer.units.encode(wave).tolist()
    assert len(again) == wave.shape[0] // audio.HOP + 1  # one unit per frame: the round trip keeps the length
    assert all(0 <= u < codec.units.n_units for u in again)

    with pytest.raises(ValueError, match="audio at 16000 Hz; the world's tokenizer needs 22050 Hz"):
        codec.encode(wave, 16_000)


# ---------------------------------------------------------------------------- build_codec and its kinds
UNITS = [[0, 5, 17, 100, 999], [3, 3, 42], [250]]
TONE = "wavalign.codecs.fake_codec_server:ToneCodec"
SECRET = "sk-codec-THIS-MUST-NOT-LEAK-42"
DECODE_ONLY = '''
import torch

class DecodeOnly:
    sample_rate = 8000
    def decode(self, units):
        return [0.25] * (10 * len(units))    # a list, not a tensor: the wrapper converts it

def make(): return DecodeOnly()
def no_rate():
    class C:
        def decode(self, units): return torch.zeros(1)
    return C()
def batched():
    class C:
        sample_rate = 16000
        def decode(self, units): return torch.zeros(len(units))
    return C()
def two_d():
    class C:
        sample_rate = 16000
        def decode(self, units): return torch.zeros(2, len(units))
    return C()
'''


def peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(np.asarray(wave, dtype=np.float64) * np.hanning(len(wave)), n=rate))
    return int(np.argmax(spectrum))


@pytest.fixture
def codec_module(tmp_path, monkeypatch):
    (tmp_path / "my_codecs.py").write_text(DECODE_ONLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_codecs"


def test_python_codec_decodes_units_to_tones_and_back():
    codec = build_codec("python", {"factory": TONE, "init": {"sample_rate": 8000}})
    assert isinstance(codec, SpeechCodec) and codec.sample_rate == 8000 and codec.can_encode
    wave = codec.decode(UNITS[0])
    assert wave.dtype == torch.float32 and wave.shape == (len(UNITS[0]) * 160,)  # 20 ms frames at 8 kHz
    assert [peak_hz(wave[i * 160:(i + 1) * 160], 8000) for i in range(5)] == [200 + u for u in UNITS[0]]
    assert codec.encode(wave, 8000) == UNITS[0]
    assert codec.encode(tones(UNITS[0], 16000), 16000) == UNITS[0]  # other rates are resampled first
    assert not hasattr(codec, "decode_many")  # the stub has none, so make_completions decodes one by one


def test_python_codec_without_encode_fails_only_when_encoding(codec_module):
    codec = build_codec("python", {"factory": "my_codecs:make"})
    assert codec.can_encode is False
    wave = codec.decode([1, 2, 3])
    assert torch.equal(wave, torch.full((30,), 0.25)) and wave.dtype == torch.float32
    with pytest.raises(ValueError, match="'my_codecs:make' has no encode"):
        codec.encode(wave, 8000)
    with pytest.raises(ValueError, match="decode must return a 1-D float waveform"):
        build_codec("python", {"factory": "my_codecs:two_d"}).decode([1, 2])


@pytest.mark.parametrize("kind, options, message", [
    ("vocoder", {}, "unknown codec kind 'vocoder'; use one of world, python, http, onnx, none"),
    ("world", {}, "the world codec needs the built-in world"),
    ("world", {"sample_rate": 1}, r"unknown option\(s\) \['sample_rate'\] for a world codec"),
    ("none", {"decode_url": "http://x"}, "codec options"),
    ("python", {}, r"needs option\(s\) \['factory'\]"),
    ("python", {"factory": "my_codecs.make"}, "must look like 'package.module:name'"),
    ("python", {"factory": "no_such_codec_module:make"}, "cannot import module 'no_such_codec_module' for factory"),
    ("python", {"factory": "my_codecs:missing"}, r"has no attribute 'missing' \(factory 'my_codecs:missing'\)"),
    ("python", {"factory": "my_codecs:no_rate"}, "factory 'my_codecs:no_rate': sample_rate must be a positive"),
    ("python", {"factory": "my_codecs:make", "init": [1]}, "options.init must be a mapping"),
    ("http", {"decode_url": "http://127.0.0.1:1/d"}, r"needs option\(s\) \['sample_rate'\]"),
    ("http", {"decode_url": "http://127.0.0.1:1/d", "sample_rate": 16000, "api_key": "x"},
     r"unknown option\(s\) \['api_key'\] for a http codec"),
    ("http", {"decode_url": "127.0.0.1:1/d", "sample_rate": 16000}, "decode_url must be a URL"),
    ("http", {"decode_url": "http://127.0.0.1:1/d", "sample_rate": 16000, "deadline_s": 0}, "deadline_s"),
    ("onnx", {"decoder": "/nonexistent/vocoder.onnx", "sample_rate": 16000}, "decoder model not found"),
    ("onnx", {"sample_rate": 16000}, r"needs option\(s\) \['decoder'\]"),
])
def test_build_codec_errors_name_the_problem(codec_module, kind, options, message):
    with pytest.raises(ValueError, match=message):
        build_codec(kind, options)


def test_build_codec_world_and_none(fast_world):
    assert build_codec(None, {}) is None and build_codec("none", None) is None
    codec = build_codec("world", {}, world=fast_world)
    assert isinstance(codec, WorldCodec) and codec.units is fast_world.scorer.units


def http_codec(server, mode, **overrides):
    options = dict(decode_url=server.url(mode, "decode"), encode_url=server.url(mode, "encode"),
                   sample_rate=server.sample_rate, timeout_s=0.5, max_retries=2, backoff_base_s=0.05,
                   backoff_max_s=0.2, deadline_s=3.0, concurrency=4, api_key_env="WAVALIGN_TEST_CODEC_KEY")
    options.update(overrides)
    return build_codec("http", options)


def test_http_codec_decodes_and_encodes_through_the_server(monkeypatch, caplog):
    monkeypatch.setenv("WAVALIGN_TEST_CODEC_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with CodecServer() as server:
        codec = http_codec(server, "ok")
        waves = codec.decode_many(UNITS)
        units = codec.encode(waves[0], server.sample_rate)
        units_22k = codec.encode(tones(UNITS[1], 22050), 22050)  # resampled to the server's rate first
    for wave, u in zip(waves, UNITS):
        torch.testing.assert_close(wave, tones(u, 16000), atol=1 / 32767 + 1e-6, rtol=0)  # 16-bit WAV
    assert units == UNITS[0] and units_22k == UNITS[1] and codec.can_encode
    assert codec.stats == {"requests": 5, "decoded": 3, "encoded": 2, "failures": {}}
    assert server.content_types[-1] == "audio/wav"
    assert all(h == f"Bearer {SECRET}" for h in server.auth_headers) and SECRET not in caplog.text


@pytest.mark.parametrize("mode, requests_per_sample", [("flaky", 2), ("ratelimit", 2)])
def test_http_codec_retries_a_server_error_then_decodes(mode, requests_per_sample):
    with CodecServer() as server:
        codec = http_codec(server, mode)
        start = time.perf_counter()
        waves = codec.decode_many(UNITS)
        elapsed = time.perf_counter() - start
    assert all(torch.allclose(w, tones(u, 16000), atol=1e-4) for w, u in zip(waves, UNITS))
    assert server.counts[f"{mode}/decode"] == requests_per_sample * len(UNITS)
    assert codec.stats["failures"] == {} and elapsed < 2.0


@pytest.mark.parametrize("mode, reason, requests_per_sample", [
    ("fail", "http_500", 3),             # max_retries=2: three attempts, then None
    ("garbage", "not_wav", 1),           # a 200 with garbage is not retried, nor heard
    ("wrong_json", "not_wav", 1),        # JSON where a WAV was due
    ("wrong_rate", "wrong_sample_rate", 1),
])
def test_http_codec_failures_are_counted_nones(mode, reason, requests_per_sample, caplog):
    caplog.set_level(logging.WARNING)
    with CodecServer() as server:
        codec = http_codec(server, mode)
        start = time.perf_counter()
        waves = codec.decode_many(UNITS)
        elapsed = time.perf_counter() - start
    assert waves == [None] * len(UNITS)
    assert codec.stats["failures"] == {reason: len(UNITS)} and codec.stats["decoded"] == 0
    assert server.counts[f"{mode}/decode"] == requests_per_sample * len(UNITS)
    assert elapsed < 2.0
    assert f"speech codec decode failed ({reason})" in caplog.text


def test_http_codec_gives_up_at_the_total_deadline():
    # timeout_s alone would wait SLOW_S for each answer; the 0.4 s deadline ends every call first
    deadline = 0.4
    with CodecServer() as server:
        codec = http_codec(server, "slow", timeout_s=5.0, deadline_s=deadline)
        start = time.perf_counter()
        waves = codec.decode_many(UNITS)
        elapsed = time.perf_counter() - start
    assert waves == [None] * len(UNITS)
    assert codec.stats["failures"] == {"deadline": len(UNITS)}
    assert elapsed < deadline + 0.5 < SLOW_S


def test_http_codec_runs_requests_concurrently_up_to_the_limit():
    with CodecServer() as server:
        codec = http_codec(server, "slow", timeout_s=5.0, deadline_s=10.0, concurrency=3)
        waves = codec.decode_many([[u] for u in range(6)])
    assert all(w is not None for w in waves)
    assert 2 <= server.max_in_flight <= 3


def test_http_codec_encode_failures_raise_after_counting():
    with CodecServer() as server:
        bad_json = http_codec(server, "wrong_json")
        with pytest.raises(CodecError, match="encode failed") as error:
            bad_json.encode(tones([1, 2], 16000), 16000)
        assert error.value.reason == "malformed_response" and bad_json.stats["failures"] == {"malformed_response": 1}
        failing = http_codec(server, "fail")
        with pytest.raises(CodecError, match=r"encode failed \(http_500\)"):
            failing.encode(tones([1, 2], 16000), 16000)
        no_encoder = http_codec(server, "ok", encode_url=None)
        assert no_encoder.can_encode is False
        with pytest.raises(ValueError, match="no encode_url"):
            no_encoder.encode(tones([1], 16000), 16000)


# ---------------------------------------------------------------------------- make_completions
class _Format:
    """ids < 100: text characters; ids >= 100: speech unit id - 100."""

    def split(self, ids):
        return "".join(chr(97 + i % 26) for i in ids if i < 100), [i - 100 for i in ids if i >= 100]


class _Flaky:
    """decode raises for unit 13, returns None for unit 7, else tones."""

    sample_rate = 8000

    def decode(self, units):
        if 13 in units:
            raise RuntimeError("vocoder blew up")
        return None if 7 in units else tones(units, 8000)


def test_make_completions_survives_failed_decodes_and_counts_them(caplog):
    responses = [[1, 2, 100, 101], [3, 113, 114], [4, 107], [5, 6]]  # the last has no speech
    stats = {}
    caplog.set_level(logging.WARNING)
    completions = make_completions(_Format(), responses, _Flaky(), stats=stats)
    assert [c.speech_units for c in completions] == [[0, 1], [13, 14], [7], []]
    assert torch.equal(completions[0].audio, tones([0, 1], 8000)) and completions[0].sample_rate == 8000
    assert [c.audio is None for c in completions] == [False, True, True, True]
    assert stats == {"decode_requested": 3, "decode_failed": 2}
    assert "vocoder blew up" in caplog.text and "2 of 3 responses could not be decoded" in caplog.text
    make_completions(_Format(), responses, _Flaky(), stats=stats)  # accumulates over calls
    assert stats == {"decode_requested": 6, "decode_failed": 4}
    assert make_completions(_Format(), responses[:1], _Flaky())[0].audio is not None  # stats is optional


class _Batched:
    """Only decode_many works, so the test sees make_completions batch through it."""

    sample_rate = 8000

    def __init__(self):
        self.calls = []

    def decode(self, units):
        raise AssertionError("a batched codec is called once per batch, not per sample")

    def decode_many(self, batch):
        self.calls.append(batch)
        return [tones(u, 8000) for u in batch]


def test_make_completions_decodes_a_batch_through_decode_many():
    batched = _Batched()
    completions = make_completions(_Format(), [[1, 100], [2], [3, 104, 105]], batched)
    assert batched.calls == [[[0], [4, 5]]]  # one call, the speaking responses only
    assert [c.audio is not None for c in completions] == [True, False, True]
    responses = [[1, 100, 105], [2, 130], [3, 117, 142]]
    with CodecServer() as server:
        codec = http_codec(server, "ok")
        stats = {}
        completions = make_completions(_Format(), responses, codec, stats=stats)
        assert server.max_in_flight >= 1 and server.counts["ok/decode"] == 3
        failing = http_codec(server, "fail", max_retries=0)
        failed = make_completions(_Format(), responses, failing, stats=stats)
    assert all(torch.allclose(c.audio, tones(c.speech_units, 16000), atol=1e-4) for c in completions)
    assert all(c.audio is None and c.sample_rate is None for c in failed)
    assert stats == {"decode_requested": 6, "decode_failed": 3}


# ---------------------------------------------------------------------------- onnx
N_UNITS, HOP = 32, 16


class _TableVocoder(torch.nn.Module):
    """units [1, U] -> [1, U * HOP]: each unit's row of a fixed random table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(table)

    def forward(self, units):
        return self.table(units).flatten(1)


class _NearestRow(torch.nn.Module):
    """[1, S] -> [1, S // HOP] int64: the table row nearest each HOP-sample frame (argmax of
    2 x.e - |e|^2, as a strided convolution so any length exports)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("weight", table[:, None, :])  # [N, 1, HOP]
        self.register_buffer("bias", -(table * table).sum(1))

    def forward(self, wave):
        scores = 2 * torch.nn.functional.conv1d(wave[:, None, :], self.weight, stride=HOP)  # [1, N, U]
        return (scores + self.bias[None, :, None]).argmax(dim=1)


@pytest.fixture(scope="module")
def onnx_codec_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_codec")
    table = torch.randn(N_UNITS, HOP, generator=torch.Generator().manual_seed(0)) * 0.3
    vocoder, tokenizer = _TableVocoder(table).eval(), _NearestRow(table).eval()
    torch.onnx.export(vocoder, (torch.tensor([[1, 2, 3]]),), str(folder / "vocoder.onnx"), input_names=["units"],
                      output_names=["wave"], dynamic_shapes=({1: torch.export.Dim("units")},))
    torch.onnx.export(tokenizer, (torch.randn(1, 4 * HOP),), str(folder / "tokenizer.onnx"), input_names=["wave"],
                      output_names=["units"], dynamic_shapes=({1: torch.export.Dim("samples", min=HOP)},))
    return vocoder, folder / "vocoder.onnx", folder / "tokenizer.onnx"


def test_onnx_codec_round_trip_equals_torch(onnx_codec_files, caplog):
    vocoder, decoder, encoder = onnx_codec_files
    caplog.set_level(logging.INFO)
    codec = build_codec("onnx", {"decoder": str(decoder), "encoder": str(encoder), "sample_rate": 16000})
    assert isinstance(codec, SpeechCodec) and codec.can_encode
    assert codec.provider == "CPUExecutionProvider" and "runs on CPUExecutionProvider" in caplog.text
    units = [5, 0, 31, 7, 7, 12]
    wave = codec.decode(units)
    with torch.no_grad():
        expected = vocoder(torch.tensor([units]))[0]
    assert wave.dtype == torch.float32 and wave.shape == (len(units) * HOP,)
    torch.testing.assert_close(wave, expected)
    assert codec.encode(wave, 16000) == units
    assert codec.decode([N_UNITS + 5]) is None  # outside the table: a counted failure, not a crash
    assert codec.stats["failures"] == {"model_error": 1} and codec.stats["decoded"] == 1


def test_onnx_codec_checks_the_exports(onnx_codec_files):
    _, decoder, encoder = onnx_codec_files
    with pytest.raises(ValueError, match=r"the decoder model .*tokenizer.onnx must take a tensor\(int64\)"):
        build_codec("onnx", {"decoder": str(encoder), "sample_rate": 16000})
    with pytest.raises(ValueError, match=r"the encoder model .*vocoder.onnx must take a tensor\(float\)"):
        build_codec("onnx", {"decoder": str(decoder), "encoder": str(decoder), "sample_rate": 16000})
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        build_codec("onnx", {"decoder": str(decoder), "sample_rate": 0})
    decode_only = build_codec("onnx", {"decoder": str(decoder), "sample_rate": 16000})
    with pytest.raises(ValueError, match="no encoder model"):
        decode_only.encode(torch.zeros(HOP), 16000)
