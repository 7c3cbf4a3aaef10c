"""Speech codecs: a speech tokenizer (waveform -> units) and its vocoder (units -> waveform).

    from wavalign.codecs import SpeechCodec
    codec = world.codec                      # the built-in world's (wavalign.world.codec.WorldCodec)
    units = codec.encode(waveform, codec.sample_rate)
    wave = codec.decode(units)               # [S] float32 at codec.sample_rate

    codec = build_codec("http", {"decode_url": "http://127.0.0.1:9000/token2wav", "sample_rate": 22050})

Kinds (see wavalign.codecs.build): world (the built-in world's), python (your factory), http
(a token2wav / wav2token server), onnx (exported models), none. Codecs other than the world's
return None from decode for a sample they could not decode (counted in `codec.stats`), never
made-up audio; `can_encode` says whether they can tokenize audio too.
"""

from wavalign.codecs.base import SpeechCodec
from wavalign.codecs.build import KINDS, build_codec

__all__ = ["KINDS", "SpeechCodec", "build_codec"]
