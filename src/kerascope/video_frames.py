"""A video's frames in, its explained frames out (`kerascope.video.explain_video`'s pipeline).

Four stages overlap, so that the model (the slow one) never waits for the others: a reader thread
decodes and prepares the next frames (`kerascope.video_input.FrameReader`), the caller's thread runs
the model on batches of key frames, a pool of threads draws each frame (Pillow and NumPy work mostly
outside the GIL), and one encoder thread encodes them in order (H.264 and muxing stay in one thread,
beside the audio). `kerascope video` on a 10 s 640x360 clip, Lite0 on 2 busy cores: 26 -> 30
frames/s (medians of 9 runs), a run then lasting the model's calls plus the last batch's drawing.
Each frame keeps its input time (`Timeline`). Also here: the --frames-dir names, and its rules
(`prepare_frames_dir`).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from kerascope.cam import fitting
from kerascope.cam import overlay as ov
from kerascope.cam.enlarge import enlarge
from kerascope.cam.save import OUTPUT_MIN_SIDE, picture_label
from kerascope.files import output_error
from kerascope.images import fit as fit_picture
from kerascope.images import fit_box, resize
from kerascope.sources import decode_workers

# Audio codecs the MP4 muxer accepts as they are (checked with PyAV 18's FFmpeg, including
# opus from webm); anything else (PCM from mov/mkv/avi, vorbis, ...) is transcoded to AAC.
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_PENDING_BYTES = 256 << 20  # frames held waiting for their heatmap batch (--every N) or drawing
DRAW_THREADS = 4  # at most (and no more than `sources.decode_workers`)
FRAME_NAME = "frame_{:05d}.jpg"  # --frames-dir: frame_00001.jpg, ...; see `is_frame_name`
_FRAME_NAME = re.compile(r"frame_[0-9]{5,}\.jpg\Z")


def frame_name(count: int) -> str:
    """The --frames-dir file name of output frame ``count`` (from 1)."""
    return FRAME_NAME.format(count)


def is_frame_name(name: str) -> bool:
    """Whether ``name`` is one `frame_name` gives: only those are counted, replaced or
    removed in a --frames-dir (a ``frame_cover.jpg`` of the user's is left alone)."""
    return _FRAME_NAME.match(name) is not None


def frame_files(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` named as frames are (`is_frame_name`), sorted by name."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if is_frame_name(e.name)), key=lambda e: e.name)


def prepare_frames_dir(frames_dir, overwrite: bool) -> None:
    """Make ``frames_dir``; with ``overwrite``, delete the frame files of an earlier run there
    (regular files named ``frame_NNNNN.jpg`` only), so none is left beside this run's (before:
    a 1-frame run left frames 2-30 of a 30-frame one)."""
    try:
        os.makedirs(frames_dir, exist_ok=True)
    except OSError as exc:
        raise output_error(frames_dir, exc) from None
    if not overwrite:
        return
    for entry in frame_files(Path(frames_dir)):
        if entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise output_error(entry.path, exc) from None


def _rgb(frame) -> np.ndarray:
    """Decode to RGB, upright: phone videos are stored sideways with a display matrix."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.rot90(rgb, k=quarter) if quarter else rgb


def _drawn(rgb: np.ndarray) -> np.ndarray:
    """The frame as drawn: one under `cam.save.OUTPUT_MIN_SIDE` enlarged by a whole factor
    (whole pixels), as explain's pictures are, so its label is legible (before: a 7x5 video
    gave 12x24 frames, mostly label bar; a 1x1 one crashed); then even sides, which H.264 4:2:0
    needs (one row or column dropped)."""
    rgb = enlarge(rgb, OUTPUT_MIN_SIDE)
    height, width = rgb.shape[:2]
    return np.ascontiguousarray(rgb[: height - height % 2, : width - width % 2])


def remuxed(stream, container_format: str) -> bool:
    """Whether the input's audio goes into the output as it is (else decoded, then AAC)."""
    codec = stream.codec_context.codec.canonical_name  # "mp3", not the decoder "mp3float"
    return codec in MP4_AUDIO or container_format != "mp4"


class Audio:
    """The input's first audio track in the output: its packets copied or, when `remuxed`
    says no, its decoded frames encoded to AAC."""

    def __init__(self, out, stream, remux: bool):
        self.out, self.remux = out, remux
        if self.remux:
            self.stream = out.add_stream_from_template(stream)
        else:
            rate = stream.sample_rate if stream.sample_rate in _AAC_RATES else 48000
            self.stream = out.add_stream("aac", rate=rate)
            # By channel count: a demuxed layout may be "unspecified order", which AAC refuses.
            self.stream.layout = "mono" if stream.channels == 1 else "stereo"
            self.next_sample: int | None = None  # the next decoded sample's time, in samples

    def add(self, item) -> None:
        """Mux a packet (remuxing) or encode a decoded frame (transcoding)."""
        if self.remux:
            item.stream = self.stream
            self.out.mux(item)
        else:
            self._retime(item)
            self.out.mux(self.stream.encode(item))

    def _retime(self, frame) -> None:
        """Time each decoded frame by the samples before it, from the first frame's input
        time: the encoder then knows where the sound starts and puts its priming (1024
        samples) before it, which MP4's edit list cuts (before: frames went in untimed, so the
        priming played as sound and the audio ran 23 ms late and long). The input's own times
        are rounded (mkv: to the millisecond), so only a forward jump of more than one input
        tick is taken from them: a gap in the sound stays a gap."""
        rate = frame.sample_rate
        at = None
        if frame.pts is not None and frame.time_base:
            at = round(frame.pts * frame.time_base * rate)
        if self.next_sample is None:
            self.next_sample = at or 0
        elif at is not None and at > self.next_sample + math.ceil(frame.time_base * rate):
            self.next_sample = at
        frame.pts, frame.time_base = self.next_sample, Fraction(1, rate)
        self.next_sample += frame.samples

    def close(self) -> None:
        if not self.remux:
            self.out.mux(self.stream.encode(None))


class Timeline:
    """Output timestamps: each frame keeps its input frame's time, so a variable-rate video
    stays variable and its audio stays in sync (before: every frame was put on a 1/fps grid, a
    200 ms gap became one of 1/fps and the picture ran ahead of the sound).

    A time within half an input tick of the stream's frame-rate grid (``r_frame_rate``,
    counted from the first frame) is put exactly on it, so constant-rate video from a
    millisecond time base (mkv: 0, 83, 167 ms) keeps its exact rate; the output's time base
    holds both (``time_base``). A frame without a time, or one not after the one before, gets
    the one before plus 1/``rate`` (the average rate). ``durations`` holds each frame's
    duration by output pts, for its packet: the last frame lasts as long as the input's (the
    video's length is kept; the muxer guessed 1/rate).
    """

    def __init__(self, stream, rate: Fraction):
        self.tick = Fraction(stream.time_base or Fraction(1, 90000))  # the input's time base
        self.step = 1 / Fraction(rate)
        self.grid = Fraction(stream.base_rate or rate)
        den = math.lcm(self.tick.denominator, self.grid.numerator)
        self.time_base = Fraction(1, den if den < 2**31 else self.tick.denominator)
        self.start: Fraction | None = None
        self.last: int | None = None  # output pts of the frame before
        self.steps: tuple[int, int] | None = None  # smallest, largest step between frames
        self.durations: dict[int, int] = {}

    def stamp(self, pts: int | None, duration: int | None) -> int:
        """The output pts (in ``time_base``) of the next frame, given its input pts and
        duration (in the input's time base; 0 or None: not known)."""
        when = None
        length = duration * self.tick if duration else self.step
        if pts is not None:
            when = pts * self.tick
            self.start = when if self.start is None else self.start
            on_grid = self.start + round((when - self.start) * self.grid) / self.grid
            if abs(on_grid - when) <= self.tick / 2:
                when = on_grid
                if abs(length - 1 / self.grid) <= self.tick:  # 83 ms at 12 fps: 1/12 s
                    length = 1 / self.grid
        out = None if when is None else round(when / self.time_base)
        if out is None or (self.last is not None and out <= self.last):
            out = 0 if self.last is None else self.last + max(1, round(self.step / self.time_base))
        if self.last is not None:
            gap = out - self.last
            low, high = self.steps or (gap, gap)
            self.steps = (min(low, gap), max(high, gap))
        self.last = out
        self.durations[out] = max(1, round(length / self.time_base))
        return out

    @property
    def variable(self) -> bool:
        """Whether the steps between frames differ by more than an input tick and 5 %: a
        variable-rate video (a screen recording, a phone's), for the summary line."""
        if self.steps is None:
            return False
        low, high = (n * self.time_base for n in self.steps)
        return high - low > max(self.tick, low / 20)


class Budget:
    """Bytes of frames held between threads: `take` waits while others hold too many (never
    while none is held, so a frame larger than the bound still passes); `wake` ends the waits
    (a stop, a failure), which then look at their ``stop`` again."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.changed = threading.Condition()

    def wait(self, room: int, stop: Callable[[], bool]) -> None:
        """Wait until at most ``room`` bytes are held (or none is, or ``stop()``)."""
        with self.changed:
            while self.used and self.used > room and not stop():
                self.changed.wait(0.1)

    def take(self, n: int, stop: Callable[[], bool]) -> None:
        """Hold ``n`` more bytes, once they fit under the limit."""
        with self.changed:
            self.wait(self.limit - n, stop)
            self.used += n

    def give(self, n: int) -> None:
        """Hold ``n`` fewer bytes (negative: more, without waiting)."""
        with self.changed:
            self.used -= n
            self.changed.notify_all()

    def wake(self) -> None:
        self.give(0)


class FramePipeline:
    """Frames in, heatmapped frames out. A reader thread `prepare`s each frame (RGB, the model's
    view, its time: `kerascope.video_input.FrameReader`), this thread runs the model on batches
    of key frames (`push`, `flush`), a pool of threads draws and one encoder thread encodes and
    muxes, in order, with the audio: the model never waits for decoding or encoding. Frames held
    between the model and the muxer stay under `_PENDING_BYTES`. ``close`` (or ``abort``) ends
    it; an error in a thread is raised here."""

    def __init__(self, explainer, clf, options: dict, out, vstream, astream, progress):
        self.explainer, self.clf, self.opt = explainer, clf, options
        self.out, self.vstream, self.astream, self.progress = out, vstream, astream, progress
        self.remux_audio = astream is not None and remuxed(astream, options["format"])
        self.ostream = None
        self.audio: Audio | None = None
        self.audio_waiting: list = []  # audio read before the output could be opened
        self.pending: list[tuple[np.ndarray, np.ndarray | None, int, int]] = []
        self.keys: list[np.ndarray] = []
        self.pending_bytes = 0
        self.current: tuple[np.ndarray, str] | None = None
        self.count = 0  # frames drawn (submitted to the pool)
        self.encoded = self.reported = 0  # frames encoded; of those, told to ``progress``
        self.saved = 0  # frame_*.jpg files written (--frames-dir)
        self.saved_lock = threading.Lock()
        self.timeline = Timeline(vstream, options["fps"])
        self.size = (0, 0)
        self.frame_shape: tuple[int, int] | None = None
        self.box = None  # the part of each frame the model sees (`cam.fitting.Box`)
        self.batch = int(options["batch_size"])  # key frames per model call (set by the first)
        threads = min(DRAW_THREADS, decode_workers())
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="kerascope-video-draw")
        self.drawn = Budget(_PENDING_BYTES)  # bytes drawing or waiting for the encoder
        self.lengths: dict[int, int] = {}  # output pts -> duration, for the encoder's packets
        self.failure: BaseException | None = None  # what ended the encoder thread
        self.stopping = threading.Event()
        self.to_encode: queue.SimpleQueue = queue.SimpleQueue()
        self.encoder = threading.Thread(target=self._encoding, name="kerascope-video-encode",
                                        daemon=True)  # fmt: skip
        self.encoder.start()

    def audio_packet(self, packet) -> None:
        """(The reader thread.) The packet, or its frames decoded, to the encoder thread."""
        if self.remux_audio:
            items = [packet] if packet.dts is not None else []  # flush packets carry nothing
        else:
            items = packet.decode()
        for item in items:
            self.to_encode.put(("audio", item))

    def prepare(self, frame, index: int) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """(The reader thread.) ``(rgb, what the model sees or None, output pts, duration)``
        of input frame ``index``; the model sees every ``every``-th frame."""
        upright = _rgb(frame)
        rgb = _drawn(upright)
        # The model sees a tiny frame as it is (a still's decode is not enlarged either).
        seen = upright if max(upright.shape[:2]) < OUTPUT_MIN_SIDE else rgb
        if self.frame_shape is None:
            self.frame_shape = rgb.shape[:2]
            shown = fit_box(seen.shape, self.clf.input_size, self.opt["convention"])
            self.box = fitting.as_fractions(shown, seen.shape)
            # As many key frames as the held frames' bound lets wait, so a call is never
            # mostly padding (1080p at --every 1: 41 frames fit, not the GPU default 128).
            held = max(1, _PENDING_BYTES // (rgb.nbytes * self.opt["every"]))
            self.batch = max(1, min(self.opt["batch_size"], held))
        elif rgb.shape[:2] != self.frame_shape:  # the size changed mid-stream: keep the first
            rgb = resize(rgb, self.frame_shape)
        key = None
        if index % self.opt["every"] == 0:
            key = fit_picture(seen, self.clf.input_size, self.opt["convention"])
        pts = self.timeline.stamp(frame.pts, getattr(frame, "duration", None))
        return rgb, key, pts, self.timeline.durations.pop(pts)

    def push(self, item: tuple[np.ndarray, np.ndarray | None, int, int]) -> None:
        """Hold a prepared frame; explain the batch once enough key frames are held."""
        self._raise_failure()
        if item[1] is not None:
            self.keys.append(item[1])
        self.pending.append(item)
        self.pending_bytes += item[0].nbytes
        if len(self.keys) >= self.batch or self.pending_bytes > _PENDING_BYTES:
            self.flush()
        self._wait_for_room()

    def flush(self) -> None:
        """Explain the key frames held and hand every held frame to the draw pool and, in
        order, to the encoder thread."""
        results = iter(())
        if self.keys:
            maps, classes, probs = self.explainer.explain_batch(
                np.stack(self.keys),
                targets=self.opt["target"],
                pad_to=self.batch,  # one shape per video: a short last batch compiles nothing
                upsample=self.explainer.on_device,
                levels=True,  # uint8 heat levels: what the frames draw, a quarter of the bytes
            )
            probs = np.asarray(probs)
            labels = []
            for i, c in enumerate(np.asarray(classes).reshape(-1)):
                p = probs[i, c] if probs.ndim == 2 else probs[i]
                name = self.clf.labels[int(c)][1]  # Keras: "Egyptian_cat"
                labels.append(picture_label(name, p, self.opt["method"]))
            results = zip(np.asarray(maps), labels, strict=True)
        for rgb, key, pts, length in self.pending:
            if key is not None:
                self.current = next(results)
            self.count += 1
            self.drawn.give(-rgb.nbytes)  # held here already: moved, not waited for
            drawing = self.pool.submit(self._draw, rgb, self.current, self.count)
            self.to_encode.put(("video", (drawing, pts, length, rgb.nbytes)))
        self.keys, self.pending, self.pending_bytes = [], [], 0
        self._raise_failure()
        self._report()

    def _wait_for_room(self) -> None:
        """Wait while the frames held here and those not yet encoded pass the bound (as
        long as any is not encoded: they are what frees room), telling ``progress``."""
        self.drawn.wait(_PENDING_BYTES - self.pending_bytes, self._ended)
        self._raise_failure()
        self._report()

    def _ended(self) -> bool:
        return self.failure is not None or self.stopping.is_set()

    def _raise_failure(self) -> None:
        if self.failure is not None and not self.stopping.is_set():
            raise self.failure

    def _report(self) -> None:
        done = self.encoded - self.reported
        if done and self.progress is not None:
            self.reported += done
            self.progress(done)

    def _encoding(self) -> None:
        """(The encoder thread.) Encode drawn frames and audio in the order given; at the end
        flush the encoders. Stops at ``stopping``; an error is kept for `_raise_failure`."""
        try:
            while not self.stopping.is_set():
                kind, item = self.to_encode.get()
                if kind == "end":
                    if self.ostream is not None:
                        self._mux_video(self.ostream.encode(None))
                    if self.audio is not None:
                        self.audio.close()
                    return
                if kind == "audio":
                    if self.audio is None:
                        self.audio_waiting.append(item)
                    else:
                        self.audio.add(item)
                elif kind == "video":
                    drawing, pts, length, held = item
                    frame = drawing.result()
                    if self.ostream is None:
                        self._open_streams(frame.width, frame.height)
                    frame.pts, frame.time_base = pts, self.timeline.time_base
                    self.lengths[pts] = length
                    self._mux_video(self.ostream.encode(frame))
                    self.encoded += 1
                    self.drawn.give(held)
        except BaseException as exc:  # noqa: BLE001 - raised again in the model's thread
            self.failure = exc
        finally:
            self.drawn.wake()

    def _draw(self, rgb: np.ndarray, current: tuple[np.ndarray, str], count: int):
        """One frame as written (in a pool thread): the heatmap over it, outlined where the
        model saw a part, labelled; also saved as ``frame_{count}.jpg`` with --frames-dir.
        Returned as the encoder's YUV 4:2:0 `av.VideoFrame`: converted here, not by the
        encoder in the thread that encodes (2.7 ms per 1280x386 frame)."""
        import av

        heat, label = current
        label = fitting.with_caption(ov.mark_empty(label, heat), self.box, rgb.shape)
        heat = fitting.place(heat, self.box, rgb.shape)
        blended = ov.overlay(rgb, heat, self.opt["alpha"], self.opt["colormap"])
        if fitting.is_part(self.box, rgb.shape):
            kept = fitting.photo_outside(Image.fromarray(blended), Image.fromarray(rgb), self.box)
            blended = np.asarray(fitting.draw_outline(kept, self.box))
        if self.opt["layout"] == "side":
            image = ov.side_by_side(rgb, blended, label)
        else:
            image = ov.label_frame(blended, label)
        if self.opt["frames_dir"] is not None:
            ov.save_jpeg(image, os.path.join(self.opt["frames_dir"], frame_name(count)))
            with self.saved_lock:
                self.saved += 1
        return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")

    def _open_streams(self, width: int, height: int) -> None:
        # Opened at the first frame because only then is the drawn size known; the container
        # writes its header at the first mux, so audio packets wait until both streams exist.
        stream = self.out.add_stream("libx264", rate=self.opt["fps"])
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = self.timeline.time_base  # the input's times, kept
        stream.options = {"crf": "20", "preset": self.opt["preset"]}
        self.ostream, self.size = stream, (width, height)
        if self.astream is not None:
            self.audio = Audio(self.out, self.astream, self.remux_audio)
            for item in self.audio_waiting:
                self.audio.add(item)
            self.audio_waiting = []

    def _mux_video(self, packets) -> None:
        """Mux encoded frames, each lasting as long as its input frame (`Timeline`): the
        encoder leaves durations unset, so the muxer guessed 1/rate for the last frame."""
        for packet in packets:
            length = self.lengths.pop(packet.pts, 0)
            if length and not packet.duration:
                packet.duration = length
            self.out.mux(packet)

    def close(self) -> None:
        """Every frame explained, drawn and encoded; the encoders flushed; the threads ended."""
        try:
            self.flush()
            self.to_encode.put(("end", None))
            while self.encoder.is_alive():
                self.encoder.join(0.1)
                self._report()
            self._raise_failure()
            self._report()
        finally:
            self.abort()

    def abort(self) -> None:
        """End the threads without drawing or encoding what is queued (an error, Ctrl-C: no
        file is kept). Returns once the encoder thread has ended, so the file can be closed."""
        self.stopping.set()
        self.to_encode.put(("stop", None))
        self.pool.shutdown(wait=False, cancel_futures=True)
        while self.encoder.is_alive():  # at most the frame it is encoding
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: still wait
                self.encoder.join()
        while True:  # the frames being drawn (--frames-dir: their files are counted after)
            with contextlib.suppress(KeyboardInterrupt):
                self.pool.shutdown(wait=True)
                break
