"""A video's frames in, its explained frames out (`kerascope.video.explain_video`'s pipeline).

The model sees the key frames in batches; each frame is then drawn (heatmap, outline, label)
in a pool of threads (Pillow and NumPy work mostly outside the GIL) while this thread decodes
the next frames, runs the next batch and encodes the frames drawn before, in order: H.264
encoding and muxing stay in one thread, beside the audio packets.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from kerascope.cam import fitting
from kerascope.cam import overlay as ov
from kerascope.images import fit as fit_picture
from kerascope.images import fit_box, resize
from kerascope.output import percent
from kerascope.sources import decode_workers

# Audio codecs the MP4 muxer accepts as they are (checked with PyAV 18's FFmpeg, including
# opus from webm); anything else (PCM from mov/mkv/avi, vorbis, ...) is transcoded to AAC.
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_PENDING_BYTES = 256 << 20  # frames held waiting for their heatmap batch (--every N) or drawing
DRAW_THREADS = 4  # at most (and no more than `sources.decode_workers`)


def _rgb(frame) -> np.ndarray:
    """Decode to RGB, upright: phone videos are stored sideways with a display matrix."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    rgb = np.rot90(rgb, k=quarter) if quarter else rgb
    height, width = rgb.shape[:2]  # H.264 4:2:0 needs even sides: drop one row/column
    return np.ascontiguousarray(rgb[: height - height % 2, : width - width % 2])


class Audio:
    """Copies the input's first audio track into the output, transcoding only if needed."""

    def __init__(self, out, stream, container_format: str):
        self.out = out
        codec = stream.codec_context.codec.canonical_name  # "mp3", not the decoder "mp3float"
        self.remux = codec in MP4_AUDIO or container_format != "mp4"
        if self.remux:
            self.stream = out.add_stream_from_template(stream)
        else:
            rate = stream.sample_rate if stream.sample_rate in _AAC_RATES else 48000
            self.stream = out.add_stream("aac", rate=rate)
            # By channel count: a demuxed layout may be "unspecified order", which AAC refuses.
            self.stream.layout = "mono" if stream.channels == 1 else "stereo"

    def packet(self, packet) -> None:
        if self.remux:
            if packet.dts is not None:  # the demuxer's flush packets carry nothing
                packet.stream = self.stream
                self.out.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None  # the encoder's resampler re-times at its own rate
            self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        if not self.remux:
            self.out.mux(self.stream.encode(None))


