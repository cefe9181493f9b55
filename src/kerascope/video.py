"""Explain every frame of a video: decode (PyAV), heatmap in batches, draw, encode H.264.

The seed's workflow took three tools (ffmpeg to frames, a script per frame, ffmpeg back to a
video) and lost the sound and the frame rate on the way. Here one pass keeps both: each frame
keeps its own timestamp (a variable-rate video stays variable: `video_frames.Timeline`), audio
packets are copied through (or transcoded to AAC when MP4 cannot hold the codec), and the
result is fsynced and renamed into place only when complete (`kerascope.files.atomic_path`): a
full disk is one line and leaves no file. An output name that is a symbolic link is refused:
neither the link nor the file it points to is replaced.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kerascope import interrupts
from kerascope.cam import fitting
from kerascope.cam import overlay as ov
from kerascope.errors import KerascopeError
from kerascope.files import (
    OutputError,
    atomic_path,
    check_output_folder,
    is_disk_error,
    missing_folders,
    output_error,
    remove_empty,
)
from kerascope.video_frames import (
    FramePipeline,
    frame_files,
    prepare_frames_dir,
)
from kerascope.video_input import (  # noqa: F401  (VideoError, open_video...: the API's)
    FrameReader,
    VideoError,
    counted,
    estimate_frames,
    frame_rate,
    open_video,
    promised_frames,
)


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
    header_frames: int = 0  # what the file's header promises (0: it does not say)
    variable_rate: bool = False  # frames came at varying steps (kept); ``fps`` is the average
    damage: str | None = None  # where reading fell short of the file (`video_input.Reach`)

    @property
    def short(self) -> str | None:
        """Why the video looks cut short, or None: its header promised clearly more frames than
        could be read (a truncated download demuxes to its end without an error), or reading
        or decoding ended clearly before the file does (``damage``: with frame threading FFmpeg
        drops what it cannot decode without an error). The frames read are written all the
        same; the CLI exits 1."""
        if self.damage is None and self.header_frames - self.frames > max(
            2, self.header_frames // 50
        ):
            return (f"its header promises {self.header_frames} frames but only {self.frames} "
                    "could be read: the file looks truncated")  # fmt: skip
        return self.damage  # `video_input.Reach.problem`, which makes the check above too

    @property
    def frames_per_second(self) -> float:
        """Processing speed, for the CLI's summary line."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def default_output(input_path: str | os.PathLike) -> Path:
    """``clip.mov`` -> ``clip-output.mp4`` beside it, like the seed's ``dog-output.jpg``."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}-output.mp4")


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
        every: compute a fresh heatmap every N frames and reuse it in between; N > 1 trades
            heatmap lag for speed. No frame is skipped: every input frame is written at its own
            time, those between two key frames with the last key frame's heatmap and label.
            (Each output frame keeps its input frame's timestamp, so a variable-rate video
            stays variable and in sync with its audio.)
        layout: ``"side"`` (original | overlay, label bar on top) or ``"overlay"`` (the input
            size rounded down to even sides, which H.264 needs: 333x201 gives 332x200; a
            video under 224 px is enlarged by a whole factor first, as explain's pictures are).
        frames_dir: also save each drawn frame as ``frame_00001.jpg``, ... in this folder
            (made if missing). With ``overwrite`` the ``frame_NNNNN.jpg`` files already there
            are deleted first (only regular files of that pattern), so the folder holds this
            run's frames alone; without it, any such file is refused.
        batch_size: frames per model call.
        alpha: heatmap opacity at its peak.
        progress: called with the number of frames just written, as they are (in the
            caller's thread: an exception it raises stops the run).
        preset: x264 speed preset; ``veryfast`` keeps encoding well under the model's cost.
        precision: ``auto`` (default), ``float32``, ``bfloat16``, ``float16`` (see
            `kerascope.cam.explain.Explainer`); the report says which ran.
        overwrite: replace an existing output (and frame files); the input is never replaced,
            nor a symbolic link at the output name (nor the file it points to).
        fit: ``whole`` (default): the model sees each whole frame resized to its input;
            ``crop``: the centre crop `classify` shows it, outlined (`kerascope.cam.fitting`).

    Returns:
        A :class:`VideoReport`.

    Raises:
        VideoError: the input is missing, not a video, has no video stream or fails to decode;
            `VideoOutputError` (a VideoError) when the output is the input, a symbolic link,
            exists (without ``overwrite``) or its folder is missing or lies under a file.
        kerascope.files.OutputError: the output could not be written (full disk, read-only),
            or ``frames_dir`` cannot be used.

    Whatever stops a run (an error, Ctrl-C) leaves no video; the exception carries
    ``frames_saved``, the number of frame files written into ``frames_dir``, and a
    ``frames_dir`` this run made is removed again if it holds nothing.
    """
    from kerascope.cam.base import as_classifier
    from kerascope.cam.explain import Explainer, resolve_target
    from kerascope.cam.groups import class_or_group

    if every < 1 or batch_size < 1:
        raise ValueError(f"every and batch_size must be >= 1, got {every} and {batch_size}")
    if layout not in ("side", "overlay"):
        raise ValueError(f"layout must be 'side' or 'overlay', got {layout!r}")
    fitting.check_fit(fit)
    from kerascope.cam.methods import check_class_choice

    check_class_choice(method, target)  # eigencam with a class: its map follows no class
    colormap = colormap or ov.DEFAULT_COLORMAP
    ov.colormap_lut(colormap)  # unknown names fail now, not after the model has loaded
    output = Path(output_path) if output_path is not None else default_output(input_path)
    check_output(input_path, output, overwrite)
    if frames_dir is not None:
        check_frames_dir(frames_dir, input_path, overwrite)
    fmt = output_format(output)
    start = time.perf_counter()
    made = missing_folders(frames_dir)  # made by this run: removed again if left empty
    pipeline = None
    try:
        container, vstream = open_video(input_path)
        with contextlib.closing(container):
            if clf is None:
                from kerascope.zoo.shared import shared_model

                clf = shared_model(model)
            clf, target = class_or_group(as_classifier(clf), target)  # "cat": a WordNet group
            explainer = Explainer(clf, method=method, layer=layer, precision=precision)
            clf = explainer.clf  # a bare Keras model comes back wrapped, with labels
            if frames_dir is not None:
                prepare_frames_dir(frames_dir, overwrite)
            options = dict(
                every=every, batch_size=batch_size, alpha=alpha, colormap=colormap,
                layout=layout, frames_dir=None if frames_dir is None else os.fspath(frames_dir),
                target=None if target is None else resolve_target(clf, target),
                fps=frame_rate(vstream), format=fmt, preset=preset, method=method,
                convention=fitting.fit_convention(clf, fit),
            )  # fmt: skip
            astream = container.streams.audio[0] if container.streams.audio else None
            header = promised_frames(vstream)
            with atomic_path(output) as partial, _open_output(partial, fmt, output) as out:
                pipeline = FramePipeline(explainer, clf, options, out, vstream, astream,
                                         progress)  # fmt: skip
                try:
                    damage = _run(container, vstream, astream, pipeline, input_path, header)
                finally:
                    pipeline.abort()  # an error or Ctrl-C: the draw threads end with the file
    except BaseException as exc:
        with contextlib.suppress(AttributeError, TypeError):
            exc.frames_saved = 0 if pipeline is None else pipeline.saved
        remove_empty(made)
        raise
    return VideoReport(
        frames=pipeline.count,
        fps=float(options["fps"]),
        size=pipeline.size,
        seconds=time.perf_counter() - start,
        output=str(output),
        audio_kept=pipeline.audio is not None,
        frames_dir=options["frames_dir"],
        precision=explainer.precision,
        header_frames=header,
        variable_rate=pipeline.timeline.variable,
        damage=damage,
    )


