"""kerascope video on damaged and odd inputs: a truncated or corrupt file keeps the frames read
and says what is missing (exit 1), a video with a 1-pixel side, a tiny one's legible label, an
-o that is a folder, one count in the stop line. Small real clips (pans over chelsea.png) and
the tiny model: seconds."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from kerascope.cli import main
from kerascope.cli_video import interrupt_note
from kerascope.video import explain_video

av = pytest.importorskip("av")

FRAMES, FPS = 48, 12  # 4 s


def _pan(chelsea: np.ndarray, i: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``i`` of a pan across the cat photo, at ``size`` (width, height)."""
    window = chelsea[40:280, i * 4 : i * 4 + 240]
    return np.asarray(Image.fromarray(window).resize(size, Image.Resampling.BILINEAR))


def write_mkv(path, chelsea, size=(64, 48), frames=FRAMES, codec="libx264", audio_s=0.0):
    """H.264 (a key frame every second, no B-frames) in Matroska, whose header states the
    length but no frame count; with ``audio_s``, that many seconds of silent AAC."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=FPS)
        video.width, video.height = size
        video.pix_fmt = "yuv420p" if codec == "libx264" else "yuv444p"
        if codec == "libx264":
            video.options = {"g": str(FPS), "bf": "0"}
        sound = None
        if audio_s:
            sound = out.add_stream("aac", rate=44100)
            sound.layout = "mono"
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(_pan(chelsea, i, size), format="rgb24")
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if sound is not None:
            for start in range(0, int(44100 * audio_s), 1024):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32),
                                                   format="fltp", layout="mono")  # fmt: skip
                chunk.sample_rate, chunk.pts, chunk.time_base = 44100, start, Fraction(1, 44100)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def frame_count(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture(scope="module")
def whole(tmp_path_factory, chelsea):
    return write_mkv(tmp_path_factory.mktemp("whole") / "pan.mkv", chelsea)


# ---------------------------------------------------------------- damaged files


def test_a_truncated_mkv_keeps_its_frames_says_so_and_exits_1(tiny_clf, whole, tmp_path,
                                                               capsys, tiny_cam_file):  # fmt: skip
    """The first half of the file: it demuxes to its end without an error and its header has
    no frame count (before: "wrote ...: 20 frames", exit 0, no word of the other 2 s)."""
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "cut-out.mp4"
    report = explain_video(cut, out, clf=tiny_clf)
    assert 0 < report.frames < FRAMES and frame_count(out) == report.frames  # kept
    assert re.fullmatch(r"only its first [0-9.]+ s of 4\.00 s could be read: the file looks "
                        r"truncated or corrupt", report.short)  # fmt: skip
    again = tmp_path / "cli.mp4"
    assert main(["video", str(cut), "-o", str(again), "-m", str(tiny_cam_file)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"wrote {again}: {report.frames} frames" in err
    assert f"'{cut}': only its first" in err and again.exists()


def test_packets_the_decoder_refuses_are_skipped_and_counted(tiny_clf, whole, tmp_path):
    """Six packets of noise in the middle: the frames after them, from the next key frame, are
    written too, and the line counts the refused packets (before: "decode error after 20
    frames", and no video at all)."""
    with av.open(str(whole)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(whole.read_bytes())
    rng = np.random.default_rng(0)
    for pos, size in packets[20:26]:  # 1.67-2.17 s; a key frame at 2 s and 3 s
        data[pos + 4 : pos + size] = rng.bytes(size - 4)
    broken = tmp_path / "noise.mkv"
    broken.write_bytes(bytes(data))
    report = explain_video(broken, tmp_path / "o.mp4", clf=tiny_clf)
    assert 24 <= report.frames < FRAMES - 6  # the last two seconds are there
    assert frame_count(tmp_path / "o.mp4") == report.frames
    assert re.fullmatch(r"\d+ packets could not be decoded \(the first near [0-9.]+ s: Invalid "
                        r"data found when processing input\), so frames are missing: the file "
                        r"looks corrupt", report.short)  # fmt: skip


def test_a_whole_video_is_not_called_damaged(tiny_clf, whole, tmp_path, chelsea):
    """Nor one whose sound runs a second past its picture (the container's length is the
    sound's: the audio packets read reach it)."""
    report = explain_video(whole, tmp_path / "a.mp4", clf=tiny_clf)
    assert report.frames == FRAMES and report.short is None
    longer = write_mkv(tmp_path / "sound.mkv", chelsea, frames=24, audio_s=3.0)
    with av.open(str(longer)) as c:
        assert c.duration / 1_000_000 > 2.9  # the header's length is the sound's
    report = explain_video(longer, tmp_path / "b.mp4", clf=tiny_clf)
    assert report.frames == 24 and report.short is None and report.audio_kept


# ---------------------------------------------------------------- tiny frames


@pytest.mark.parametrize(("size", "drawn"), [((1, 1), (224, 224)), ((2, 1), (224, 112)),
                                             ((7, 5), (224, 160))])  # fmt: skip
def test_a_tiny_video_is_enlarged_as_explains_pictures_are(tiny_clf, chelsea, tmp_path, size,
                                                           drawn):  # fmt: skip
    """By a whole factor to 224 px on its long side, then even sides (before: 1x1 and 2x1
    crashed with ZeroDivisionError, 7x5 gave 12x24 frames, mostly label bar)."""
    clip = write_mkv(tmp_path / "tiny.mkv", chelsea, size=size, frames=3, codec="ffv1")
    frames = tmp_path / "frames"
    for layout, want in (("side", (2 * drawn[0], drawn[1] + ov.bar_height(drawn[1]))),
                         ("overlay", drawn)):  # fmt: skip
        out = tmp_path / f"{layout}.mp4"
        report = explain_video(clip, out, clf=tiny_clf, layout=layout, frames_dir=frames,
                               overwrite=True)  # fmt: skip
        assert report.frames == 3 and report.size == want
    assert len(list(frames.iterdir())) == 3


# ---------------------------------------------------------------- the command line


def test_an_output_that_is_a_folder_says_so(whole, tmp_path, capsys):
    """Before: "kerascope writes H.264 in .mp4, .m4v, .mov, .mkv files" for -o adir."""
    folder = tmp_path / "adir"
    folder.mkdir()
    assert main(["video", str(whole), "-o", str(folder)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--output '{folder}' is a folder; name the video file" in err
    assert f"-o '{folder / 'pan-output.mp4'}'" in err and "H.264" not in err
    assert list(folder.iterdir()) == []


def test_the_stop_line_has_one_count():
    """Frames drawn run ahead of those encoded: the line names the frame files only (before:
    "stopped by SIGTERM after 416 frames ... the 432 frames drawn so far are in 'fr'")."""
    line = interrupt_note("stopped by SIGTERM", 416, "fr", 432)
    assert line == ("stopped by SIGTERM after 432 frames drawn: no video written (a video is "
                    "written whole or not at all); they are in 'fr'")  # fmt: skip
    assert re.findall(r"\d+", line) == ["432"]
    one = interrupt_note("interrupted", 0, "fr", 1)
    assert one.startswith("interrupted after 1 frame drawn: ") and one.endswith("it is in 'fr'")
    assert re.findall(r"\d+", interrupt_note("interrupted", 7, None, 0)) == ["7"]
