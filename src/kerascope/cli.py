"""The ``kerascope`` command: parse arguments, call the API, print. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence

from kerascope import __version__
from kerascope.cli_common import (
    DASH_NOTE,
    STDIN,
    HelpFormatter,
    fraction,
    kept_after_stop,
    positive_int,
    print_library_notes,
    say_precision,
    stdin_picture,
    until_interrupted,
)
from kerascope.errors import CliError, KerascopeError
from kerascope.interrupts import exit_code, interrupts_kept, stopped_by
from kerascope.precision import add_precision_option

_argv: list[str] = []  # this run's arguments, for the hint in one-line usage errors


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the bad value, instead of usage text plus an error."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        line = f"{self.prog}: error: {_one_line(message)}"
        helped = _command_parser(self) if message.startswith("unrecognized") else self
        dashed = [a for a in _argv if a.startswith("-") and len(a) > 1 and os.path.exists(a)]
        if dashed and "--" not in _argv:
            line += (
                f"; put file names that start with '-' after the options and '--': -- {dashed[0]}"
            )
        self.exit(2, f"{line} (see {helped.prog} --help)\n")


def _add_classify(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="what is in these pictures (top-k ImageNet classes)",
        description="Top-k classes of each picture, as a table, JSON or CSV. Ctrl-C keeps the "
        "results computed so far.",
        epilog=DASH_NOTE,
    )
    p.add_argument(
        "paths", nargs="+", help="image files, folders (recursive), globs; - is a picture piped in"
    )
    p.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name, run or .keras")
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument("--top", "-k", type=positive_int, default=5, help="classes per image")
    p.add_argument(
        "--threshold",
        type=fraction,
        default=0.0,
        help="hide classes below this probability; the top class (rank 1) is always shown, "
        "so an image always gets an answer, even one below the threshold",
    )
    p.add_argument(
        "--format",
        "-f",
        choices=("table", "json", "csv"),
        default=None,
        help="output format (default: from -o's .json or .csv suffix, else table)",
    )
    p.add_argument("--output", "-o", help="write to this file instead of the terminal")
    from kerascope.batch_sizes import batch_size_help

    p.add_argument("--batch-size", "-b", type=positive_int, default=None,
                   help=batch_size_help("classify"))  # fmt: skip
    p.add_argument(
        "--group",
        action="store_true",
        help="rank groups instead of classes: cat, dog, bird, car, clothing, ... (WordNet "
        "ancestors of the ImageNet classes), each the summed probability of its classes; a "
        "class in no group stands for itself",
    )
    p.add_argument(
        "--groups",
        metavar="NAMES",
        help="rank these groups only, comma-separated: any WordNet ancestor name or id of "
        "ImageNet classes (cat,dog,vehicle,n02121808)",
    )
    add_precision_option(p)
    from kerascope.tta import add_tta_options

    add_tta_options(p)
    p.set_defaults(func=_run_classify)


def _command_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The (sub-)command's parser the words of this run chose: argparse reports unrecognized
    arguments from the top parser, whose --help does not list the command's options."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((action.choices[a] for a in _argv if a in action.choices), None)
            if chosen is not None:
                return _command_parser(chosen)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, where inputs may also follow the options, as in most
    commands (``classify cat.jpg -k 1 dog.png`` was "unrecognized arguments: dog.png"): the
    words left over join the command's list of inputs when none looks like an option."""
    args, extra = parser.parse_known_args(argv)
    listed = next((a.dest for a in _command_parser(parser)._actions
                   if not a.option_strings and a.nargs in ("+", "*")), None)  # fmt: skip
    if "--" in extra:  # `a.png -k 1 -- -cat.png`: after it, names only
        cut = extra.index("--")
        before, after = extra[:cut], extra[cut + 1 :]
    else:
        before, after = extra, []
    if any(e.startswith("-") and e != "-" for e in before):
        listed = None
    extra = before + after
    if not extra or listed is None:
        return parser.parse_args(argv)  # the usage error, as argparse words it
    getattr(args, listed).extend(extra)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kerascope",
        description="Classify, explain and train image models with Keras 3 on any backend.",
        epilog=DASH_NOTE,
    )
    parser.add_argument("--version", action="version", version=f"kerascope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_classify(sub)
    from kerascope import cli_batch, cli_explain, cli_export, cli_models, cli_serve, cli_train

    cli_models.add_models_command(sub)
    cli_explain.add_explain_commands(sub)

    cli_train.add_commands(sub)
    from kerascope import cli_features  # features and augment: the data-preparing commands

    cli_features.add_commands(sub)
    cli_serve.add_serve_command(sub)
    cli_export.add_export_command(sub)
    cli_batch.add_batch_command(sub)
    from kerascope import cli_validate

    cli_validate.add_validate_command(sub)
    return parser


def _run_classify(args) -> int:
    with stdin_picture(args.paths) as (args.paths, args.piped):
        return _classify(args)


def _classify(args) -> int:
    from kerascope import output
    from kerascope.classification import called_labels, classify_sources, run_precision
    from kerascope.inference import engine_name
    from kerascope.sources import normalise_inputs
    from kerascope.zoo.models import load_model

    if args.format is None:  # -o r.json wrote a drawn table into r.json
        suffix = os.path.splitext(str(args.output or ""))[1].lower()
        args.format = {".json": "json", ".csv": "csv"}.get(suffix, "table")
    if args.output:
        from kerascope.files import check_output_file

        check_output_file(args.output)  # before the work: a bad place loses none of it
    sources, skipped, _ = normalise_inputs(args.paths)
    if skipped:
        from kerascope.images.inputs import skipped_note

        output.note(skipped_note(skipped))
    if not sources:
        raise CliError("no images found in " + " ".join(args.paths))
    if args.output:
        from kerascope.files import check_not_an_input

        check_not_an_input(args.output, sources)
    group = _group_option(args)
    from kerascope.tta import classify_tta, tta_from_args

    tta = tta_from_args(args)
    if tta is not None and group:  # before the model loads: a usage error is instant
        raise CliError("--tta does not combine with --group/--groups yet; drop one of them")
    clf = load_model(args.model, weights=args.weights)
    from kerascope.batch_sizes import batch_size_or_default

    args.batch_size = batch_size_or_default(args.batch_size, "classify", clf.input_size)
    precision = run_precision(clf, args.precision)
    say_precision(args.precision, precision, engine_name(clf.model, precision=precision))
    multilabel = clf.extra.get("multilabel")  # a multi-label run: each label over its threshold
    if multilabel:
        args.top = clf.num_classes
        output.note("multi-label run: every label at or above its threshold (tuned on "
                    "validation) is listed")  # fmt: skip
    stream = classify_sources(clf, sources, args.top, args.threshold, args.batch_size,
                              precision=precision, group=group)  # fmt: skip
    if tta is not None:
        output.note(f"probabilities are the mean of {tta.views} views per image (TTA: "
                    f"{tta.describe()})")  # fmt: skip
        stream = classify_tta(clf, sources, tta, args.top, args.threshold, args.batch_size,
                              precision)  # fmt: skip
    from kerascope.files import holds_a_file

    earlier = args.output is not None and holds_a_file(args.output)  # a stop writes beside it
    results, interrupted = until_interrupted(called_labels(clf, stream), len(sources),
                                             "classifying")  # fmt: skip
    for r in results:
        if r.source == args.piped:
            r.source = STDIN  # named as the user named it
    if interrupted:
        if not results:
            output.note(f"{stopped_by(interrupted)} before any image was classified; nothing "
                        "written")  # fmt: skip
            return exit_code(interrupted)
        args.output, line = kept_after_stop(interrupted, len(results), len(sources),
                                            args.output, earlier)  # fmt: skip
        output.note(line)
    output.write_results(results, args.format, args.output)
    failed = [r for r in results if not r.ok]
    if failed:
        output.note(f"{len(failed)} of {len(results)} input(s) could not be classified")
    return exit_code(interrupted) if interrupted else 1 if failed else 0


def _group_option(args) -> bool | list:
    """--group / --groups: the names checked before the model loads (one line if unknown)."""
    if args.groups is None:
        return bool(args.group)
    from kerascope.zoo.hierarchy import resolve_groups

    return [g.wnid for g in resolve_groups(args.groups)]


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


def _tolerant_streams() -> None:
    """Print what the terminal cannot show as '?' instead of failing after the work is done.

    Under ``LC_ALL=C`` (or ``PYTHONIOENCODING=ascii``) stdout is ASCII; a non-ASCII file name
    would otherwise raise UnicodeEncodeError while the results are printed. Files are written
    as UTF-8 regardless (`kerascope.files`).
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(errors="replace")


def _check_settings(args: argparse.Namespace) -> None:
    """Environment settings, checked before a model loads: each bad one is one line."""
    if args.command == "models":  # lists plain data, needs neither
        return
    from kerascope.config import check_backend
    from kerascope.inference import requested_engine

    check_backend()
    if getattr(args, "engine", None) is None:  # an --engine option wins over the variable
        requested_engine()
    from kerascope.images import max_pixels

    try:  # before: an error row for every image, after the model had loaded
        max_pixels()
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _quiet_stdout() -> None:
    """The reader went away (``| head``): send what is left to /dev/null, print nothing."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kerascope`` command. Returns the exit status (2 for one-line user errors).

    Anything that is not a `KerascopeError` or a file error is a bug: it keeps its traceback.
    """
    from kerascope.config import configure_cli

    global _argv
    _argv = list(sys.argv[1:] if argv is None else argv)
    _tolerant_streams()
    configure_cli()  # this process only, before Keras loads: JAX default, compile cache
    print_library_notes()
    args = _parse(build_parser(), _argv)
    try:
        _check_settings(args)
        with interrupts_kept():  # a Ctrl-C is never lost in a finalizer
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP (kerascope.interrupts)
        if not getattr(stop, "told", False):  # a job that said what it kept says no more
            print(f"kerascope: {stopped_by(stop)}", file=sys.stderr)
        return exit_code(stop)
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # what a shell reports for a command stopped by SIGPIPE
    except KerascopeError as exc:
        return _fail(str(exc))
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        return _fail(_os_error(exc))


if __name__ == "__main__":
    sys.exit(main())
