"""kerascope video on real clips: a pan across scikit-image's photos, encoded here with PyAV."""

from __future__ import annotations

import os
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from kerascope.cam import overlay as ov
from kerascope.images import resize
from kerascope.video import (
    VideoError,
    VideoOutputError,
    default_output,
    estimate_frames,
    explain_video,
    open_video,
)
from tests.conftest import load_rgb

av = pytest.importorskip("av")

FPS = 12
SIZE = (320, 240)  # width, height
CAT_FRAMES = 16  # then 8 frames zooming into coffee.png
CROP = (240, 180)  # chelsea crop window (w, h), 4:3 like the frames
# x0, y0, x1, y1 in chelsea.png (451 x 300): eyes (y ~115-140) down to the nose (y ~240);
# not the ears, the body at the bottom left or the background on the right.
CAT_FACE = (100, 90, 340, 260)


def cat_window(i: int) -> tuple[int, int]:
    """Top-left corner in chelsea.png of cat frame ``i``: a pan left to right, slightly down."""
    x = round(i * (451 - CROP[0]) / (CAT_FRAMES - 1))
    return x, 40 + round(i * 60 / (CAT_FRAMES - 1))


def clip_frames(photo_paths) -> list[np.ndarray]:
    cat, coffee = load_rgb(photo_paths["chelsea"]), load_rgb(photo_paths["coffee"])
    frames = []
    for i in range(CAT_FRAMES):
        x, y = cat_window(i)
        frames.append(resize(cat[y : y + CROP[1], x : x + CROP[0]], SIZE[::-1]))
    for i in range(8):  # zoom in on the cup: 600x400 -> 300x225
        w = 600 - i * 300 // 7
        h = w * 3 // 4
        x, y = (600 - w) // 2, (400 - h) // 2
        frames.append(resize(coffee[y : y + h, x : x + w], SIZE[::-1]))
    return frames


