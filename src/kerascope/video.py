"""Explain every frame of a video: decode (PyAV), heatmap in batches, draw, encode H.264.

The seed's workflow took three tools (ffmpeg to frames, a script per frame, ffmpeg back to a
video) and lost the sound and the frame rate on the way. Here one pass keeps both: frames are
re-stamped with their own timestamps, audio packets are copied through (or transcoded to AAC
when MP4 cannot hold the codec), and the result is fsynced and renamed into place only when
complete (`kerascope.files.atomic_path`): a full disk is one line and leaves no file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from kerascope.cam import fitting
from kerascope.cam import overlay as ov
from kerascope.errors import KerascopeError
from kerascope.files import atomic_path, is_disk_error, output_error
from kerascope.images import file_problem, fit_box, resize
from kerascope.images import fit as fit_picture
from kerascope.output import percent

# Audio codecs the MP4 muxer accepts as they are (checked with PyAV 18's FFmpeg, including
# opus from webm); anything else (PCM from mov/mkv/avi, vorbis, ...) is transcoded to AAC.
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_PENDING_BYTES = 256 << 20  # frames held while waiting for their heatmap batch (--every N)


class VideoError(KerascopeError):
    """A video that cannot be used, with the path and a reason a user can act on."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video '{self.path}': {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class VideoOutputError(VideoError, ValueError):
    """An output video that cannot be written where asked (the input itself, no such folder)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(path, reason)
        self.args = (f"cannot write video '{self.path}': {reason}",)

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class VideoReport:
    """What :func:`explain_video` wrote. ``size`` is the output's (width, height)."""

    frames: int
    fps: float
    size: tuple[int, int]
    seconds: float  # wall time of the whole run
    output: str
    audio_kept: bool
    frames_dir: str | None = None
    precision: str = "float32"  # what the heatmaps were computed in

    @property
    def frames_per_second(self) -> float:
        """Processing speed, for the CLI's summary line."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def default_output(input_path: str | os.PathLike) -> Path:
    """``clip.mov`` -> ``clip-output.mp4`` beside it, like the seed's ``dog-output.jpg``."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}-output.mp4")


