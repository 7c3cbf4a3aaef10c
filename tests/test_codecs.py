"""wavalign.codecs.SpeechCodec and the built-in world's codec."""

import pytest
import torch

from wavalign.codecs import SpeechCodec
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
