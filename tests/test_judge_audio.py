"""HttpJudge hears the reply: the WAV it sends (rate, length, content), the request shape,
no_audio counting, prompt templates, the start-up refusal without a codec, and the resampler."""

import base64
import io
import json
import logging
import math

import numpy as np
import pytest
import soundfile
import torch

from wavalign.codecs import build_codec
from wavalign.codecs.fake_codec_server import CodecServer, tones
from wavalign.loopback import LoopbackServer, QuietHandler
from wavalign.rewards import Completion, HttpJudge, JudgeConfig
from wavalign.rewards.completions import make_completions
from wavalign.rewards.http_judge import PROMPTS
from wavalign.train.config import RewardComponent, RewardsConfig
from wavalign.train.rewards import build_reward


class RecordingJudge(LoopbackServer):
    """A loopback judge that keeps every request payload and answers <score>4</score>."""

    def __init__(self):
        self.payloads = []
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                server.payloads.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self._reply(200, json.dumps({"choices": [{"message": {"content": "fine <score>4</score>"}}]}))

        super().__init__(Handler)

    @property
    def url(self):
        return f"{self.base_url}/v1"

    def heard(self, index=-1):
        """(waveform, rate) of the WAV in a request, read back with soundfile; None if none."""
        parts = [p for p in self.payloads[index]["messages"][1]["content"] if p["type"] == "input_audio"]
        if not parts:
            return None
        assert len(parts) == 1 and parts[0]["input_audio"]["format"] == "wav"
        wave, rate = soundfile.read(io.BytesIO(base64.b64decode(parts[0]["input_audio"]["data"])), dtype="float32")
        return wave, rate


def judge(server, **fields):
    return HttpJudge(JudgeConfig(base_url=server.url, api_key_env=None, timeout_s=5.0, max_retries=0, **fields))


def sine(hz, seconds, rate, amplitude=0.5):
    return (amplitude * torch.sin(2 * math.pi * hz * torch.arange(round(seconds * rate)) / rate)).float()


def peak_hz(wave, rate):
    return int(np.argmax(np.abs(np.fft.rfft(np.asarray(wave, dtype=np.float64) * np.hanning(len(wave)), n=rate))))


def test_the_judge_hears_a_wav_at_the_configured_rate_in_the_wavalign_request_shape():
    completion = Completion(text="Paris.", speech_units=[1, 2], audio=sine(440, 0.5, 22050), sample_rate=22050)
    with RecordingJudge() as server:
        assert judge(server, sample_rate=16000)(["What is the capital of France?"], [completion]) == [4.0]
        assert judge(server, kind="acoustic")(["q"], [completion]) == [4.0]  # no sample_rate: the codec's
    first = server.payloads[0]
    assert first["messages"][0] == {"role": "system", "content": PROMPTS["holistic"]}
    text = first["messages"][1]["content"][0]
    assert text == {"type": "text",
                    "text": "Question:\nWhat is the capital of France?\n\nTranscript of answer:\nParis."}
    wave, rate = server.heard(0)
    assert rate == 16000 and wave.shape == (8000,)  # 0.5 s, resampled 22050 -> 16000
    assert peak_hz(wave, rate) == 440 and abs(np.abs(wave[1000:-1000]).max() - 0.5) < 0.01
    wave, rate = server.heard(1)
    assert rate == 22050 and wave.shape == (11025,)
    assert server.payloads[1]["messages"][0]["content"] == PROMPTS["acoustic"]


def test_decoded_units_reach_the_judge_as_audio_of_their_length():
    # units -> the codec server's vocoder -> the judge: 20 ms of audio per unit at 16 kHz
    class _Format:
        def split(self, ids):
            return "hi", [i - 100 for i in ids if i >= 100]

    with CodecServer() as codecs, RecordingJudge() as server:
        codec = build_codec("http", {"decode_url": codecs.url("ok", "decode"), "sample_rate": 16000})
        completions = make_completions(_Format(), [[1, 100, 140, 180], [2, 110]], codec)
        assert judge(server)(["q", "q"], completions) == [4.0, 4.0]
    heard = sorted((server.heard(i) for i in range(2)), key=lambda h: h[0].shape[0])
    assert [(w.shape[0], r) for w, r in heard] == [(320, 16000), (960, 16000)]
    np.testing.assert_allclose(heard[1][0], tones([0, 40, 80], 16000).numpy(), atol=1e-4)


def test_speech_without_audio_is_not_judged_on_its_transcript(caplog):
    caplog.set_level(logging.WARNING)
    undecoded = Completion(text="Paris.", speech_units=[4, 5, 6])  # the codec failed on it
    text_only = Completion(text="", speech_units=[])  # it never spoke: judged as it is
    with RecordingJudge() as server:
        listening = judge(server)
        assert listening(["q", "q"], [undecoded, text_only]) == [None, 4.0]
        assert listening.stats["failures"] == {"no_audio": 1} and listening.summary()["judge/failures_no_audio"] == 1
        assert len(server.payloads) == 1 and server.heard(0) is None
        assert server.payloads[0]["messages"][1]["content"][0]["text"].endswith("Transcript of answer:\n[empty]")
        assert "1 of 2 replies have speech units but no decoded audio" in caplog.text

        deaf = judge(server, audio=False)
        spoken = Completion(text="Paris.", speech_units=[1], audio=sine(300, 0.1, 16000), sample_rate=16000)
        assert deaf.needs_audio is False and listening.needs_audio is True
        assert deaf(["q", "q"], [undecoded, spoken]) == [4.0, 4.0]  # the transcript only, even with audio
        assert server.heard(-1) is None and server.heard(-2) is None and deaf.stats["failures"] == {}


