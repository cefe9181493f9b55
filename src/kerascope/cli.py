"""The ``kerascope`` command: parse arguments, call the API, print. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kerascope import __version__


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


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


def _add_augment(sub) -> None:
    p = sub.add_parser("augment", help="preview the training augmentation on one image")
    p.add_argument("image", help="the picture to augment")
    p.add_argument("-n", type=int, default=20, help="number of samples (default 20)")
    p.add_argument("-o", "--output", default="preview", help="folder to write into")
    p.add_argument("--seed", type=int, default=0)
    for flag, default in (
        ("rotation", 40.0),
        ("width-shift", 0.2),
        ("height-shift", 0.2),
        ("shear", 0.2),
        ("zoom", 0.2),
    ):
        p.add_argument(f"--{flag}", type=float, default=default)
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.set_defaults(func=_run_augment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerascope",
        description="Classify, explain and train image models with Keras 3 on any backend.",
    )
    parser.add_argument("--version", action="version", version=f"kerascope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_classify(sub)
    _add_models(sub)
    _add_augment(sub)
    return parser


def _run_classify(args) -> int:
    from kerascope import output
    from kerascope.predict import classify_sources, normalise_inputs
    from kerascope.zoo.models import load_model

    if args.top < 1:
        raise CliError("--top must be at least 1")
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    sources, skipped, missing = normalise_inputs(args.paths)
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        output.note(f"skipped {len(skipped)} non-image file(s): {shown}")
    if not sources and not missing:
        raise CliError("no images found in " + " ".join(args.paths))
    clf = load_model(args.model, weights=args.weights)
    results = output.missing_results(missing)
    with output.progress_bar(len(sources), "classifying") as advance:
        results += list(
            classify_sources(clf, sources, args.top, args.threshold, args.batch_size, advance)
        )
    output.write_results(results, args.format, args.output)
    failed = [r for r in results if not r.ok]
    if failed:
        output.note(f"{len(failed)} of {len(results)} input(s) could not be classified")
        return 1
    return 0


def _run_augment(args) -> int:
    from kerascope import output
    from kerascope.data.augment import AugmentConfig, augment_preview
    from kerascope.images import load_image

    if args.n < 1:
        raise CliError("-n must be at least 1")
    load_image(args.image)  # a bad picture fails here with a one-line reason
    config = AugmentConfig(
        rotation=args.rotation,
        width_shift=args.width_shift,
        height_shift=args.height_shift,
        shear=args.shear,
        zoom=args.zoom,
        horizontal_flip=not args.no_flip,
    )
    paths = augment_preview(
        args.image, n=args.n, out_dir=args.output, config=config, seed=args.seed
    )
    output.note(f"wrote {len(paths) - 1} samples and {paths[-1]}")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kerascope.errors import user_errors

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("kerascope: interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"kerascope: error: {exc}", file=sys.stderr)
        return 2
    except user_errors() as exc:
        print(f"kerascope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
