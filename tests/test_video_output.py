"""kerascope video: what the output keeps and where it may go (frame times of a variable-rate
video, --frames-dir reruns, a symbolic link as -o, an output under a file, Ctrl-C before any
frame, the frame label). Tiny clips (64x48, a few frames) and a tiny model: seconds, not
minutes; the real model's tests are in test_video.py."""

from __future__ import annotations

import os
import re
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from kerascope.cam.save import picture_label
from kerascope.cli import main
from kerascope.cli_video import interrupt_note
from kerascope.files import OutputError
from kerascope.video import VideoOutputError, explain_video
from kerascope.video_frames import Timeline

av = pytest.importorskip("av")

W, H = 64, 48
VFR_MS = [0, 33, 66, 99, 132, 165, 365, 565, 765, 965]  # 33 ms steps, then 200 ms ones


def _picture(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_timed(path, times_ms: list[int], audio: bool = False):
    """H.264 with these frame times (time base 1/1000), plus AAC silence to the last frame's
    end when ``audio``."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=44100)
            sound.layout = "mono"
        for i, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            samples = 44100 * (times_ms[-1] + 200) // 1000
            for start in range(0, samples, 1024):
                chunk = np.zeros((1, 1024), np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, start
                frame.time_base = Fraction(1, 44100)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def frame_times(path) -> list[Fraction]:
    with av.open(str(path)) as c:
        return [Fraction(f.pts) * f.time_base for f in c.decode(video=0)]


def audio_times(path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.pts is not None]


def duration(path) -> float:
    with av.open(str(path)) as c:
        return c.duration / 1_000_000


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    return write_timed(tmp_path_factory.mktemp("vfr") / "vfr.mp4", VFR_MS, audio=True)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    return write_timed(tmp_path_factory.mktemp("short") / "short.mp4", [0, 40])


# ---------------------------------------------------------------- frame times


@pytest.mark.parametrize("every", [1, 3])
def test_a_variable_rate_video_keeps_every_frame_time_and_its_audio(tiny_clf, vfr_clip,
                                                                     tmp_path, every):  # fmt: skip
    """Before: 20 VFR frames came out on a 1/(average rate) grid (input 0.33, 0.53, 0.73 s;
    output 0.915, 1.006, 1.098 s), drifting against the audio kept beside them."""
    out = tmp_path / "out.mp4"
    report = explain_video(vfr_clip, out, clf=tiny_clf, every=every, layout="overlay")
    assert report.frames == len(VFR_MS) and report.variable_rate and report.audio_kept
    got = frame_times(out)
    assert got == [Fraction(ms, 1000) for ms in VFR_MS] == frame_times(vfr_clip)
    assert audio_times(out) == audio_times(vfr_clip)  # copied packets, at their own times
    assert duration(out) == pytest.approx(duration(vfr_clip), abs=1e-3)


def test_timeline_snaps_only_within_an_input_tick():
    """Constant 12 fps in milliseconds (mkv) comes out at exact k/12; a VFR time stays; a
    frame without a time or one going back gets the one before plus 1/rate."""
    ms = SimpleNamespace(time_base=Fraction(1, 1000), base_rate=Fraction(12))
    line = Timeline(ms, Fraction(12))
    times = [line.stamp(p, 83) * line.time_base for p in (0, 83, 167, 250)]
    assert times == [Fraction(k, 12) for k in range(4)] and not line.variable
    assert [line.durations[round(t / line.time_base)] * line.time_base for t in times] == [
        Fraction(1, 12)
    ] * 4
    assert line.stamp(300, 20) * line.time_base == Fraction(3, 10)  # off the grid: kept
    assert line.stamp(None, None) * line.time_base == Fraction(3, 10) + Fraction(1, 12)
    assert line.stamp(100, 20) * line.time_base == Fraction(3, 10) + Fraction(2, 12)
    assert line.variable
    # r_frame_rate "1k" (a VFR mkv's finest step): times on a 1 ms grid, own durations kept
    vfr = Timeline(SimpleNamespace(time_base=Fraction(1, 1000), base_rate=Fraction(1000)), 10)
    stamped = [vfr.stamp(p, 200) for p in (0, 200, 233)]
    assert [n * vfr.time_base for n in stamped] == [0, Fraction(1, 5), Fraction(233, 1000)]
    assert {vfr.durations[n] * vfr.time_base for n in stamped} == {Fraction(1, 5)}
    assert vfr.stamp(None, None) * vfr.time_base == Fraction(333, 1000)  # + 1/average rate


# ---------------------------------------------------------------- --frames-dir


def test_frames_dir_overwrite_deletes_the_earlier_runs_frames(tiny_clf, vfr_clip, short_clip,
                                                              tmp_path):  # fmt: skip
    """Before: a 2-frame run with --overwrite replaced frames 1-2 and left 3-10 of the run
    before, unsaid. Now they are deleted; a user's file of another name is left alone."""
    frames = tmp_path / "frames"
    explain_video(vfr_clip, tmp_path / "a.mp4", clf=tiny_clf, frames_dir=frames)
    assert len(list(frames.glob("frame_*.jpg"))) == len(VFR_MS)
    (frames / "frame_cover.jpg").write_bytes(b"mine")
    with pytest.raises(VideoOutputError, match="already holds 10 frame file"):
        explain_video(short_clip, tmp_path / "b.mp4", clf=tiny_clf, frames_dir=frames)
    report = explain_video(short_clip, tmp_path / "b.mp4", clf=tiny_clf, frames_dir=frames,
                           overwrite=True, layout="overlay")  # fmt: skip
    assert sorted(os.listdir(frames)) == ["frame_00001.jpg", "frame_00002.jpg", "frame_cover.jpg"]
    assert (frames / "frame_cover.jpg").read_bytes() == b"mine"
    from PIL import Image

    with Image.open(frames / "frame_00002.jpg") as img:
        assert img.size == report.size == (4 * W, 4 * H)  # under 224 px: enlarged whole


def test_frames_dir_link_at_a_frame_name_is_refused(tiny_clf, short_clip, tmp_path):
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"not yours")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame_00001.jpg").symlink_to(victim)
    with pytest.raises(OutputError, match="'frame_00001.jpg', which is a symbolic link") as info:
        explain_video(short_clip, tmp_path / "b.mp4", clf=tiny_clf, frames_dir=frames,
                      overwrite=True)  # fmt: skip
    assert "\n" not in str(info.value) and victim.read_bytes() == b"not yours"
    assert (frames / "frame_00001.jpg").is_symlink() and not (tmp_path / "b.mp4").exists()