def test_prompt_and_user_templates(tmp_path):
    system = tmp_path / "system.txt"
    system.write_text("You judge {kind} quality. Literal braces: {{ok}}.")
    user = tmp_path / "user.txt"
    user.write_text("Q: {question}\nA: {transcript}")
    completion = Completion(text="", audio=sine(300, 0.1, 16000), sample_rate=16000)
    with RecordingJudge() as server:
        judged = judge(server, kind="semantic", prompt_template=str(system), user_template=str(user))
        assert judged(["Why?"], [completion]) == [4.0]
    messages = server.payloads[0]["messages"]
    assert messages[0]["content"] == "You judge semantic quality. Literal braces: {ok}."
    assert messages[1]["content"][0]["text"] == "Q: Why?\nA: [empty]"
    assert server.heard(0)[1] == 16000  # the audio part is still sent after a templated text


@pytest.mark.parametrize("text, message", [
    ("Score the {answer}", r"unknown field \{answer\}; the fields are \{question\}, \{transcript\}, \{kind\}"),
    ("Score {question.upper}", r"unknown field \{question.upper\}"),
    ("Score {}", r"unknown field \{\}"),
    ("Score {question", "not a valid template"),
])
def test_templates_are_validated_at_construction(tmp_path, text, message):
    path = tmp_path / "prompt.txt"
    path.write_text(text)
    for option in ("prompt_template", "user_template"):
        with pytest.raises(ValueError, match=rf"judge {option} .*prompt.txt: {message}"):
            JudgeConfig(base_url="http://127.0.0.1:1/v1", **{option: str(path)})
    with pytest.raises(ValueError, match="template file not found: .*missing.txt"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", prompt_template=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", sample_rate=0)


def _judge_rewards(**options):
    config = RewardsConfig(components=(RewardComponent("judge", "http_judge", 1.0,
                                                       {"base_url": "http://127.0.0.1:1/v1", **options}),))
    config.validate()
    return config


def test_an_audio_judge_without_a_codec_is_refused_at_start_up():
    from wavalign.train.rewards import REWARD_KINDS

    # judged from the options alone, so the refusal comes before any model loads
    listens = REWARD_KINDS["http_judge"].listens
    assert listens({"base_url": "http://x"}) is True and listens({"base_url": "http://x", "audio": False}) is False
    with pytest.raises(ValueError, match=r"\['judge'\] listen to audio, but this run has no speech codec.*"
                                         r"set speech\.codec \(world, python, http or onnx\)"):
        build_reward(_judge_rewards(), world=None)
    assert build_reward(_judge_rewards(audio=False), world=None).needs_audio is False
    codec = build_codec("python", {"factory": "wavalign.codecs.fake_codec_server:ToneCodec"})
    assert build_reward(_judge_rewards(), world=None, codec=codec).needs_audio is True


def test_http_judge_reexports_wav_bytes_from_audio_io():
    from wavalign.audio_io import wav_bytes as shared
    from wavalign.rewards.http_judge import wav_bytes

    assert wav_bytes is shared
    wave, rate = soundfile.read(io.BytesIO(wav_bytes(sine(300, 0.1, 8000), 8000)), dtype="float32")
    assert rate == 8000 and wave.shape == (800,)


# ---------------------------------------------------------------------------- the resampler judges listen through
def test_resample_keeps_a_tones_frequency_and_amplitude():
    from wavalign.audio_io import resample as shared
    from wavalign.rewards.audio import resample

    assert resample is shared  # rewards.audio.resample is audio_io's soxr resampler
    down = resample(sine(440, 1.0, 24000), 24000, 16000)
    assert down.shape == (16000,) and down.dtype == torch.float32
    assert peak_hz(down, 16000) == 440
    assert abs(down[1000:-1000].abs().max().item() - 0.5) < 0.005
    torch.testing.assert_close(down[1000:-1000], sine(440, 1.0, 16000)[1000:-1000], atol=5e-3, rtol=0)


def test_resample_removes_what_would_alias():
    from wavalign.rewards.audio import resample

    high = sine(6000, 1.0, 16000)  # above 8 kHz audio's 4 kHz Nyquist: naive decimation folds it to 2 kHz
    down = resample(high, 16000, 8000)
    assert down.shape == (8000,)
    assert down[500:-500].pow(2).mean().sqrt() < 1e-3 * high.pow(2).mean().sqrt() * 10  # < -40 dB: removed
    aliased = high[::2]  # what decimation without a low-pass would give: a loud 2 kHz tone
    assert aliased.pow(2).mean().sqrt() > 0.3 and peak_hz(aliased, 8000) == 2000