def open_video(path: str | os.PathLike):
    """Open ``path`` with PyAV and return ``(container, video_stream)``, or raise VideoError.

    The file is checked first because FFmpeg's messages for a missing file, a folder or an
    empty file name neither the file nor the fix.
    """
    p = os.fspath(path)
    try:
        import av
    except ImportError:
        raise VideoError(p, "video support needs PyAV: pip install av") from None
    problem = file_problem(p, "a video file")
    if problem:
        raise VideoError(p, problem)
    try:
        container = av.open(p, metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise VideoError(p, "not a video file, or its header is corrupt or truncated") from None
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(p, f"cannot open ({err})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(p, "no video stream in the file (audio only?)")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.width:
        container.close()
        raise VideoError(p, "video stream has no decodable picture (unknown codec or size)")
    stream.thread_type = "AUTO"
    return container, stream


def frame_rate(stream) -> Fraction:
    """The stream's average rate, falling back to the guessed one and then 25 fps."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(25)


def estimate_frames(path: str | os.PathLike) -> int:
    """Frame count from the header (or duration x rate), for a progress bar's total; 0 if
    unknown. Headers can be off by a few frames, so use it for display only."""
    container, stream = open_video(path)
    with contextlib.closing(container):
        if stream.frames:
            return int(stream.frames)
        seconds = (stream.duration or 0) * (stream.time_base or 0)
        if not seconds and container.duration:
            seconds = container.duration / 1_000_000
        return round(float(seconds * frame_rate(stream)))


def _rgb(frame) -> np.ndarray:
    """Decode to RGB, upright: phone videos are stored sideways with a display matrix."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    rgb = np.rot90(rgb, k=quarter) if quarter else rgb
    height, width = rgb.shape[:2]  # H.264 4:2:0 needs even sides: drop one row/column
    return np.ascontiguousarray(rgb[: height - height % 2, : width - width % 2])


class _Audio:
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


class _Pipeline:
    """Frames in, heatmapped frames out: batches the model calls, draws and encodes."""

    def __init__(self, explainer, clf, options: dict, out, vstream, astream, progress):
        self.explainer, self.clf, self.opt = explainer, clf, options
        self.out, self.vstream, self.astream, self.progress = out, vstream, astream, progress
        self.ostream = None
        self.audio: _Audio | None = None
        self.audio_waiting: list = []  # packets read before the output could be opened
        self.pending: list[tuple[np.ndarray, int | None, bool]] = []
        self.keys: list[np.ndarray] = []
        self.pending_bytes = 0
        self.current: tuple[np.ndarray, str] | None = None
        self.count = 0
        self.size = (0, 0)
        self.frame_shape: tuple[int, int] | None = None
        self.box = None  # the part of each frame the model sees (`cam.fitting.Box`)

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
        elif rgb.shape[:2] != self.frame_shape:  # the size changed mid-stream: keep the first
            rgb = resize(rgb, self.frame_shape)
        key = index % self.opt["every"] == 0
        if key:
            self.keys.append(fit_picture(rgb, self.clf.input_size, self.opt["convention"]))
        self.pending.append((rgb, frame.pts, key))
        self.pending_bytes += rgb.nbytes
        if len(self.keys) >= self.opt["batch_size"] or self.pending_bytes > _PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        results = iter(())
        if self.keys:
            maps, classes, probs = self.explainer.explain_batch(
                np.stack(self.keys),
                targets=self.opt["target"],
                pad_to=self.opt["batch_size"],  # a short last batch compiles nothing new
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
        for rgb, pts, key in self.pending:
            if key:
                self.current = next(results)
            self._write(rgb, pts)
        done = len(self.pending)
        self.keys, self.pending, self.pending_bytes = [], [], 0
        if done and self.progress is not None:
            self.progress(done)

    def _write(self, rgb: np.ndarray, pts: int | None) -> None:
        heat, label = self.current
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
        self.count += 1
        if self.opt["frames_dir"] is not None:
            ov.save_jpeg(image, os.path.join(self.opt["frames_dir"], f"frame_{self.count:05d}.jpg"))
        if self.ostream is None:
            self._open_streams(image.shape[1], image.shape[0])
        self.out.mux(self.ostream.encode(self._frame(image, pts)))

    def _open_streams(self, width: int, height: int) -> None:
        # Opened at the first frame because only then is the drawn size known; the container
        # writes its header at the first mux, so audio packets wait until both streams exist.
        stream = self.out.add_stream("libx264", rate=self.opt["fps"])
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / self.opt["fps"]
        stream.options = {"crf": "20", "preset": self.opt["preset"]}
        self.ostream, self.size, self.last_pts = stream, (width, height), None
        if self.astream is not None:
            self.audio = _Audio(self.out, self.astream, self.opt["format"])
            for packet in self.audio_waiting:
                self.audio.packet(packet)
            self.audio_waiting = []

    def _frame(self, image: np.ndarray, pts: int | None):
        """Stamp on the grid of the average rate: constant-rate input keeps its exact rate
        even from a millisecond time base (mkv), variable-rate keeps its gaps to 1/fps."""
        import av

        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        fps = self.opt["fps"]
        tick = None if pts is None else round(pts * self.vstream.time_base * fps)
        if tick is None or (self.last_pts is not None and tick <= self.last_pts):
            tick = 0 if self.last_pts is None else self.last_pts + 1  # missing or out of order
        frame.pts, frame.time_base, self.last_pts = tick, 1 / fps, tick
        return frame

    def close(self) -> None:
        self.flush()
        if self.ostream is not None:
            self.out.mux(self.ostream.encode(None))
        if self.audio is not None:
            self.audio.close()


_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def explain_video(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    clf=None,
    model: str = "efficientnet_lite0",
    method: str = "gradcam",
    target: int | str | None = None,
    every: int = 1,
    layout: str = "side",
    frames_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    alpha: float = 0.4,
    colormap: str | None = None,
    progress: Callable[[int], None] | None = None,
    layer: str | None = None,
    preset: str = "veryfast",
    precision: str | None = None,
    overwrite: bool = False,
    fit: str = fitting.DEFAULT_FIT,
) -> VideoReport:
    """Write a copy of a video with each frame's class heatmap beside it (or over it).

    Args:
        input_path: any video FFmpeg reads (mp4, mov, mkv, webm, avi, ...).
        output_path: where to write; default ``<stem>-output.mp4`` beside the input. Written
            to a hidden temp file beside it, fsynced and renamed on success, so an interrupted
            run or a full disk leaves nothing under this name.
        clf: a loaded :class:`~kerascope.zoo.models.Classifier`; else ``model`` is loaded.
        method: ``cam``, ``gradcam`` or ``gradcam++`` (see `kerascope.cam.explain.Explainer`).
        target: class index or name to explain in every frame; ``None``: each frame's top-1.
        every: compute a fresh heatmap every N frames and reuse it in between (all frames
            are still written); N > 1 trades heatmap lag for speed.
        layout: ``"side"`` (original | overlay, label bar on top) or ``"overlay"`` (input size).
        frames_dir: also save each drawn frame as ``frame_00001.jpg``, ... in this folder.
        batch_size: frames per model call.
        alpha: heatmap opacity at its peak.
        progress: called with the number of frames just written, after each batch.
        preset: x264 speed preset; ``veryfast`` keeps encoding well under the model's cost.
        precision: ``auto`` (default), ``float32``, ``bfloat16``, ``float16`` (see
            `kerascope.cam.explain.Explainer`); the report says which ran.
        overwrite: replace an existing output (and frame files); the input is never replaced.
        fit: ``whole`` (default): the model sees each whole frame resized to its input;
            ``crop``: the centre crop `classify` shows it, outlined (`kerascope.cam.fitting`).

    Returns:
        A :class:`VideoReport`.

    Raises:
        VideoError: the input is missing, not a video, has no video stream or fails to decode;
            `VideoOutputError` (a VideoError) when the output is the input, exists (without
            ``overwrite``) or its folder is missing.
        kerascope.files.OutputError: the output could not be written (full disk, read-only).
    """
    from kerascope.cam.base import as_classifier
    from kerascope.cam.explain import Explainer, resolve_target
    from kerascope.cam.groups import class_or_group

    if every < 1 or batch_size < 1:
        raise ValueError(f"every and batch_size must be >= 1, got {every} and {batch_size}")
    if layout not in ("side", "overlay"):
        raise ValueError(f"layout must be 'side' or 'overlay', got {layout!r}")
    fitting.check_fit(fit)
    colormap = colormap or ov.DEFAULT_COLORMAP
    ov.colormap_lut(colormap)  # unknown names fail now, not after the model has loaded
    output = Path(output_path) if output_path is not None else default_output(input_path)
    check_output(input_path, output, overwrite)
    if frames_dir is not None:
        check_frames_dir(frames_dir, input_path, overwrite)
    fmt = _FORMATS.get(output.suffix.lower(), "mp4")
    start = time.perf_counter()
    container, vstream = open_video(input_path)
    with contextlib.closing(container):
        if clf is None:
            from kerascope.zoo.models import load_model

            clf = load_model(model)
        clf, target = class_or_group(as_classifier(clf), target)  # "cat": a WordNet group
        explainer = Explainer(clf, method=method, layer=layer, precision=precision)
        clf = explainer.clf  # a bare Keras model comes back wrapped, with labels
        if frames_dir is not None:
            os.makedirs(frames_dir, exist_ok=True)
        options = dict(
            every=every, batch_size=batch_size, alpha=alpha, colormap=colormap, layout=layout,
            frames_dir=None if frames_dir is None else os.fspath(frames_dir),
            target=None if target is None else resolve_target(clf, target),
            fps=frame_rate(vstream), format=fmt, preset=preset,
            convention=fitting.fit_convention(clf, fit),
        )  # fmt: skip
        astream = container.streams.audio[0] if container.streams.audio else None
        with atomic_path(output) as partial, _open_output(partial, fmt, output) as out:
            pipeline = _Pipeline(explainer, clf, options, out, vstream, astream, progress)
            _run(container, vstream, astream, pipeline, input_path)
    return VideoReport(
        frames=pipeline.count,
        fps=float(options["fps"]),
        size=pipeline.size,
        seconds=time.perf_counter() - start,
        output=str(output),
        audio_kept=pipeline.audio is not None,
        frames_dir=options["frames_dir"],
        precision=explainer.precision,
    )


def check_output(input_path: str | os.PathLike, output: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is the input (always), an existing file (unless
    ``overwrite``: the overwrite rule of `kerascope.cam.save`) or lies in a missing folder."""
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise VideoOutputError(
            output, f"its folder '{folder}' does not exist; create it or choose another output"
        )
    if output.exists() and os.path.samefile(output, input_path):
        raise VideoOutputError(
            output, "it is the input video; choose another name (default: <input>-output.mp4)"
        )
    if os.path.isdir(output):
        raise VideoOutputError(output, "it is a folder; name the output file (-o clip.mp4)")
    if os.path.lexists(output) and not overwrite:
        raise VideoOutputError(
            output, "it already exists; add --overwrite to replace it, or choose another -o"
        )


def check_frames_dir(frames_dir, input_path: str | os.PathLike, overwrite: bool) -> None:
    """--frames-dir: earlier ``frame_*.jpg`` files are not replaced unless ``overwrite``; the
    folder must not be a file (least of all the input)."""
    folder = Path(frames_dir)
    if folder.exists() and not folder.is_dir():
        raise VideoOutputError(folder, "--frames-dir is a file, not a folder; choose a folder")
    earlier = sorted(folder.glob("frame_*.jpg")) if folder.is_dir() else []
    if earlier and not overwrite:
        raise VideoOutputError(
            earlier[0],
            f"--frames-dir already holds {len(earlier)} frame file(s); add --overwrite to "
            "replace them, or choose another folder",
        )


@contextlib.contextmanager
def _open_output(path: Path, fmt: str, final: Path):
    """PyAV's output container; a write error (a full disk) becomes one line naming ``final``."""
    import av

    try:
        out = av.open(os.fspath(path), "w", format=fmt)
        try:
            yield out
        finally:
            out.close()
    except (av.error.FFmpegError, OSError) as exc:
        if isinstance(exc, KerascopeError):
            raise
        if is_disk_error(exc) or getattr(exc, "errno", None) is not None:
            raise output_error(final, exc) from None
        raise VideoOutputError(final, str(exc).splitlines()[0]) from None


def _run(container, vstream, astream, pipeline: _Pipeline, path) -> None:
    """Demux once; video frames go to the pipeline, audio packets straight to the output."""
    index = 0
    for packet, frame in _read(container, vstream, astream, path):
        if frame is None:
            pipeline.audio_packet(packet)
        else:
            pipeline.push(frame, index)
            index += 1
    if index == 0:
        raise VideoError(path, "no frame could be decoded (corrupt or truncated video)")
    pipeline.close()


def _read(container, vstream, astream, path):
    """Yield ``(audio_packet, None)`` or ``(None, video_frame)``; input errors -> VideoError.

    Only reading is guarded, so an encoder or disk error on the output is not blamed on
    the input file.
    """
    import av

    demux = container.demux([vstream] if astream is None else [vstream, astream])
    frames = 0
    while True:
        try:
            packet = next(demux)
            decoded = None if packet.stream is astream else packet.decode()
        except StopIteration:
            return
        except av.error.FFmpegError as err:
            raise VideoError(path, f"decode error after {frames} frames ({err})") from None
        if decoded is None:
            yield packet, None
            continue
        for frame in decoded:
            frames += 1
            yield None, frame