def output_format(output: str | os.PathLike) -> str:
    """The container of an output named ``output``, by its suffix; another suffix is refused
    (before: an MP4 under the name clip.avi)."""
    fmt = _FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise VideoOutputError(output, f"kerascope writes H.264 in {', '.join(_FORMATS)} files; "
                               "name the output with one of those")  # fmt: skip
    return fmt


def check_output(input_path: str | os.PathLike, output: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is the input (always), a symbolic link (always:
    kerascope replaces neither the link nor the file it points to), an existing file (unless
    ``overwrite``: the overwrite rule of `kerascope.cam.save`), or lies in a missing folder or
    under a file."""
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        blocker = under_a_file(output)
        if blocker is not None:
            raise VideoOutputError(output, f"it lies under '{blocker}', which is a file, not a "
                                   "folder; choose another output")  # fmt: skip
        raise VideoOutputError(
            output, f"its folder '{folder}' does not exist; create it or choose another output"
        )
    if output.exists() and os.path.samefile(output, input_path):
        raise VideoOutputError(
            output, "it is the input video; choose another name (default: <input>-output.mp4)"
        )
    if os.path.islink(output):
        raise VideoOutputError(
            output, "it is a symbolic link; kerascope replaces neither a link nor the file it "
            "points to: remove the link or choose another output"
        )  # fmt: skip
    if os.path.isdir(output):
        raise VideoOutputError(output, "it is a folder; name the output file (-o clip.mp4)")
    if os.path.lexists(output) and not overwrite:
        raise VideoOutputError(
            output, "it already exists; add --overwrite to replace it, or choose another -o"
        )


def under_a_file(path: str | os.PathLike) -> Path | None:
    """The nearest existing folder above ``path`` when it is not a folder (a file, a broken
    link): ``one.mp4/x.mp4`` lies under the file ``one.mp4``. None when it is a folder."""
    for part in Path(path).parents:
        if os.path.isdir(part):
            return None
        if os.path.lexists(part):
            return part
    return None


def check_frames_dir(frames_dir, input_path: str | os.PathLike, overwrite: bool) -> None:
    """--frames-dir: earlier ``frame_NNNNN.jpg`` files are not replaced unless ``overwrite``;
    one of those names that is not a regular file (a symbolic link, a folder, a FIFO) is
    refused always, as is a folder that is a file (least of all the input) or lies under one."""
    folder = Path(frames_dir)
    if folder.exists() and not folder.is_dir():
        raise VideoOutputError(folder, "--frames-dir is a file, not a folder; choose a folder")
    check_output_folder(folder, "--frames-dir")  # under a file, a broken link
    earlier = frame_files(folder)
    odd = [e for e in earlier if not e.is_file(follow_symlinks=False)]
    if odd:
        what = "a symbolic link" if odd[0].is_symlink() else "not a regular file"
        raise OutputError(
            f"--frames-dir '{folder}' holds '{odd[0].name}', which is {what}: kerascope "
            "neither writes through nor replaces it; remove it or choose another folder"
        )
    if earlier and not overwrite:
        raise VideoOutputError(
            earlier[0].path,
            f"--frames-dir already holds {counted(len(earlier), 'frame file')}; add --overwrite "
            f"to replace {'it' if len(earlier) == 1 else 'them'}, or choose another folder",
        )


@contextlib.contextmanager
def _open_output(path: Path, fmt: str, final: Path):
    """PyAV's output container; a write error (a full disk) becomes one line naming ``final``.
    Packets are interleaved by time however far video lags audio (it waits for its heatmaps and
    its drawing: FFmpeg's default gives up after 10 s and writes audio ahead)."""
    import av

    try:
        options = {"max_interleave_delta": "0"}
        out = av.open(os.fspath(path), "w", format=fmt, container_options=options)
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


def _run(container, vstream, astream, pipeline: FramePipeline, path, header: int) -> str | None:
    """Frames come prepared from a reader thread (`video_input.FrameReader`) while this thread
    runs the model; the pipeline draws and encodes in its own threads. Returns why the frames
    read fall short of the file (`video_input.Reach.problem`; ``header``: the frames the header
    promises), or None."""
    reader = FrameReader(container, vstream, astream, pipeline, path)
    try:
        for item in reader.frames():
            interrupts.check()  # a Ctrl-C swallowed by a finalizer
            pipeline.push(item)
    finally:
        reader.stop()
    if reader.count == 0:
        cause = f": {reader.reach.error}" if reader.reach.error else ""
        raise VideoError(path, f"no frame could be decoded (corrupt or truncated video{cause})")
    pipeline.close()
    return reader.reach.problem(container, 1 / frame_rate(vstream), header, reader.count)
