"""``kerascope video``: heatmaps for every frame of a video, into a new video.

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kerascope.batch_sizes import batch_size_or_default
from kerascope.cli_common import DASH_NOTE, positive_int
from kerascope.cli_explain_args import add_explain_args, class_option
from kerascope.errors import CliError
from kerascope.interrupts import stopped_by


def add_video_command(sub) -> None:
    """Register ``video`` on the subparsers object of the main parser."""
    _add_video(sub)


def _add_video(sub) -> None:
    p = sub.add_parser(
        "video", help="heatmaps for every frame of a video, into a new video", epilog=DASH_NOTE
    )
    p.add_argument("input", help="any common video file")
    p.add_argument(
        "-o",
        "--output",
        help="output .mp4 (default: <input>-output.mp4); an existing file is not replaced "
        "unless --overwrite is given, and the input never is",
    )
    add_explain_args(p)
    p.add_argument(
        "--every",
        type=positive_int,
        default=1,
        help="fresh heatmap every N frames; no frame is skipped: the frames between show the "
        "last heatmap, and every frame keeps its input time (a variable frame rate is kept)",
    )
    p.add_argument(
        "--layout",
        choices=("side", "overlay"),
        default="side",
        help="side: original | overlay; overlay: the overlay alone, at the input size rounded "
        "down to even sides for H.264 (333x201 gives 332x200; under 224 px, first enlarged by "
        "a whole factor: 7x5 gives 224x160)",
    )
    p.add_argument(
        "--frames-dir",
        help="also write every output frame as a JPEG here (frame_00001.jpg, ...); with "
        "--overwrite, the frame_NNNNN.jpg files of an earlier run there are deleted first",
    )
    p.set_defaults(func=_run_video)


def _run_video(args) -> int:
    from kerascope import output
    from kerascope.cam.methods import check_class_choice
    from kerascope.video import (
        check_frames_dir,
        check_output,
        counted,
        default_output,
        estimate_frames,
    )
    from kerascope.zoo.models import load_model

    try:  # refused before the model loads, as explain refuses it
        check_class_choice(args.method, args.target)
    except ValueError as exc:
        raise CliError(f"--class: {exc}") from None
    _check_video_output(args.input, args.output, args.overwrite)
    total = estimate_frames(args.input)  # the input's one line, before the default output's
    check_output(args.input, Path(args.output or default_output(args.input)), args.overwrite)
    if args.frames_dir is not None:  # all refused before the model loads
        check_frames_dir(args.frames_dir, args.input, args.overwrite)
    clf = load_model(args.model, weights=args.weights)
    args.batch_size = batch_size_or_default(args.batch_size, "explain", clf.input_size)
    clf, target = class_option(clf, args.target)
    advance = output.Advance(lambda n: None)  # until the bar is up
    try:
        with output.progress_bar(total, "video frames", min_total=1, unit="frames") as advance:
            report = _explain(args, clf, target, advance)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: say what is (not) there
        saved = getattr(stop, "frames_saved", 0)
        output.note(interrupt_note(stopped_by(stop), advance.done, args.frames_dir, saved))
        stop.told = True
        raise
    audio = "audio kept" if report.audio_kept else "no audio"
    rate = f"{float(report.fps):.2f} fps"
    rate = f"variable frame rate, {rate} on average" if report.variable_rate else rate
    output.note(
        f"wrote {report.output}: {counted(report.frames, 'frame')}, {rate}, "
        f"{report.size[0]}x{report.size[1]}, {audio} ({report.frames_per_second:.1f} frames/s, "
        f"maps in {report.precision})"
    )
    if report.short:  # as a truncated image is: the job ran, one input was not whole
        output.note(f"'{args.input}': {report.short}")
        return 1
    return 0


def interrupt_note(stopped: str, done: int, frames_dir: str | None, saved: int) -> str:
    """The line a stopped run ends with, one count in it: ``done`` frames encoded or, with a
    ``frames_dir``, the ``saved`` frame files in it (drawn frames run ahead of the encoder:
    before, "after 416 frames ... the 432 frames drawn so far are in 'fr'"). With none saved
    the folder is not named as holding frames (`explain_video` removed it if it had made it)."""
    from kerascope.video import counted

    whole = "no video written (a video is written whole or not at all)"
    if frames_dir is not None and saved:
        where = "it is" if saved == 1 else "they are"
        return (
            f"{stopped} after {counted(saved, 'frame')} drawn: {whole}; {where} in '{frames_dir}'"
        )
    line = f"{stopped} after {counted(done, 'frame')}: {whole}"
    if frames_dir is None:
        return line
    return f"{line}; no frame was drawn, so none is in --frames-dir '{frames_dir}'"


def _explain(args, clf, target, progress):
    from kerascope.video import explain_video

    return explain_video(
        args.input,
        args.output,
        clf=clf,
        method=args.method,
        target=target,
        every=args.every,
        layout=args.layout,
        frames_dir=args.frames_dir,
        batch_size=args.batch_size,
        alpha=args.alpha,
        colormap=args.colormap,
        progress=progress,
        layer=args.layer,
        precision=args.precision,
        overwrite=args.overwrite,
        fit=args.fit,
    )


def _check_video_output(source: str, target: str | None, overwrite: bool = False) -> None:
    """Refuse an --output that would overwrite the input or has no folder, before any work
    (an existing file without --overwrite is `kerascope.video.check_output`'s one line)."""
    if target is None:
        return
    from kerascope.video import default_output, output_format, under_a_file

    if os.path.isdir(target):  # before its suffix: "adir" is a folder, not a wrong format
        inside = Path(target) / default_output(source).name
        raise CliError(f"--output '{target}' is a folder; name the video file to write in it "
                       f"(-o '{inside}')")  # fmt: skip
    output_format(target)  # .avi: refused before the model loads
    folder = Path(target).parent
    blocker = under_a_file(target)
    if blocker is not None:
        raise CliError(f"--output '{target}' lies under '{blocker}', which is a file, not a "
                       "folder; choose another --output")  # fmt: skip
    if not folder.is_dir():
        raise CliError(
            f"the folder of --output '{target}' does not exist ('{folder}'); "
            "create it or choose another --output"
        )
    same = Path(os.path.realpath(source)) == Path(os.path.realpath(target))
    with contextlib.suppress(OSError):
        same = same or os.path.samefile(source, target)
    if same:
        raise CliError(
            f"--output '{target}' is the input video; choose another name "
            "(default: <input>-output.mp4)"
        )
