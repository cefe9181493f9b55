"""Rendering for the CLI: result tables, JSON, CSV, the zoo listing and progress bars.

Paths, class names and error messages come from the user's files; they are shown literally
(`literal`): never read as rich markup or emoji codes, so ``IMG_001 [edited].png`` stays itself
and a ``[/b]`` in a path cannot break a table after the work is done; control characters
(ESC, a newline, a bidi override) are shown escaped (`printable`), so a name cannot clear the
screen, retitle the window or fake a line. Files are written as UTF-8 whatever the locale;
text for the terminal is encoded by the CLI with replacement characters (see
`kerascope.cli.main`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from kerascope import files
from kerascope.classification import ImageResult


class _Console(Console):
    """A closed pipe (``| head``) reaches `kerascope.cli.main` as BrokenPipeError, like every
    other write, instead of rich's own ``exit(1)``."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


_err = _Console(stderr=True)


def clean(text: str) -> str:
    """``text`` that a UTF-8 file can hold.

    File names the OS could not decode arrive with their bytes as lone surrogates (PEP 383);
    those bytes are decoded as UTF-8 (what they almost always are), invalid ones as U+FFFD.
    """
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# Bidirectional embeddings, overrides and isolates: they reorder what follows on the line, so a
# name could show "gpj.exe" as "exe.jpg" (Unicode TR36); shown escaped like control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# C0/C1 controls (ESC starts every terminal escape sequence), and the line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def _unsafe(char: str) -> bool:
    return char in _BIDI_CONTROLS or unicodedata.category(char) in _UNSAFE_CATEGORIES


def printable(text: str, keep: str = "") -> str:
    r"""``text`` for a terminal: each control character shown as its Python escape (ESC as the
    four characters ``\x1b``, a newline as ``\n``); ordinary Unicode is kept.

    A file or class name holding ``\x1b[2J`` or ``\x1b]2;...\x07`` would otherwise clear the
    screen or retitle the window when printed. Files written with ``-o`` keep the exact text.
    ``keep``: control characters left as they are (the line ends of a multi-line text).
    """
    if not any(_unsafe(c) and c not in keep for c in text):
        return text
    return "".join(repr(c)[1:-1] if _unsafe(c) and c not in keep else c for c in text)


def printable_lines(text: str) -> str:
    """`printable` for text of several lines (a plain-text report, a picture's title): only
    the newlines stay, and a name that is not UTF-8 is `clean` (matplotlib refused it)."""
    return printable(clean(text), keep="\n")


def literal(value: object, style: str = "") -> Text:
    """User-controlled text for rich, shown as it is: no markup, no emoji codes, and control
    characters escaped (`printable`). Every table cell and note of user text goes through here.
    """
    return Text(printable(clean(str(value))), style=style)