# ---------------------------------------------------------------- where the video goes


def test_a_symlink_output_is_refused_and_its_target_kept(tiny_clf, short_clip, tmp_path, capsys):
    """Before: `-o link.mp4 --overwrite` with link.mp4 -> victim.jpg wrote the video into
    victim.jpg. A link is never written through nor replaced (a dangling one neither)."""
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"a photo")
    link = tmp_path / "link.mp4"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.mp4"
    dangling.symlink_to(tmp_path / "nothing.mp4")
    for name in (link, dangling):
        with pytest.raises(VideoOutputError, match="it is a symbolic link"):
            explain_video(short_clip, name, clf=tiny_clf, overwrite=True)
        argv = ["video", str(short_clip), "-o", str(name), "--overwrite", "-m", "no-such-model"]
        assert main(argv) == 2  # refused before the model loads
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{name}': it is a symbolic link" in err
    assert victim.read_bytes() == b"a photo" and link.is_symlink()
    assert not (tmp_path / "nothing.mp4").exists()
    assert sorted(os.listdir(tmp_path)) == ["dangling.mp4", "link.mp4", "victim.jpg"]


def test_an_output_under_a_file_says_so(tiny_clf, short_clip, tmp_path, capsys):
    """Before: "folder 'one.mp4' does not exist" when one.mp4 is a file (explain: is a file)."""
    one = tmp_path / "one.mp4"
    one.write_bytes(b"x")
    for output in (one / "x.mp4", one / "sub" / "x.mp4"):
        with pytest.raises(VideoOutputError, match=f"lies under '{one}', which is a file"):
            explain_video(short_clip, output, clf=tiny_clf)
        assert main(["video", str(short_clip), "-o", str(output)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"lies under '{one}', which is a file" in err
    with pytest.raises(OutputError, match=f"--frames-dir '{one}/fr' lies under '{one}'"):
        explain_video(short_clip, tmp_path / "o.mp4", clf=tiny_clf, frames_dir=one / "fr")
    assert one.read_bytes() == b"x" and sorted(os.listdir(tmp_path)) == ["one.mp4"]


# ---------------------------------------------------------------- Ctrl-C


def test_a_stop_before_any_frame_removes_the_frames_dir_it_made(tiny_clf, short_clip, tmp_path,
                                                                monkeypatch):  # fmt: skip
    from kerascope.cam.explain import Explainer

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Explainer, "explain_batch", stop)
    made = tmp_path / "new" / "frames"
    with pytest.raises(KeyboardInterrupt) as info:
        explain_video(short_clip, tmp_path / "o.mp4", clf=tiny_clf, frames_dir=made)
    assert info.value.frames_saved == 0 and os.listdir(tmp_path) == []
    kept = tmp_path / "mine"
    kept.mkdir()
    with pytest.raises(KeyboardInterrupt):
        explain_video(short_clip, tmp_path / "o.mp4", clf=tiny_clf, frames_dir=kept)
    assert kept.is_dir() and os.listdir(tmp_path) == ["mine"]  # not made by the run: kept


def test_a_stop_after_frames_counts_the_frame_files(tiny_clf, vfr_clip, tmp_path):
    def stop(n):
        raise KeyboardInterrupt

    frames = tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt) as info:
        explain_video(vfr_clip, tmp_path / "o.mp4", clf=tiny_clf, frames_dir=frames,
                      batch_size=2, progress=stop)  # fmt: skip
    saved = info.value.frames_saved
    assert saved > 0 and saved == len(os.listdir(frames))
    assert sorted(os.listdir(tmp_path)) == ["frames"]  # no video, no temp file


