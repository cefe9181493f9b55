"""kerascope video: PCM sound transcoded to AAC for MP4 keeps its length and its place in
time. Tiny clips (64x48) and a tiny model: seconds."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from kerascope.video import explain_video

av = pytest.importorskip("av")

W, H, FPS = 64, 48, 12
BEEP = 0.5  # seconds of silence before the tone starts


def write_pcm_clip(path, seconds: float, rate: int = 44100, layout: str = "mono",
                   audio_start: float = 0.0):  # fmt: skip
    """An MKV of ``seconds`` of H.264 and PCM sound from ``audio_start``: silence, then from
    ``BEEP`` seconds after its start a 440 Hz tone to its end. Chunks of 1000 samples, so the
    sound is no whole number of AAC frames (1024) and mkv rounds its times to the ms."""
    channels = 1 if layout == "mono" else 2
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=rate)
        sound.layout = layout
        for i in range(round(seconds * FPS)):
            picture = np.full((H, W, 3), i * 9 % 256, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(video.encode(None))
        n = round((seconds - audio_start) * rate)
        t = np.arange(n) / rate
        wave = np.where(t >= BEEP, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0)
        pcm = np.repeat((wave * 32767).astype(np.int16)[None], channels, axis=0)
        first = round(audio_start * rate)
        for start in range(0, n, 1000):
            chunk = np.ascontiguousarray(pcm[:, start : start + 1000].T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=layout)
            frame.sample_rate, frame.time_base = rate, Fraction(1, rate)
            frame.pts = first + start
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


def audio_span(path) -> tuple[float, float]:
    """(start, end) of the audio track in seconds, as its packets state them after the
    container's edit list: what a player plays."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        packets = [p for p in c.demux(stream) if p.pts is not None]
    end = max((p.pts + p.duration) * p.time_base for p in packets)
    start = Fraction(stream.start_time or 0) * stream.time_base
    return float(start), float(end)


def tone_onset(path) -> float:
    """When the tone starts, in seconds of the file's time: the first decoded sample above
    half its amplitude (AAC's pre-echo stays well under that)."""
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            pcm = frame.to_ndarray().astype(np.float64)
            if frame.format.is_packed:  # interleaved: (1, samples x channels)
                pcm = pcm.reshape(-1, len(frame.layout.channels)).T
            samples = np.abs(pcm).max(axis=0)
            if frame.format.name.startswith("s16"):
                samples /= 32767
            loud = np.flatnonzero(samples > 0.25)
            if loud.size:
                return float(
                    frame.pts * frame.time_base + Fraction(int(loud[0]), frame.sample_rate)
                )
    raise AssertionError("no tone")


@pytest.mark.parametrize(
    "rate, layout, audio_start",
    [(44100, "mono", 0.0), (37800, "stereo", 0.0), (44100, "mono", 0.25)],
)
def test_transcoded_pcm_keeps_its_length_and_its_time(tiny_clf, tmp_path, rate, layout,
                                                      audio_start):  # fmt: skip
    """Before: the PCM frames went to the AAC encoder untimed, so its 1024 samples of priming
    were kept as sound: the audio ended 23 ms after the input's and played 23 ms late (and a
    track starting at 0.25 s started at 0)."""
    clip = write_pcm_clip(tmp_path / "in.mkv", 2.0, rate, layout, audio_start)
    out = tmp_path / "out.mp4"
    report = explain_video(clip, out, clf=tiny_clf, layout="overlay", every=4)
    assert report.audio_kept
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"  # MP4 cannot hold PCM as is
        priming = Fraction(1024, c.streams.audio[0].sample_rate)  # 21 ms at 48 kHz
    start, end = audio_span(out)
    assert audio_span(clip) == pytest.approx((audio_start, 2.0), abs=2e-3)  # mkv: ms
    assert end == pytest.approx(2.0, abs=1e-3)  # MP4's times are in ms: no better
    assert tone_onset(out) == pytest.approx(tone_onset(clip), abs=2e-3)
    if audio_start:  # a track starting late may begin with the priming frame, near silence
        assert audio_start - priming - 1e-3 <= start <= audio_start + 1e-3
    else:  # the edit list cuts the priming
        assert start == 0
