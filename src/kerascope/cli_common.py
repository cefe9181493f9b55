"""Argument helpers shared by the ``kerascope`` commands (cli.py and the cli_* modules).

They live below every cli module so that a command module never imports from cli.py, which
imports the command modules to build its parser (see DESIGN.md, "Import direction").
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from kerascope.errors import CliError
from kerascope.precision import ran_in, slower_here

STDIN = "-"

DASH_NOTE = (
    "A file name that starts with '-' goes after '--', which ends the options: "
    "kerascope classify -k 3 -- -cat.png"
)


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless it has none (None, an off switch; by
    identity: a default of 0 is shown) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action) or ""


class HelpFormatter(DefaultsHelp, argparse.RawDescriptionHelpFormatter):
    """`DefaultsHelp`, with descriptions kept as written (their examples and tables)."""


def fraction(text: str) -> float:
    """A number from 0 to 1 (--alpha, --threshold)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (--top, --batch-size, --every)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def say_precision(asked: str | None, precision: str, engine: str | None = None) -> None:
    """Print `kerascope.precision.ran_in` on stderr when the precision was asked for or is not
    float32, or the engine is OpenVINO (set, or picked by a measurement on this CPU); a plain
    CPU run on onnxruntime stays quiet: nothing new to report. Here, not in precision.py, since
    printing is the command's business and precision sits below `output`."""
    if asked is not None or precision != "float32" or engine == "openvino":
        from kerascope.output import note

        note(ran_in(precision, engine))
        if slower := slower_here(precision, engine):
            note(slower)


class _NoteHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from kerascope.output import note

        note(record.getMessage())


def print_library_notes() -> None:
    """Show what the library reports through `logging` (``kerascope.*`` loggers, warnings and
    up: the zoo porting damaged weights again, a with-top file loaded without top) as one
    ``kerascope:`` line each on stderr. The library says what happened; the command prints it."""
    logger = logging.getLogger("kerascope")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler(logging.WARNING))


@contextlib.contextmanager
def stdin_picture(paths: list[str]) -> Iterator[tuple[list[str], str | None]]:
    """``-`` among the inputs is one picture piped in (``curl -s URL | kerascope classify -``):
    its bytes go to a private temporary file, so it decodes and fails exactly as a file does.
    Yields the inputs with ``-`` replaced by that file, and the file (None without ``-``)."""
    if STDIN not in paths:
        yield paths, None
        return
    if paths.count(STDIN) > 1:
        raise CliError("'-' (one picture from standard input) can be named once")
    if sys.stdin is None or sys.stdin.isatty():
        state = "closed" if sys.stdin is None else "a terminal"
        raise CliError(
            f"'-' reads one picture from standard input, which is {state}: pipe one in "
            "(curl -s URL | kerascope classify -); a file named '-' is ./-"
        )
    with tempfile.TemporaryDirectory(prefix="kerascope-stdin-") as folder:
        piped = os.path.join(folder, "stdin")
        with open(piped, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out)
        yield [piped if p == STDIN else p for p in paths], piped


def until_interrupted(stream: Iterator, total: int, label: str) -> tuple[list, Any]:
    """Everything ``stream`` yields, with a progress bar; Ctrl-C (or SIGTERM, SIGHUP) keeps
    what came so far, and is returned with it (classify's results, predict's rows)."""
    from kerascope import output

    done: list = []
    try:
        with output.progress_bar(total, label) as advance:
            for item in stream:
                done.append(item)
                advance(1)
    except KeyboardInterrupt as stop:
        return done, stop
    return done, None


def kept_after_stop(stop: BaseException, done: int, total: int, target: Any,
                    earlier: bool) -> tuple[Any, str]:  # fmt: skip
    """Where a stopped job writes the ``done`` results it kept, and the line saying so: beside
    an output file that was there before (``earlier``: `files.holds_a_file`), never over it."""
    from kerascope.files import fresh_path
    from kerascope.interrupts import stopped_by

    partial = fresh_path(target) if earlier else target
    shown = ("the output" if target is None else "standard output" if str(target) == "-"
             else f"'{partial}'")  # fmt: skip
    kept = "that one" if done == 1 else f"those {done}"
    line = f"{stopped_by(stop)} after {done} of {total} images; {shown} holds {kept} only"
    return partial, line + (f" ('{target}' is kept as it was)" if earlier else "")
