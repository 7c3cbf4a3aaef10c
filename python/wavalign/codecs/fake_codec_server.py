"""A local token2wav / wav2token server on 127.0.0.1 that misbehaves on purpose, and the tone
codec it serves.

Used by the tests; handy to check an `http` codec setup offline. Its "vocoder" turns each unit
into a FRAME_S (20 ms) sine at 200 + unit Hz (:func:`tones`); its "tokenizer" reads each
frame's peak frequency back (:func:`tone_units`). :class:`ToneCodec` is the same pair as an
in-process codec (a `python` codec factory: ``wavalign.codecs.fake_codec_server:ToneCodec``).

The behaviour is chosen by the first path segment: POST /MODE/decode (JSON {"units": [...]}
-> WAV bytes) and POST /MODE/encode (WAV bytes -> JSON {"units": [...]}), with MODE one of

    ok          a correct answer
    slow        a correct answer after SLOW_S seconds
    flaky       HTTP 500 the first time each distinct request body is seen, then correct
    fail        always HTTP 500
    ratelimit   HTTP 429 with Retry-After: 0.1 the first time each body is seen, then correct
    garbage     HTTP 200 with bytes that are neither WAV nor JSON
    wrong_json  HTTP 200 with JSON of the wrong shape ({"audio": ...} / {"tokens": [...]})
    wrong_rate  decode: a correct WAV at half the server's sample rate

Requests are counted per mode and path. The server only listens on the loopback interface.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import numpy as np
import torch

from wavalign.audio_io import read_wav_bytes, resample, wav_bytes
from wavalign.loopback import LoopbackServer, QuietHandler

FRAME_S = 0.02  # one unit per 20 ms frame
BASE_HZ = 200.0  # unit u sounds at BASE_HZ + u Hz
AMPLITUDE = 0.5
SLOW_S = 1.0
MODES = ("ok", "slow", "flaky", "fail", "ratelimit", "garbage", "wrong_json", "wrong_rate")


def tones(units, sample_rate: int) -> torch.Tensor:
    """Units -> [len(units) * frame] float32: each unit a FRAME_S sine at BASE_HZ + unit Hz."""
    frame = round(sample_rate * FRAME_S)
    t = np.arange(frame) / sample_rate
    if any(BASE_HZ + int(u) >= sample_rate / 2 for u in units):
        raise ValueError(f"a unit's tone would be at or above {sample_rate} Hz audio's Nyquist frequency")
    wave = [AMPLITUDE * np.sin(2 * np.pi * (BASE_HZ + int(u)) * t) for u in units]
    return torch.from_numpy(np.concatenate(wave).astype(np.float32)) if wave else torch.zeros(0)


def tone_units(wave, sample_rate: int) -> list[int]:
    """The inverse of :func:`tones`: each full frame's peak frequency (Hann window, FFT
    zero-padded to 1 Hz bins) minus BASE_HZ. Exact for tones() output at the same rate."""
    samples = np.asarray(wave, dtype=np.float64)
    frame = round(sample_rate * FRAME_S)
    window = np.hanning(frame)
    units = []
    for start in range(0, len(samples) - frame + 1, frame):
        spectrum = np.abs(np.fft.rfft(samples[start:start + frame] * window, n=sample_rate))
        units.append(max(0, int(round(np.argmax(spectrum) - BASE_HZ))))
    return units


class ToneCodec:
    """An in-process SpeechCodec of tones (see the module docstring)."""

    def __init__(self, sample_rate: int = 16_000):
        self.sample_rate = sample_rate

    def decode(self, units) -> torch.Tensor:
        return tones(units, self.sample_rate)

    def encode(self, waveform, sample_rate: int) -> list[int]:
        return tone_units(resample(torch.as_tensor(waveform).float(), sample_rate, self.sample_rate),
                          self.sample_rate)


class CodecServer(LoopbackServer):
    def __init__(self, sample_rate: int = 16_000):
        self.sample_rate = sample_rate
        self.counts: dict[str, int] = {}  # "MODE/decode" -> requests
        self.auth_headers: list[str] = []
        self.content_types: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        seen_bodies: set[str] = set()
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                parts = self.path.strip("/").split("/")
                if len(parts) != 2 or parts[0] not in MODES or parts[1] not in ("decode", "encode"):
                    self._reply(404, "unknown path")
                    return
                mode, op = parts
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                digest = hashlib.sha256(self.path.encode() + body).hexdigest()
                with server.lock:
                    key = f"{mode}/{op}"
                    server.counts[key] = server.counts.get(key, 0) + 1
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                    server.content_types.append(self.headers.get("Content-Type", ""))
                    first_time = digest not in seen_bodies
                    seen_bodies.add(digest)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._handle(mode, op, body, first_time)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _handle(self, mode, op, body, first_time):
                if mode == "slow":
                    time.sleep(SLOW_S)
                if mode == "fail" or (mode == "flaky" and first_time):
                    return self._reply(500, "vocoder crashed")
                if mode == "ratelimit" and first_time:
                    return self._reply(429, "slow down", {"Retry-After": "0.1"})
                if mode == "garbage":
                    return self._reply(200, b"\x00\x01not audio, not json\xff" * 8)
                if op == "decode":
                    if mode == "wrong_json":
                        return self._reply(200, json.dumps({"audio": "UklGRg=="}), {"Content-Type": "application/json"})
                    rate = server.sample_rate // 2 if mode == "wrong_rate" else server.sample_rate
                    units = json.loads(body)["units"]
                    return self._reply(200, wav_bytes(tones(units, rate), rate), {"Content-Type": "audio/wav"})
                wave, rate = read_wav_bytes(body)
                if rate != server.sample_rate:
                    return self._reply(400, f"audio at {rate} Hz; this server needs {server.sample_rate} Hz")
                units = tone_units(wave.numpy(), rate)
                answer = {"tokens": units} if mode == "wrong_json" else {"units": units}
                return self._reply(200, json.dumps(answer), {"Content-Type": "application/json"})

        super().__init__(Handler)

    def url(self, mode: str, op: str) -> str:
        return f"{self.base_url}/{mode}/{op}"