def write_clip(path: Path, frames: list[np.ndarray], audio: str | None = None) -> Path:
    """H.264 at FPS, plus a 440 Hz sine in ``audio`` (a codec name) for the clip's length."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv420p"
        sound = None
        if audio:
            sound = out.add_stream(audio, rate=44100)
            sound.layout = "mono"
        for image in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        if sound is not None:
            rate = 44100
            t = np.arange(rate * len(frames) // FPS) / rate
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                chunk = wave[None, start : start + 1024]
                if audio == "pcm_s16le":
                    frame = av.AudioFrame.from_ndarray(
                        (chunk * 32767).astype(np.int16), format="s16", layout="mono"
                    )
                else:
                    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def probe(path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return {
            "frames": len(frames),
            "fps": v.average_rate,
            "size": (v.width, v.height),
            "audio": [a.codec_context.name for a in c.streams.audio],
            "first": frames[0],
        }


@pytest.fixture(scope="module")
def frames(photo_paths) -> list[np.ndarray]:
    return clip_frames(photo_paths)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, frames) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "plain": write_clip(folder / "pan.mp4", frames),
        "aac": write_clip(folder / "pan-aac.mp4", frames, audio="aac"),
        "pcm": write_clip(folder / "pan-pcm.mkv", frames, audio="pcm_s16le"),
    }


# ---------------------------------------------------------------- errors (no model needed)


def test_estimate_frames_for_a_progress_bar(clips):
    assert estimate_frames(clips["aac"]) == 24
    assert estimate_frames(clips["pcm"]) == 24  # mkv stores no count: duration x rate


def test_default_output_name():
    assert default_output("/videos/kitchen.mov") == Path("/videos/kitchen-output.mp4")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: d, "directory"),
        (lambda d: _write(d / "empty.mp4", b""), "empty"),
        (lambda d: _write(d / "noise.mp4", np.random.default_rng(0).bytes(50_000)), "not a video"),
        (lambda d: _write(d / "notes.mp4", b"just some text\n" * 100), "not a video"),
    ],
)
def test_unreadable_files_raise_video_error(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(VideoError, match=reason) as info:
        open_video(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_mp4_raises_video_error(tmp_path, clips):
    data = clips["aac"].read_bytes()
    path = _write(tmp_path / "truncated.mp4", data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated"):
        open_video(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as out:
        sound = out.add_stream("aac", rate=44100)
        sound.layout = "mono"
        wave = np.zeros((1, 1024), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate = 44100
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    with pytest.raises(VideoError, match="no video stream"):
        open_video(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_side_by_side_with_audio_and_frames(lite0, clips, tmp_path):
    out = tmp_path / "result.mp4"
    frames_dir = tmp_path / "frames"
    seen = []
    report = explain_video(
        clips["aac"], out, clf=lite0, frames_dir=frames_dir, batch_size=8, progress=seen.append
    )
    bar = ov.bar_height(SIZE[1])
    assert report.frames == 24 and sum(seen) == 24
    assert report.size == (2 * SIZE[0], SIZE[1] + bar) and report.fps == FPS
    assert report.audio_kept and report.output == str(out) and not report.variable_rate
    got = probe(out)
    assert got["frames"] == 24 and got["fps"] == FPS
    assert got["size"] == report.size and got["audio"] == ["aac"]
    # The left half under the label bar is the input frame (up to H.264 loss, twice).
    left = got["first"][bar:, : SIZE[0]].astype(int)
    assert np.abs(left - probe(clips["aac"])["first"].astype(int)).mean() < 6
    names = sorted(os.listdir(frames_dir))
    assert names[0] == "frame_00001.jpg" and names[-1] == "frame_00024.jpg" and len(names) == 24
    assert sorted(os.listdir(tmp_path)) == ["frames", "result.mp4"]


@pytest.mark.slow
def test_overlay_layout_every_4_and_transcoded_audio(lite0, clips, tmp_path):
    calls = []
    report = explain_video(
        clips["pcm"], tmp_path / "pan.mp4", clf=lite0, layout="overlay", every=4,
        progress=calls.append, target="tabby",
    )  # fmt: skip
    assert report.frames == 24 and report.size == SIZE and sum(calls) == 24
    assert not report.variable_rate  # mkv's millisecond times (83, 167 ms) are 12 fps exactly
    got = probe(report.output)
    assert got["frames"] == 24 and got["fps"] == FPS and got["size"] == SIZE
    assert got["audio"] == ["aac"]  # PCM cannot go into MP4 as is: transcoded


@pytest.mark.slow
def test_decode_errors_midway_keep_the_frames_read_and_say_so(lite0, clips, tmp_path):
    """The frames that decode are written and `VideoReport.short` counts the packets that did
    not (before: the first refused packet ended the run, with no video)."""
    data = clips["plain"].read_bytes()
    third = len(data) // 3  # the middle of the frame data; the index (moov) is at the end
    noise = np.random.default_rng(1).bytes(third)
    broken = _write(tmp_path / "broken.mp4", data[:third] + noise + data[2 * third :])
    report = explain_video(broken, clf=lite0, batch_size=4)
    assert 0 < report.frames < 24 and probe(report.output)["frames"] == report.frames
    assert "could not be decoded" in report.short and "the file looks corrupt" in report.short
    assert sorted(os.listdir(tmp_path)) == ["broken-output.mp4", "broken.mp4"]


@pytest.mark.slow
def test_phone_rotation_is_applied(lite0, frames, tmp_path):
    """A display matrix (how phones store portrait video) turns the frames upright."""
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv420p"
        video.set_display_rotation(90)  # shown turned 90 degrees counterclockwise
        for image in frames[:4]:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
    report = explain_video(path, tmp_path / "out.mp4", clf=lite0, layout="overlay")
    assert report.size == SIZE[::-1] and probe(report.output)["size"] == SIZE[::-1]


@pytest.mark.slow
def test_interrupted_run_leaves_nothing(lite0, clips, tmp_path):
    def stop(n):
        raise KeyboardInterrupt

    out = tmp_path / "pan-output.mp4"
    with pytest.raises(KeyboardInterrupt):  # at the first frames encoded, others drawing
        explain_video(clips["aac"], out, clf=lite0, batch_size=8, progress=stop)
    assert os.listdir(tmp_path) == []
    # drawing, reading, encoding: every thread ended with the run
    assert not [t for t in threading.enumerate() if t.name.startswith("kerascope-video")]


@pytest.mark.slow
def test_heatmap_stays_on_the_cat(lite0, frames):
    from kerascope.cam.explain import Explainer

    size = lite0.input_size
    batch = np.stack([resize(f, size) for f in frames[:CAT_FRAMES]])
    maps, classes, _ = Explainer(lite0, method="gradcam").explain_batch(batch)
    cat_classes = {lite0.labels[int(c)][1] for c in classes}
    assert cat_classes <= {"tabby", "tiger_cat", "Egyptian_cat", "tiger cat", "Egyptian cat"}
    x0, y0, x1, y1 = CAT_FACE
    for i, heat in enumerate(maps):
        big = ov.upsample(heat, size)
        py, px = np.unravel_index(np.argmax(big), big.shape)
        wx, wy = cat_window(i)  # back into chelsea.png coordinates
        x = wx + (px + 0.5) * CROP[0] / size[1]
        y = wy + (py + 0.5) * CROP[1] / size[0]
        assert x0 <= x <= x1 and y0 <= y <= y1, f"frame {i}: peak at ({x:.0f}, {y:.0f})"


def test_output_that_is_the_input_or_in_a_missing_folder_is_one_line(clips, tmp_path):
    from kerascope.video import VideoError

    with pytest.raises(VideoError, match="it is the input video") as caught:
        explain_video(clips["plain"], clips["plain"])
    assert "\n" not in str(caught.value) and str(clips["plain"]) in str(caught.value)
    missing = tmp_path / "nodir" / "out.mp4"
    with pytest.raises(VideoError, match="folder .*nodir' does not exist"):
        explain_video(clips["plain"], missing)
    assert not missing.parent.exists()


def test_a_folder_of_frames_given_as_a_video_points_to_explain(tmp_path):
    from kerascope.video import VideoError, open_video

    with pytest.raises(VideoError, match=r"is a directory, not a video file \(for a folder of "
                       r"pictures: `kerascope explain FOLDER -o OUT`\)$"):  # fmt: skip
        open_video(tmp_path)


def test_full_disk_is_one_line_and_leaves_no_file(lite0, clips):
    from kerascope.files import OutputError
    from tests.fulldisk import small_disk

    with small_disk(1 << 20) as disk:
        if not disk.tmpfs:
            pytest.skip("needs a tmpfs (run as root)")
        disk.fill()
        with open(disk.folder / ".filler", "r+b") as f:  # leave 16 KB: the header fits
            f.truncate(os.path.getsize(disk.folder / ".filler") - 16384)
        out = disk.folder / "pan-output.mp4"
        with pytest.raises(OutputError) as caught:
            explain_video(clips["aac"], out, clf=lite0, batch_size=8)
        assert "\n" not in str(caught.value) and str(out) in str(caught.value)
        assert "no space left" in str(caught.value)
        assert sorted(os.listdir(disk.folder)) == [".filler"]  # no final, no temp file
        disk.free()
        explain_video(clips["aac"], out, clf=lite0, batch_size=8)
        assert probe(out)["frames"] > 0


def test_large_frames_are_batched_as_many_as_fit_not_padded(lite0, clips, tmp_path,
                                                            monkeypatch):  # fmt: skip
    """Frames so large that only 3 fit the held frames' bound: each model call gets 3 real
    frames padded to 3, not to the batch size (on a GPU, 128: 1080p was 44 real rows of 128;
    the rest computed for nothing)."""
    from kerascope import video_frames
    from kerascope.cam.explain import Explainer

    frame_bytes = SIZE[0] * SIZE[1] * 3
    monkeypatch.setattr(video_frames, "_PENDING_BYTES", 3 * frame_bytes + 1)
    calls = []
    real = Explainer.explain_batch

    def recorded(self, pixels, *args, **options):
        calls.append((len(pixels), options.get("pad_to")))
        return real(self, pixels, *args, **options)

    monkeypatch.setattr(Explainer, "explain_batch", recorded)
    report = explain_video(clips["aac"], tmp_path / "out.mp4", clf=lite0, batch_size=16)
    assert report.frames == 24
    assert calls == [(3, 3)] * 8


def test_a_video_cut_short_is_said_and_exits_1(lite0, frames, tmp_path, capsys):
    """A download cut in half whose header (written first: faststart) promises every frame:
    it demuxes to its end without an error, so before, half a video came out with exit 0."""
    from kerascope.cli import main

    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv420p"
        for image in frames * 4:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
    data = whole.read_bytes()
    cut = _write(tmp_path / "cut.mp4", data[: len(data) * 6 // 10])
    report = explain_video(cut, tmp_path / "cut-out.mp4", clf=lite0, every=8)
    assert report.header_frames == 4 * len(frames) and 0 < report.frames < report.header_frames
    assert report.short == (f"its header promises {report.header_frames} frames but only "
                            f"{report.frames} could be read: the file looks truncated")  # fmt: skip
    assert explain_video(whole, tmp_path / "whole-out.mp4", clf=lite0, every=8).short is None
    # An MKV states no frame count, and its duration is its audio's, here 4x the video's:
    # whole, not truncated (the review of this change measured a false "truncated").
    mkv = tmp_path / "long-audio.mkv"
    with av.open(str(mkv), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv420p"
        sound = out.add_stream("aac", rate=44100)
        sound.layout = "mono"
        for image in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        wave = np.zeros(44100 * 4 * len(frames) // FPS, np.float32)
        for start in range(0, len(wave), 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp",
                                               layout="mono")  # fmt: skip
            chunk.sample_rate, chunk.pts, chunk.time_base = 44100, start, Fraction(1, 44100)
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    assert explain_video(mkv, tmp_path / "mkv-out.mp4", clf=lite0, every=8).short is None
    assert main(["video", str(cut), "-o", str(tmp_path / "cli.mp4"), "--every", "8"]) == 1
    assert f"'{cut}': {report.short}" in capsys.readouterr().err


def test_another_output_format_and_a_file_without_frames_are_one_line(clips, tmp_path, capsys):
    """Before: clip.avi held an MP4; a file with no frame said "[Errno 541478725] ..."."""
    with pytest.raises(VideoOutputError, match=r"x\.avi': kerascope writes H\.264 in \.mp4, "
                       r"\.m4v, \.mov, \.mkv files"):  # fmt: skip
        explain_video(clips["aac"], tmp_path / "x.avi", clf="no-such-model")  # before the model
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        out.start_encoding()  # the header, then no frame
    with pytest.raises(VideoError, match="ends before its first frame") as info:
        open_video(empty)
    assert "Errno" not in str(info.value)
    assert not list(tmp_path.glob("x.*"))
    from kerascope.cli import main

    assert main(["video", str(clips["aac"]), "-o", str(tmp_path / "y.avi"), "-m",
                 "no-such-model"]) == 2  # fmt: skip
    assert "kerascope writes H.264 in" in capsys.readouterr().err  # before the model loads