class FramePipeline:
    """Frames in, heatmapped frames out: batches the model calls, draws (in a thread pool)
    and encodes (in this thread, in order). ``close`` (or ``abort``) ends it."""

    def __init__(self, explainer, clf, options: dict, out, vstream, astream, progress):
        self.explainer, self.clf, self.opt = explainer, clf, options
        self.out, self.vstream, self.astream, self.progress = out, vstream, astream, progress
        self.ostream = None
        self.audio: Audio | None = None
        self.audio_waiting: list = []  # packets read before the output could be opened
        self.pending: list[tuple[np.ndarray, int | None, bool]] = []
        self.keys: list[np.ndarray] = []
        self.pending_bytes = 0
        self.current: tuple[np.ndarray, str] | None = None
        self.count = 0  # frames drawn (submitted to the pool)
        self.size = (0, 0)
        self.frame_shape: tuple[int, int] | None = None
        self.box = None  # the part of each frame the model sees (`cam.fitting.Box`)
        self.batch = int(options["batch_size"])  # key frames per model call (set by the first)
        threads = min(DRAW_THREADS, decode_workers())
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="kerascope-video-draw")
        # (drawing, pts, bytes held): frames in the pool count against the same bound
        self.drawn: collections.deque[tuple[Future, int | None, int]] = collections.deque()
        self.drawn_bytes = 0

    def audio_packet(self, packet) -> None:
        if self.audio is None:
            self.audio_waiting.append(packet)
        else:
            self.audio.packet(packet)

    def push(self, frame, index: int) -> None:
        rgb = _rgb(frame)
        if self.frame_shape is None:
            self.frame_shape = rgb.shape[:2]
            shown = fit_box(rgb.shape, self.clf.input_size, self.opt["convention"])
            self.box = fitting.as_fractions(shown, rgb.shape)
            # As many key frames as the held frames' bound lets wait, so a call is never
            # mostly padding (1080p at --every 1: 41 frames fit, not the GPU default 128).
            held = max(1, _PENDING_BYTES // (rgb.nbytes * self.opt["every"]))
            self.batch = max(1, min(self.opt["batch_size"], held))
        elif rgb.shape[:2] != self.frame_shape:  # the size changed mid-stream: keep the first
            rgb = resize(rgb, self.frame_shape)
        key = index % self.opt["every"] == 0
        if key:
            self.keys.append(fit_picture(rgb, self.clf.input_size, self.opt["convention"]))
        self.pending.append((rgb, frame.pts, key))
        self.pending_bytes += rgb.nbytes
        if len(self.keys) >= self.batch or self.pending_bytes > _PENDING_BYTES:
            self.flush()
        else:
            self._encode(keep=len(self.drawn))  # what is drawn already (and the bound)

    def flush(self) -> None:
        """Explain the key frames held, hand every held frame to the draw pool, then encode
        what was drawn before: all but this batch (so the pool draws it meanwhile)."""
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
                name = self.clf.labels[int(c)][1].replace("_", " ")  # Keras: "Egyptian_cat"
                labels.append(f"{name} {percent(p)}")
            results = zip(np.asarray(maps), labels, strict=True)
        batch = len(self.pending)
        for rgb, pts, key in self.pending:
            if key:
                self.current = next(results)
            self.count += 1
            drawing = self.pool.submit(self._draw, rgb, self.current, self.count)
            self.drawn.append((drawing, pts, rgb.nbytes))
            self.drawn_bytes += rgb.nbytes
        self.keys, self.pending, self.pending_bytes = [], [], 0
        self._encode(keep=batch)

    def _encode(self, keep: int = 0) -> None:
        """Encode drawn frames in order: those drawn already, then, waiting for them, more
        until at most ``keep`` are left in the pool and the frames held fit the bound."""
        done = 0
        while self.drawn:
            drawing, pts, held = self.drawn[0]
            over = self.pending_bytes + self.drawn_bytes > _PENDING_BYTES
            if len(self.drawn) <= keep and not over and not drawing.done():
                break
            self.drawn.popleft()
            self.drawn_bytes -= held
            frame = drawing.result()
            if self.ostream is None:
                self._open_streams(frame.width, frame.height)
            self.out.mux(self.ostream.encode(self._stamp(frame, pts)))
            done += 1
        if done and self.progress is not None:
            self.progress(done)

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
            ov.save_jpeg(image, os.path.join(self.opt["frames_dir"], f"frame_{count:05d}.jpg"))
        return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")

    def _open_streams(self, width: int, height: int) -> None:
        # Opened at the first frame because only then is the drawn size known; the container
        # writes its header at the first mux, so audio packets wait until both streams exist.
        stream = self.out.add_stream("libx264", rate=self.opt["fps"])
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / self.opt["fps"]
        stream.options = {"crf": "20", "preset": self.opt["preset"]}
        self.ostream, self.size, self.last_pts = stream, (width, height), None
        if self.astream is not None:
            self.audio = Audio(self.out, self.astream, self.opt["format"])
            for packet in self.audio_waiting:
                self.audio.packet(packet)
            self.audio_waiting = []

    def _stamp(self, frame, pts: int | None):
        """Stamp on the grid of the average rate: constant-rate input keeps its exact rate
        even from a millisecond time base (mkv), variable-rate keeps its gaps to 1/fps."""
        fps = self.opt["fps"]
        tick = None if pts is None else round(pts * self.vstream.time_base * fps)
        if tick is None or (self.last_pts is not None and tick <= self.last_pts):
            tick = 0 if self.last_pts is None else self.last_pts + 1  # missing or out of order
        frame.pts, frame.time_base, self.last_pts = tick, 1 / fps, tick
        return frame

    def close(self) -> None:
        """Every frame explained, drawn and encoded; the encoders flushed; the pool ended."""
        try:
            self.flush()
            self._encode()
            if self.ostream is not None:
                self.out.mux(self.ostream.encode(None))
            if self.audio is not None:
                self.audio.close()
        finally:
            self.abort()

    def abort(self) -> None:
        """End the pool without drawing what is queued (an error or Ctrl-C: no file is kept)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.drawn.clear()
        self.drawn_bytes = 0