def counted(n: int, noun: str) -> str:
    """``1 frame``, ``2 frames``: one thing said as one (lines read "1 frames", "1 images")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def percent(probability: float) -> str:
    """A probability for people, the one format of every table, label and title.

    One decimal (``38.5%``); under 0.1 % two (``0.04%``), under 0.01 % ``<0.01%``: a class the
    model gives something never reads "0.0%", the same as one it gives nothing (``0%``).
    """
    p = float(probability)
    if p != p:  # NaN
        return "n/a"
    if p >= 0.001:
        return f"{100 * p:.1f}%"
    if p >= 0.0001:
        return f"{100 * p:.2f}%"
    return "<0.01%" if p > 0 else "0%"


def note(message: str) -> None:
    """One literal line on stderr, never wrapped (a long path stays on its line)."""
    line = Text.assemble(("kerascope:", "yellow"), " ", literal(message))
    _err.print(line, soft_wrap=True, highlight=False)


# Piped or logged (stderr not a terminal): one plain line at most this often instead of a bar.
PLAIN_EVERY_S = 10.0


class Advance:
    """A progress bar's ``advance(n)``, which also counts: a stopped job says how far it got
    (``done``)."""

    def __init__(self, step: Callable[[int], None]):
        self.step, self.done = step, 0

    def __call__(self, n: int) -> None:
        self.done += n
        self.step(n)


@contextlib.contextmanager
def progress_bar(
    total: int, label: str, min_total: int = 64, unit: str = "img"
) -> Iterator[Advance]:
    """A progress bar on stderr for long jobs; yields ``advance(n)`` (an `Advance`). Silent
    for short ones. Its rate is ``unit``/s over the whole bar so far (Rich's moving estimate
    read 363 frames/s where the job did 111: work arrives in batches).

    When stderr is not a terminal (piped, a log file, CI), a bar would be escape codes, so a
    plain line says how far it got every `PLAIN_EVERY_S` seconds and at each further 10 % of
    the job: a long job is never silent, and one shorter than that prints nothing.
    """
    if not _err.is_terminal:
        with _plain_progress(total, label) as advance:
            yield Advance(advance)
        return
    if total < min_total:
        yield Advance(lambda n: None)
        return
    columns = (
        TextColumn(label.replace("{", "{{").replace("}", "}}"), markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_err, transient=True) as progress:
        task = progress.add_task(label, total=total, rate="")
        start, done = time.monotonic(), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress.advance(task, n)
            elapsed = time.monotonic() - start
            if elapsed > 0 and done:
                progress.update(task, rate=f"{done / elapsed:.1f} {unit}/s")

        yield Advance(advance)


@contextlib.contextmanager
def _plain_progress(total: int, label: str) -> Iterator:
    """`progress_bar` for a pipe: ``label: done/total, rate/s, elapsed`` lines, then one
    ``done`` line if any was printed (so a log shows the job finished). Once the job has run
    `PLAIN_EVERY_S`, a line every `PLAIN_EVERY_S` and one per 10 % step crossed: at most ~10
    more for a fast long job, and a slow one still says it is alive."""
    start = last = time.monotonic()
    done = shown = tenth = 0

    def line(now: float) -> str:
        elapsed = now - start
        rate = f", {done / elapsed:.1f}/s" if elapsed > 0 and done else ""
        return f"{label}: {done}/{total}{rate}, {elapsed:.0f} s"

    def advance(n: int) -> None:
        nonlocal done, last, shown, tenth
        done += n
        now = time.monotonic()
        step = 10 * done // total if total > 0 else 0
        due = now - last >= PLAIN_EVERY_S or step > tenth
        if done != total and now - start >= PLAIN_EVERY_S and due:  # the last: the command's
            last, shown, tenth = now, shown + 1, step
            note(line(now))

    yield advance
    if shown:
        note(line(time.monotonic()) + " (done)")


NO_LABEL = "no label over its threshold"
"""What a multi-label run's picture shows when no label reaches its threshold: every input
gets a row (the table and the CSV had none for it)."""


def _rows(results: list[ImageResult]) -> Iterator[dict]:
    for r in results:
        if r.ok and not r.predictions:  # the CSV's row for it: no class, no error
            yield {"image": clean(r.source), "rank": "", "class_id": "", "name": "",
                   "probability": "", "error": ""}  # fmt: skip
            continue
        if not r.ok:
            yield {
                "image": clean(r.source),
                "rank": "",
                "class_id": "",
                "name": "",
                "probability": "",
                "error": clean(r.error),
            }
            continue
        for p in r.predictions:
            yield {
                "image": clean(r.source),
                "rank": p.rank,
                "class_id": clean(p.class_id),
                "name": clean(p.name),
                "probability": csv_probability(p.probability),
                "error": "",
            }


def csv_probability(p: float) -> float:
    """Six significant digits: rounded to six decimals, 2.8e-07 was written as 0.0 (a class the
    model gives something, written as one it gives nothing)."""
    return float(f"{p:.6g}")


# A cell starting with one of these is run as a formula by spreadsheets (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(row: dict) -> dict:
    """``row`` with every text cell that a spreadsheet would run as a formula quoted, and
    that UTF-8 can hold (`clean`: a file name that is not UTF-8 crashed the whole write).

    Such cells (paths, class names, errors) get a leading single quote. Numbers are left as
    numbers: a negative value is data, not a formula. Shared by every CSV kerascope writes.
    """
    return {key: _spreadsheet_safe(clean(value)) if isinstance(value, str) else value
            for key, value in row.items()}  # fmt: skip


def _spreadsheet_safe(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def _short(path: str) -> str:
    """Paths under the working directory are shown relative to it; others in full."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


