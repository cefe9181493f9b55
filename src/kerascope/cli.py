"""The ``kerascope`` command: parse arguments, call the API, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kerascope import __version__
from kerascope.errors import CliError, KerascopeError


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="what is in these pictures (top-k ImageNet classes)")
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or globs")
    p.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name or .keras file")
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument("--top", "-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--threshold", type=float, default=0.0, help="hide classes below this")
    p.add_argument("--format", "-f", choices=("table", "json", "csv"), default="table")
    p.add_argument("--output", "-o", help="write to this file instead of the terminal")
    p.add_argument("--batch-size", "-b", type=int, default=32)
    p.set_defaults(func=_run_classify)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo, or `models show NAME`")
    p.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    p.add_argument("name", nargs="?", help="model to show")
    p.add_argument("--format", "-f", choices=("table", "json"), default="table")
    p.set_defaults(func=_run_models)


def _add_explain_args(p) -> None:
    p.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name or .keras file")
    p.add_argument("--method", choices=("cam", "gradcam", "gradcam++"), default="gradcam")
    p.add_argument("--class", dest="target", help="class to explain: name, WordNet id or index")
    p.add_argument("--layer", help="layer to explain (default: found automatically)")
    p.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity at its peak")
    p.add_argument("--colormap", default="jet")
    p.add_argument("--batch-size", "-b", type=int, default=16)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="class-activation heatmaps, saved beside the original")
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or globs")
    _add_explain_args(p)
    p.add_argument("-o", "--output", default=".", help="folder for <name>-output.jpg files")
    p.set_defaults(func=_run_explain)


def _add_video(sub) -> None:
    p = sub.add_parser("video", help="heatmaps for every frame of a video, into a new video")
    p.add_argument("input", help="any common video file")
    p.add_argument("-o", "--output", help="output .mp4 (default: <input>-output.mp4)")
    _add_explain_args(p)
    p.add_argument("--every", type=int, default=1, help="fresh heatmap every N frames")
    p.add_argument("--layout", choices=("side", "overlay"), default="side")
    p.add_argument("--frames-dir", help="also write every output frame as a JPEG here")
    p.set_defaults(func=_run_video)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerascope",
        description="Classify, explain and train image models with Keras 3 on any backend.",
    )
    parser.add_argument("--version", action="version", version=f"kerascope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_classify(sub)
    _add_models(sub)
    _add_explain(sub)
    _add_video(sub)
    from kerascope import cli_train

    cli_train.add_commands(sub)
    return parser


def _run_classify(args) -> int:
    from kerascope import output
    from kerascope.classification import classify_sources
    from kerascope.inference import normalise_inputs
    from kerascope.zoo.models import load_model

    if args.top < 1:
        raise CliError("--top must be at least 1")
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    sources, skipped, _ = normalise_inputs(args.paths)
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        output.note(f"skipped {len(skipped)} non-image file(s): {shown}")
    if not sources:
        raise CliError("no images found in " + " ".join(args.paths))
    clf = load_model(args.model, weights=args.weights)
    with output.progress_bar(len(sources), "classifying") as advance:
        results = list(
            classify_sources(clf, sources, args.top, args.threshold, args.batch_size, advance)
        )
    output.write_results(results, args.format, args.output)
    failed = [r for r in results if not r.ok]
    if failed:
        output.note(f"{len(failed)} of {len(results)} input(s) could not be classified")
        return 1
    return 0


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
    clf = load_model(args.model)
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

    if args.every < 1:
        raise CliError("--every must be at least 1")
    total = estimate_frames(args.input)
    clf = load_model(args.model)
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


def _run_models(args) -> int:
    from kerascope import output

    if args.action == "show":
        if not args.name:
            raise CliError("usage: kerascope models show NAME")
        output.print_spec(args.name, args.format)
    else:
        output.print_zoo(args.format)
    return 0


def _one_line(text: str) -> str:
    """User-controlled text as it is, but on one line (control characters escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _os_error(exc: OSError) -> str:
    """``No such file or directory: 'x'`` without the ``[Errno 2]``; the message if no path."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    text = f"{exc.strerror}: '{exc.filename}'"
    return text + (f" -> '{exc.filename2}'" if exc.filename2 is not None else "")


def _fail(message: str) -> int:
    print(f"kerascope: error: {_one_line(message)}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from kerascope.config import configure_cli

    configure_cli()  # this process only, before Keras loads: JAX default, compile cache
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("kerascope: interrupted", file=sys.stderr)
        return 130
    except KerascopeError as exc:
        return _fail(str(exc))
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        return _fail(_os_error(exc))


if __name__ == "__main__":
    sys.exit(main())
