"""Speech codecs: a speech tokenizer (waveform -> units) and its vocoder (units -> waveform).

    from wavalign.codecs import SpeechCodec
    codec = world.codec                      # the built-in world's (wavalign.world.codec.WorldCodec)
    units = codec.encode(waveform, codec.sample_rate)
    wave = codec.decode(units)               # [S] float32 at codec.sample_rate
"""

from wavalign.codecs.base import SpeechCodec

__all__ = ["SpeechCodec"]
