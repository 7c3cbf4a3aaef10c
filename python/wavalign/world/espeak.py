"""eSpeak NG synthesis through the `espeakng-loader` package (library and voice data ship in the
wheel; no system install). eSpeak keeps global state, so every call holds one process-wide lock.

Determinism: eSpeak's output depends on what it synthesised before in the same process (its
wave generator keeps state), and its own whisper voice draws unseeded noise. So whispering is
done here instead (eSpeak's plain voice re-excited with seeded noise by the world's vocoder),
and builds synthesise in a fresh worker process in a fixed order (see build.py): the same
config then yields the same audio, bit for bit.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np
import torch

from wavalign.world import audio
from wavalign.world.audio import SAMPLE_RATE  # eSpeak NG's native output rate is the world's

# espeak_PARAMETER codes (speak_lib.h)
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1

_lock = threading.Lock()
_state: dict = {}


@dataclass(frozen=True)
class Voice:
    """eSpeak synthesis parameters: rate in words/min, pitch and range 0-99, amplitude 0-200."""

    rate: int = 160
    pitch: int = 50
    pitch_range: int = 50
    amplitude: int = 100
    whisper: bool = False  # no voicing: the spectral envelope excited by noise

    name = b"en"


def _library():
    if "lib" in _state:
        return _state["lib"]
    try:
        import espeakng_loader
    except ImportError as error:  # a dependency of the package; only a broken install lands here
        raise RuntimeError("the world's speech needs espeakng-loader: pip install espeakng-loader") from error
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"eSpeak NG failed to initialise (returned {rate}, expected {SAMPLE_RATE} Hz)")
    chunks: list[np.ndarray] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def on_audio(wave, count, _events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wave, shape=(count,)).copy())
        return 0

    callback = callback_type(on_audio)  # kept referenced in _state: eSpeak holds a raw pointer
    lib.espeak_SetSynthCallback(callback)
    _state.update(lib=lib, chunks=chunks, callback=callback, voice=None)
    return lib


def synthesize(text: str, voice: Voice = Voice()) -> np.ndarray:
    """text -> [S] float32 waveform in [-1, 1] at SAMPLE_RATE."""
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    with _lock:
        lib = _library()
        if _state["voice"] != voice.name:
            if lib.espeak_SetVoiceByName(voice.name) != 0:
                raise RuntimeError(f"eSpeak NG has no voice {voice.name.decode()!r}")
            _state["voice"] = voice.name
        for code, value in ((_RATE, voice.rate), (_VOLUME, voice.amplitude),
                            (_PITCH, voice.pitch), (_RANGE, voice.pitch_range)):
            lib.espeak_SetParameter(code, int(value), 0)
        chunks = _state["chunks"]
        chunks.clear()
        data = text.encode("utf-8")
        status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != 0 or not chunks:
            raise RuntimeError(f"eSpeak NG synthesis failed for {text!r} (status {status})")
        wave = np.concatenate(chunks)
    wave = (wave.astype(np.float32) / 32768.0).clip(-1.0, 1.0)
    return _whisper(wave) if voice.whisper else wave


def _whisper(wave: np.ndarray) -> np.ndarray:
    frames = audio.analyze(torch.from_numpy(wave))
    # Whispered speech carries less energy than voiced speech of the same effort (-4 dB).
    quieter = frames.log_mel - 0.4 * np.log(10.0)
    return audio.vocode(quieter, frames.f0, torch.zeros(len(frames)), seed=len(wave)).numpy()