def _json(results: list[ImageResult]) -> str:
    """ASCII JSON (non-ASCII as \\u escapes): exact in a file and on any terminal alike."""
    data = [
        {
            "image": clean(r.source),
            "error": None if r.error is None else clean(r.error),
            "predictions": [
                {**asdict(p), "class_id": clean(p.class_id), "name": clean(p.name)}
                for p in r.predictions
            ],
        }
        for r in results
    ]
    return json.dumps(data, indent=2) + "\n"


def _csv(results: list[ImageResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["image", "rank", "class_id", "name", "probability", "error"])
    writer.writeheader()
    writer.writerows(csv_safe(row) for row in _rows(results))
    return buf.getvalue()


_WNID = re.compile(r"n\d{8}")


def _table(results: list[ImageResult], ascii_only: bool = False) -> Table:
    """The results table; ``ascii_only`` for a terminal that cannot show more (``LC_ALL=C``).

    There, every character it cannot show is a '?' before rich measures the columns, so the
    lines stay aligned, and the box is drawn with ASCII.
    """

    def cell(text: str, style: str = "") -> Text:
        text = clean(text)
        return literal(text.encode("ascii", "replace").decode() if ascii_only else text, style)

    # A trained model's class_id is its class index (0, 1, 2): under "WordNet id" that misleads,
    # so the column is there only when the model's classes have WordNet ids (ImageNet).
    wordnet = any(_WNID.fullmatch(p.class_id) for r in results for p in r.predictions)
    table = Table(show_lines=False, box=box.ASCII2 if ascii_only else box.HEAVY_HEAD)
    columns = [("image", "left"), ("#", "right"), ("WordNet id", "left"), ("class", "left"),
               ("probability", "right")]  # fmt: skip
    for col, justify in columns if wordnet else columns[:2] + columns[3:]:
        # A long path wraps onto more lines: cut with an ellipsis, two files of one folder
        # read the same ("holiday_photos_…/IMG_2024…"), the README's own chelsea included.
        table.add_column(col, justify=justify, overflow="fold" if col == "image" else "ellipsis")
    for r in results:
        if not r.ok:
            table.add_row(cell(_short(r.source)), "", *([""] if wordnet else []),
                          cell(f"error: {r.error}", "red"), "")  # fmt: skip
            continue
        if not r.predictions:  # a multi-label run's picture with no label over its threshold
            table.add_row(cell(_short(r.source)), "", *([""] if wordnet else []),
                          cell(NO_LABEL, "dim"), "")  # fmt: skip
        for place, p in enumerate(r.predictions):
            image = "" if place else cell(_short(r.source))  # rank 1 may be under its threshold
            wnid = [cell(p.class_id)] if wordnet else []
            table.add_row(image, str(p.rank), *wnid, cell(p.name), percent(p.probability))
    return table


def render(results: list[ImageResult], fmt: str, ascii_only: bool = False) -> str:
    """``results`` as JSON, CSV or a table (drawn in ASCII with ``ascii_only``)."""
    if fmt == "json":
        return _json(results)
    if fmt == "csv":
        return _csv(results)
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False).print(_table(results, ascii_only))
    return buf.getvalue()


