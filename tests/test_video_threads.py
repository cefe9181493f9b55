"""kerascope video's threads: frames are decoded and encoded while the model runs, and an
error or a Ctrl-C in any of them still ends the run whole (no file, no thread left). Tiny
clips and a tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kerascope import video_frames
from kerascope.cam.explain import Explainer
from kerascope.video import explain_video
from kerascope.video_frames import FramePipeline
from tests.test_video_output import write_timed

av = pytest.importorskip("av")


def _video_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kerascope-video")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """48 frames at 25 fps, with AAC sound."""
    return write_timed(tmp_path_factory.mktemp("threads") / "in.mp4",
                       [i * 40 for i in range(48)], audio=True)  # fmt: skip


def test_decoding_and_encoding_run_while_the_model_runs(tiny_clf, clip, tmp_path, monkeypatch):
    """Before: one thread decoded a batch, ran the model on it, then encoded the batch before:
    no frame was decoded or encoded while the model ran. Frame times, the frame count and the
    sound are as before."""
    calls, decoded, encoded = [], [], []
    explain, rgb, mux = Explainer.explain_batch, video_frames._rgb, FramePipeline._mux_video

    def slow_model(self, *args, **kwargs):
        start = time.monotonic()
        time.sleep(0.3)
        result = explain(self, *args, **kwargs)
        calls.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(Explainer, "explain_batch", slow_model)
    monkeypatch.setattr(video_frames, "_rgb", lambda f: decoded.append(time.monotonic()) or rgb(f))
    monkeypatch.setattr(FramePipeline, "_mux_video",
                        lambda s, p: encoded.append(time.monotonic()) or mux(s, p))  # fmt: skip
    out = tmp_path / "out.mp4"
    report = explain_video(clip, out, clf=tiny_clf, batch_size=4, layout="overlay")

    def during_a_call(t: float) -> bool:
        return any(start < t < end for start, end in calls)

    assert len(calls) == 12 and len(decoded) == 48 and report.frames == 48
    assert any(during_a_call(t) for t in decoded), "nothing decoded while the model ran"
    assert any(during_a_call(t) for t in encoded), "nothing encoded while the model ran"
    with av.open(str(out)) as c:
        times = [f.pts * f.time_base for f in c.decode(video=0)]
        assert [round(t * 1000) for t in times] == [i * 40 for i in range(48)]
        assert c.streams.audio[0].codec_context.name == "aac"
    assert not _video_threads()


@pytest.mark.parametrize("where", ["drawing", "encoding"])
def test_an_error_in_a_thread_is_raised_as_itself(tiny_clf, clip, tmp_path, monkeypatch, where):
    """An error while drawing (a pool thread) or encoding (the encoder thread) ends the run
    with that error, in the caller's thread, and leaves no video and no thread."""
    draw, mux = FramePipeline._draw, FramePipeline._mux_video

    def broken_draw(self, rgb, current, count):
        if count == 7:
            raise RuntimeError("drawing broke")
        return draw(self, rgb, current, count)

    def broken_mux(self, packets):
        if self.encoded == 9:
            raise RuntimeError("encoding broke")
        return mux(self, packets)

    if where == "drawing":
        monkeypatch.setattr(FramePipeline, "_draw", broken_draw)
    else:
        monkeypatch.setattr(FramePipeline, "_mux_video", broken_mux)
    frames = tmp_path / "frames"
    with pytest.raises(RuntimeError, match=f"{where} broke") as info:
        explain_video(clip, tmp_path / "out.mp4", clf=tiny_clf, batch_size=4, frames_dir=frames)
    assert info.value.frames_saved == len(os.listdir(frames)) > 0
    assert sorted(os.listdir(tmp_path)) == ["frames"]  # no video, no temp file
    assert not _video_threads()


_SLOW_CLI = """
import runpy, sys, time
from pathlib import Path
from kerascope.cam.explain import Explainer

marker, real = Path(sys.argv.pop(1)), Explainer.explain_batch

def slow(self, *args, **kwargs):
    result = real(self, *args, **kwargs)
    marker.write_text("called")
    time.sleep(0.4)
    return result

Explainer.explain_batch = slow
runpy.run_module("kerascope", run_name="__main__")
"""


@pytest.mark.slow  # a CLI process (5-10 s)
def test_ctrl_c_mid_video_writes_nothing_and_says_so(clip, tmp_path, tiny_cam_file):
    """A real SIGINT while the threads work: the run ends with the stop line and exit 130,
    leaving no video and no temporary file (the threads are ended before the file is)."""
    model = tiny_cam_file
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "started"
    command = [sys.executable, "-c", _SLOW_CLI, str(marker), "video", str(clip), "-o",
               str(out_dir / "o.mp4"), "-m", str(model), "-b", "4"]  # fmt: skip
    proc = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "video never got going"
        time.sleep(0.05)
    time.sleep(0.5)  # a batch or two on: frames drawing, encoding, decoding ahead
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted after " in err and "no video written" in err, err
    assert os.listdir(out_dir) == []


def test_the_reader_holds_its_frames_and_the_models_views_within_the_bound(clip, monkeypatch):
    """The read-ahead counts each key frame's view for the model too: the review found it
    counting the picture alone, so small frames for a large model held 9x the bound."""
    import numpy as np

    from kerascope import video_input

    class Prepared:  # what FramePipeline.prepare gives: a 224 px view for every frame
        def audio_packet(self, packet):
            pass

        def prepare(self, frame, index):
            return video_frames._rgb(frame), np.zeros((224, 224, 3), np.uint8), index, 1

    one = 224 * 224 * 3
    monkeypatch.setattr(video_input, "_PENDING_BYTES", 6 * one)
    container = av.open(str(clip))
    reader = video_input.FrameReader(container, container.streams.video[0], None, Prepared(),
                                     clip)  # fmt: skip
    try:
        time.sleep(1.5)  # the model is busy: nothing is taken
        ahead = reader.ready.qsize()
        assert 1 <= ahead <= 7 and reader.ahead.used <= 6 * one + one, (ahead, reader.ahead.used)
    finally:
        reader.stop()
        container.close()