def test_the_stop_line_names_the_frames_dir_only_with_frames_in_it():
    none = interrupt_note("interrupted", 0, "intfr", 0)
    assert none == (
        "interrupted after 0 frames: no video written (a video is written whole or not at "
        "all); no frame was drawn, so none is in --frames-dir 'intfr'"
    )
    assert interrupt_note("interrupted", 4, "fr", 6) == (
        "interrupted after 6 frames drawn: no video written (a video is written whole or not "
        "at all); they are in 'fr'"
    )
    assert "frames-dir" not in interrupt_note("stopped by SIGTERM", 3, None, 0)
    # one frame is one (before: "after 1 frames", "the 1 frame(s) drawn so far are in")
    assert interrupt_note("interrupted", 1, "fr", 1) == (
        "interrupted after 1 frame drawn: no video written (a video is written whole or not at "
        "all); it is in 'fr'"
    )


def test_a_one_frame_video_says_1_frame(tiny_clf, tmp_path, capsys, tiny_cam_file):
    """Before: "wrote one.mp4: 1 frames, ..." and "already holds 1 frame file(s)"."""
    model = tiny_cam_file
    one = write_timed(tmp_path / "one.mp4", [0])
    frames = tmp_path / "frames"
    out = tmp_path / "one-out.mp4"
    argv = ["video", str(one), "-o", str(out), "-m", str(model), "--frames-dir", str(frames)]
    assert main(argv) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"wrote {out}: 1 frame, " in err
    assert not re.search(r"(?<![\d.])1 frames", err)  # (a rate of "38.1 frames/s" is fine)
    with pytest.raises(VideoOutputError, match="already holds 1 frame file; add --overwrite "
                       "to replace it, or"):  # fmt: skip
        explain_video(one, tmp_path / "again.mp4", clf=tiny_clf, frames_dir=frames)


# ---------------------------------------------------------------- labels and help


def test_frame_labels_name_the_method_as_explain_pictures_do(tiny_clf, short_clip, tmp_path,
                                                             monkeypatch):  # fmt: skip
    from kerascope.cam import overlay as ov

    labels = []
    real = ov.label_frame

    def seen(image, label, *args, **kwargs):
        labels.append(label)
        return real(image, label, *args, **kwargs)

    monkeypatch.setattr(ov, "label_frame", seen)
    explain_video(short_clip, tmp_path / "o.mp4", clf=tiny_clf, layout="overlay",
                  method="gradcam++")  # fmt: skip
    assert len(labels) == 2
    for label in labels:
        name, _, rest = label.partition(" ")
        assert name == "class" and rest.split(" ", 2)[2] == "(gradcam++)", label
    assert picture_label("Egyptian_cat", 0.7712, "gradcam") == "Egyptian cat 77.1% (gradcam)"


def test_video_help_tells_sizes_and_frame_times(capsys):
    with pytest.raises(SystemExit):
        main(["video", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "at the input size rounded down to even sides for H.264" in text
    assert "every frame keeps its input time" in text
    assert "frame_NNNNN.jpg files of an earlier run there are deleted first" in text