def stdout_is_utf8() -> bool:
    """Whether the terminal (or pipe) takes UTF-8; ``LC_ALL=C`` gives ASCII."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding.startswith("utf")


def write_results(results: list[ImageResult], fmt: str, path: str | None) -> None:
    """To ``path`` atomically (the previous file stays until the new one is complete), or stdout.

    On a terminal, CSV shows control characters in names escaped (the table always does, JSON
    escapes them itself); a file or a pipe gets the exact names.
    """
    if path:
        with files.atomic_open(path, "w", newline="") as f:
            f.write(render(results, fmt))
        note(f"wrote {len(results)} result(s) to {path}")
    else:
        text = render(results, fmt, ascii_only=not stdout_is_utf8())
        if fmt == "csv" and _is_terminal(sys.stdout):  # piped CSV keeps the exact names
            text = printable(text, keep="\r\n")
        sys.stdout.write(text)


def _is_terminal(stream: object) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def print_zoo_json() -> None:
    """Every spec as JSON, without building any network (specs are plain data); the table is
    `kerascope.cli_models`'s, which says what is at each cache path."""
    from kerascope.measure import timings
    from kerascope.zoo.registry import all_specs

    measured = timings()
    rows = [_spec_dict(s, measured) for s in all_specs()]
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def _spec_dict(spec, measured: dict[str, float] | None = None) -> dict:
    from kerascope.measure import cpu_name, timings
    from kerascope.zoo.weights import cached_file, is_cached, package_file, works_offline

    data = asdict(spec)
    data["weights"]["cache_path"] = str(cached_file(spec))
    data["weights"]["cached"] = is_cached(spec)
    if spec.weights.notop is not None:
        data["weights"]["notop"]["cache_path"] = str(cached_file(spec, include_top=False))
        data["weights"]["notop"]["cached"] = is_cached(spec, include_top=False)
    pkg = package_file(spec)
    data["weights"]["package_path"] = str(pkg) if pkg else None
    data["offline"] = works_offline(spec)
    data["cpu"] = cpu_name()
    data["cpu_ms_per_image"] = (timings() if measured is None else measured).get(spec.name)
    return data


def print_spec(name: str, fmt: str = "table") -> None:
    from kerascope.zoo.registry import get

    data = _spec_dict(get(name))
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(show_header=False, title=literal(data["name"]))
    rows = [(key, str(value)) for key, value in _flat(data) if value not in (None, "", (), {})]
    for key, value in rows:
        table.add_row(key, literal(value))
    # as wide as the longest row: a URL or hash stays on one line, copied whole (it was cut
    # with an ellipsis at 120 columns); a narrower terminal wraps it softly
    widest = max(len(k) for k, _ in rows) + max(len(v) for _, v in rows) + 8
    _Console(width=max(120, widest)).print(table)


def _flat(data: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``weights.notop.filename``-style keys for nested fields, in their order."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def print_layers(name: str, rows: list, fmt: str = "table") -> None:
    """`kerascope models layers`: index (as Keras counts), name, shape, parameters, heatmap."""
    if fmt == "json":
        data = [{**asdict(r), "output_shape": list(r.output_shape)} for r in rows]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(title=literal(f"{name}: backbone layers (without top), numbered as Keras does"))
    for col in ("#", "name", "type", "output shape", "params", "heatmap"):
        table.add_column(col, justify="right" if col in ("#", "params") else "left")
    for r in rows:
        shape = "(" + ", ".join("None" if d is None else str(d) for d in r.output_shape) + ")"
        table.add_row(str(r.index), literal(r.name), literal(r.kind), shape, f"{r.params:,}",
                      "default" if r.cam_default else "")  # fmt: skip
    _Console(width=120).print(table)


def print_verify(checks: list, fmt: str = "table") -> None:
    """`kerascope models verify`: one line per weights file, OK / MISMATCH / not cached."""
    if fmt == "json":
        data = [{**asdict(c), "path": str(c.path)} for c in checks]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(title="cached weights against their published hashes")
    for col in ("model", "file", "for", "status", "detail"):
        table.add_column(col, overflow="fold")
    styles = {"OK": "green", "MISMATCH": "bold red"}
    for c in checks:
        table.add_row(literal(c.model), literal(c.path.name), c.kind,
                      literal(c.status, styles.get(c.status, "")), literal(c.detail))  # fmt: skip
    _Console(width=160).print(table)
