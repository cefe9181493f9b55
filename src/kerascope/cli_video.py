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
    p.add_argument("--every", type=positive_int, default=1, help="fresh heatmap every N frames")
    p.add_argument(
        "--layout",
        choices=("side", "overlay"),
        default="side",
        help="side: original | overlay; overlay: the overlay alone, at the input size",
    )
    p.add_argument("--frames-dir", help="also write every output frame as a JPEG here")
    p.set_defaults(func=_run_video)


def _run_video(args) -> int:
    from kerascope import output
    from kerascope.video import estimate_frames
    from kerascope.zoo.models import load_model

    _check_video_output(args.input, args.output, args.overwrite)
    total = estimate_frames(args.input)
    clf = load_model(args.model, weights=args.weights)
    args.batch_size = batch_size_or_default(args.batch_size, "explain", clf.input_size)
    clf, target = class_option(clf, args.target)
    advance = output.Advance(lambda n: None)  # until the bar is up
    try:
        with output.progress_bar(total, "video frames", min_total=1) as advance:
            report = _explain(args, clf, target, advance)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: say what is (not) there
        frames = f"; frames drawn so far are in '{args.frames_dir}'" if args.frames_dir else ""
        output.note(f"{stopped_by(stop)} after {advance.done} frames: no video written (a video is "
                    f"written whole or not at all){frames}")  # fmt: skip
        stop.told = True
        raise
    audio = "audio kept" if report.audio_kept else "no audio"
    output.note(
        f"wrote {report.output}: {report.frames} frames, {float(report.fps):.2f} fps, "
        f"{report.size[0]}x{report.size[1]}, {audio} ({report.frames_per_second:.1f} frames/s, "
        f"maps in {report.precision})"
    )
    if report.short:  # as a truncated image is: the job ran, one input was not whole
        output.note(f"'{args.input}': {report.short}")
        return 1
    return 0


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
    from kerascope.video import output_format

    output_format(target)  # .avi: refused before the model loads
    folder = Path(target).parent
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
