"""kerascope video on whole files with streams it does not read: a second sound track, subtitles
or a second picture longer than the video, sound running on past a short video, a video that
starts late. Only the video and the first sound are demuxed, so how far reading got is compared
with those streams' own stated ends, not with the container's length (its longest stream's):
before, these exited 1 with "the file looks truncated". A truncated file still says so. Tiny
64x64 clips of chelsea.png and the tiny model: seconds."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from kerascope.cli import main
from kerascope.video import estimate_frames, explain_video

av = pytest.importorskip("av")

FPS = 12


def _picture(chelsea: np.ndarray, i: int, side: int = 64) -> av.VideoFrame:
    """Frame ``i`` of a pan across the cat photo, ``side`` pixels square."""
    window = chelsea[40:280, i * 4 : i * 4 + 240]
    image = Image.fromarray(window).resize((side, side), Image.Resampling.BILINEAR)
    return av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")


def _silence(out, stream, seconds: float) -> None:
    for start in range(0, int(44100 * seconds), 1024):
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")  # fmt: skip
        chunk.sample_rate, chunk.pts, chunk.time_base = 44100, start, Fraction(1, 44100)
        out.mux(stream.encode(chunk))
    out.mux(stream.encode(None))


def write(path, chelsea, frames=24, sounds=(), subtitle=None, second_video=0, late=0.0):
    """H.264 at FPS (a key frame a second) from ``late`` seconds on, then: silent AAC tracks
    of ``sounds`` seconds each, a second 32x32 video of ``second_video`` frames, one subtitle
    shown over ``subtitle`` = (start, end) seconds (SubRip in MKV, mov_text in MP4)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width = video.height = 64
        video.pix_fmt, video.options = "yuv420p", {"g": str(FPS), "bf": "0"}
        tracks = [out.add_stream("aac", rate=44100) for _ in sounds]
        for track in tracks:
            track.layout = "mono"
        other = out.add_stream("libx264", rate=FPS) if second_video else None
        if other is not None:
            other.width = other.height = 32
            other.pix_fmt = "yuv420p"
        text, mp4 = None, str(path).endswith(".mp4")
        if subtitle is not None:
            text = out.add_mux_stream("mov_text" if mp4 else "subrip")
            text.time_base = Fraction(1, 1000)
        for i in range(frames):
            picture = _picture(chelsea, i)
            picture.pts, picture.time_base = i + round(late * FPS), Fraction(1, FPS)
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        for i in range(second_video):
            out.mux(other.encode(_picture(chelsea, i, 32)))
        if other is not None:
            out.mux(other.encode(None))
        for track, seconds in zip(tracks, sounds, strict=True):
            _silence(out, track, seconds)
        if text is not None:
            words = b"a cat"
            packet = av.Packet(b"\0\5" + words if mp4 else words)
            packet.stream, packet.time_base = text, Fraction(1, 1000)
            packet.pts = packet.dts = round(subtitle[0] * 1000)
            packet.duration = round((subtitle[1] - subtitle[0]) * 1000)
            out.mux(packet)
    return path


def decodable(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def container_seconds(path) -> float:
    with av.open(str(path)) as c:
        return c.duration / 1_000_000


# name: (writer's arguments, what makes the container longer than the video and its sound)
REFUSED_BEFORE = {
    "second-sound.mkv": dict(sounds=(2.0, 5.0)),  # "only its first 2.00 s of 5.04 s"
    "second-sound.mp4": dict(sounds=(2.0, 5.0)),
    "subtitle.mkv": dict(subtitle=(1.0, 6.0)),  # "only its first 2.00 s of 6.00 s"
    "second-video.mp4": dict(second_video=60),  # "only its first 2.00 s of 5.00 s"
    # FFmpeg gives the 6-frame Matroska video the container's length: "its header promises 48
    # frames but only 6 could be read"
    "short-video.mkv": dict(frames=6, sounds=(4.0,)),
}
FINE_BEFORE = {  # guards: no sound (the container's end rounded past the last frame), late video
    "plain.mkv": dict(),
    "plain.mp4": dict(),
    "late.mkv": dict(late=1.5, sounds=(3.5,)),
    "late.mp4": dict(late=1.5, sounds=(2.0,)),
    "long-sound.mkv": dict(sounds=(6.0,)),
}


@pytest.mark.parametrize("name", [*REFUSED_BEFORE, *FINE_BEFORE])
def test_a_whole_video_with_streams_it_does_not_read_is_not_called_damaged(
    tiny_clf, chelsea, tmp_path, name
):
    """Every frame is written, and no "truncated" line (exit 0)."""
    clip = write(tmp_path / name, chelsea, **{**REFUSED_BEFORE, **FINE_BEFORE}[name])
    want = decodable(clip)
    report = explain_video(clip, tmp_path / "out.mp4", clf=tiny_clf)
    assert report.frames == want and decodable(tmp_path / "out.mp4") == want
    assert report.short is None, report.short
    if name in REFUSED_BEFORE:  # the container's length is not the video's
        assert container_seconds(clip) > want / FPS + 1.5


def test_the_command_line_exits_0_for_a_subtitled_video(chelsea, tmp_path, capsys, tiny_cam_file):
    """Before: exit 1, "'subtitle.mkv': only its first 2.00 s of 6.00 s could be read: the
    file looks truncated or corrupt"."""
    clip = write(tmp_path / "subtitle.mkv", chelsea, subtitle=(1.0, 6.0))
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), "-o", str(out), "-m", str(tiny_cam_file)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"wrote {out}: 24 frames" in err and "truncated" not in err


LONGER = {"second-sound": dict(sounds=(4.0, 7.0)), "subtitle": dict(sounds=(4.0,), subtitle=(1, 8))}


@pytest.mark.parametrize("extra", LONGER.values(), ids=LONGER.keys())
def test_a_truncated_video_with_a_longer_stream_still_says_so(tiny_clf, chelsea, tmp_path, extra):
    """Cut at 40 %: the frames read are written, exit 1, and the line gives the length of the
    video and sound read (4 s), not the longest stream's (7 or 8 s, before)."""
    whole = write(tmp_path / "whole.mkv", chelsea, frames=48, **extra)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 5])
    report = explain_video(cut, tmp_path / "out.mp4", clf=tiny_clf)
    assert 0 < report.frames < 40 and decodable(tmp_path / "out.mp4") == report.frames
    found = re.fullmatch(r"only its first ([0-9.]+) s of ([0-9.]+) s could be read: the file "
                         r"looks truncated or corrupt", report.short or "")  # fmt: skip
    assert found, report.short
    assert float(found[1]) < 3.5 and 4.0 <= float(found[2]) < 4.1


def test_the_progress_total_is_the_video_s_own_length(chelsea, tmp_path):
    """A 2 s video under 6 s of sound in Matroska (no frame count): 24 frames, not the
    container's 6 s x 12 fps = 72 (before)."""
    clip = write(tmp_path / "long-sound.mkv", chelsea, sounds=(6.0,))
    assert estimate_frames(clip) == decodable(clip) == 24
