"""``kerascope explain`` and ``kerascope video``: class-activation heatmaps for pictures and videos.

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from kerascope.cli import DASH_NOTE, _fraction, _positive
from kerascope.errors import CliError


def add_explain_commands(sub) -> None:
    _add_explain(sub)
    _add_video(sub)


def _colormap(name: str) -> str:
    """A colormap the overlay knows: checked now, not after the model has loaded."""
    from kerascope.cam.overlay import COLORMAPS, colormap_lut

    try:
        colormap_lut(name)
    except ValueError:
        more = " or a matplotlib colormap (viridis, magma, turbo, ...)" if _has_matplotlib() else ""
        raise argparse.ArgumentTypeError(
            f"unknown colormap {name!r}; use one of: {', '.join(COLORMAPS)}{more}"
        ) from None
    return name


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _add_explain_args(p) -> None:
    p.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name or .keras file")
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument(
        "--method", choices=("cam", "gradcam", "gradcam++"), default="gradcam", help="CAM method"
    )
    p.add_argument("--class", dest="target", help="class to explain: name, WordNet id or index "
                   "(default: the top class)")  # fmt: skip
    p.add_argument("--layer", help="layer to explain (default: found automatically)")
    p.add_argument(
        "--alpha", type=_fraction, default=0.4, help="heatmap opacity at its peak, 0 to 1"
    )
    p.add_argument("--colormap", type=_colormap, default="jet", help="heatmap colours")
    p.add_argument("--batch-size", "-b", type=_positive, default=16, help="images per batch")


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="class-activation heatmaps, saved beside the original", epilog=DASH_NOTE
    )
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or globs")
    _add_explain_args(p)
    p.add_argument("-o", "--output", default=".", help="folder for <name>-output.jpg files")
    p.set_defaults(func=_run_explain)


def _add_video(sub) -> None:
    p = sub.add_parser(
        "video", help="heatmaps for every frame of a video, into a new video", epilog=DASH_NOTE
    )
    p.add_argument("input", help="any common video file")
    p.add_argument("-o", "--output", help="output .mp4 (default: <input>-output.mp4)")
    _add_explain_args(p)
    p.add_argument("--every", type=_positive, default=1, help="fresh heatmap every N frames")
    p.add_argument(
        "--layout",
        choices=("side", "overlay"),
        default="side",
        help="side: original | overlay; overlay: the overlay alone, at the input size",
    )
    p.add_argument("--frames-dir", help="also write every output frame as a JPEG here")
    p.set_defaults(func=_run_video)


def _target(clf, query: str | None) -> int | None:
    """--class as an output index; an unknown class is a one-line error."""
    from kerascope.cam.explain import resolve_target

    if query is None:
        return None
    try:
        return resolve_target(clf, query)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _run_explain(args) -> int:
    from kerascope import output
    from kerascope.cam.save import save_explanations
    from kerascope.inference import normalise_inputs
    from kerascope.zoo.models import load_model

    sources, skipped, _ = normalise_inputs(args.paths)
    if skipped:
        output.note(f"skipped {len(skipped)} non-image file(s): {', '.join(skipped[:5])}")
    if not sources:
        raise CliError("no images found in " + " ".join(args.paths))
    clf = load_model(args.model, weights=args.weights)
    target = _target(clf, args.target)
    with output.progress_bar(len(sources), "explaining", min_total=16) as advance:
        saved = save_explanations(
            sources, args.output, clf, args.method, target, args.layer,
            args.batch_size, args.alpha, args.colormap, progress=advance,
        )  # fmt: skip
    output.print_explanations(saved)
    failed = sum(1 for s in saved if not s.ok)
    if failed:
        output.note(f"{failed} of {len(saved)} input(s) could not be explained")
    return 1 if failed else 0


def _run_video(args) -> int:
    from kerascope import output
    from kerascope.video import estimate_frames, explain_video
    from kerascope.zoo.models import load_model

    _check_video_output(args.input, args.output)
    total = estimate_frames(args.input)
    clf = load_model(args.model, weights=args.weights)
    target = _target(clf, args.target)
    with output.progress_bar(total, "video frames", min_total=1) as advance:
        report = explain_video(
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
            progress=advance,
            layer=args.layer,
        )
    audio = "audio kept" if report.audio_kept else "no audio"
    output.note(
        f"wrote {report.output}: {report.frames} frames, {float(report.fps):.2f} fps, "
        f"{report.size[0]}x{report.size[1]}, {audio} ({report.frames_per_second:.1f} frames/s)"
    )
    return 0


def _check_video_output(source: str, target: str | None) -> None:
    """Refuse an --output that would overwrite the input or has no folder, before any work."""
    if target is None:
        return
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
