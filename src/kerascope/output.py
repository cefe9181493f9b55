"""Rendering for the CLI: result tables, JSON, CSV, the zoo listing and progress bars."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kerascope.classification import ImageResult

_err = Console(stderr=True)


def note(message: str) -> None:
    _err.print(f"[yellow]kerascope:[/] {message}", highlight=False)


@contextlib.contextmanager
def progress_bar(total: int, label: str, min_total: int = 64) -> Iterator:
    """A progress bar on stderr for long jobs; yields ``advance(n)``. Silent for short ones."""
    if total < min_total or not _err.is_terminal:
        yield lambda n: None
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_err, transient=True) as progress:
        task = progress.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            speed = progress.tasks[0].speed
            if speed:
                progress.update(task, rate=f"{speed:.1f} img/s")

        yield advance


def _rows(results: list[ImageResult]) -> Iterator[dict]:
    for r in results:
        if not r.ok:
            yield {
                "image": r.source,
                "rank": "",
                "class_id": "",
                "name": "",
                "probability": "",
                "error": r.error,
            }
            continue
        for p in r.predictions:
            yield {
                "image": r.source,
                "rank": p.rank,
                "class_id": p.class_id,
                "name": p.name,
                "probability": round(p.probability, 6),
                "error": "",
            }


# A cell starting with one of these is run as a formula by spreadsheets (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(row: dict) -> dict:
    """``row`` with every text cell that a spreadsheet would run as a formula quoted.

    Such cells (paths, class names, errors) get a leading single quote. Numbers are left as
    numbers: a negative value is data, not a formula. Shared by every CSV kerascope writes.
    """
    return {
        key: "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value
        for key, value in row.items()
    }


def _short(path: str) -> str:
    """Paths under the working directory are shown relative to it; others in full."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:
        return path


def render(results: list[ImageResult], fmt: str) -> str:
    if fmt == "json":
        data = [
            {"image": r.source, "error": r.error, "predictions": [asdict(p) for p in r.predictions]}
            for r in results
        ]
        return json.dumps(data, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["image", "rank", "class_id", "name", "probability", "error"])
        writer.writeheader()
        writer.writerows(csv_safe(row) for row in _rows(results))
        return buf.getvalue()
    table = Table(show_lines=False)
    for col, justify in (
        ("image", "left"),
        ("#", "right"),
        ("WordNet id", "left"),
        ("class", "left"),
        ("probability", "right"),
    ):
        table.add_column(col, justify=justify)
    for r in results:
        if not r.ok:
            table.add_row(_short(r.source), "", "", f"[red]error: {r.error}[/]", "")
            continue
        for p in r.predictions:
            image = _short(r.source) if p.rank == 1 else ""
            table.add_row(image, str(p.rank), p.class_id, p.name, f"{p.probability:.4f}")
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False).print(table)
    return buf.getvalue()


def write_results(results: list[ImageResult], fmt: str, path: str | None) -> None:
    text = render(results, fmt)
    if path:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        note(f"wrote {len(results)} result(s) to {path}")
    else:
        sys.stdout.write(text)


def print_zoo(fmt: str = "table") -> None:
    """List every spec without building any network (specs are plain data)."""
    from kerascope.zoo.registry import all_specs
    from kerascope.zoo.weights import is_cached, works_offline

    specs = all_specs()
    if fmt == "json":
        rows = [_spec_dict(s) for s in specs]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="kerascope model zoo")
    for col in ("name", "input", "params", "top-1", "top-5", "size MB", "offline", "cached"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for s in specs:
        table.add_row(
            s.name,
            f"{s.input_size}px",
            f"{s.params / 1e6:.1f}M",
            f"{s.top1:.1%}" if s.top1 else "-",
            f"{s.top5:.1%}" if s.top5 else "-",
            f"{s.size_mb:g}",
            "yes" if works_offline(s) else "no",
            "yes" if is_cached(s) else "no",
        )
    Console(width=120).print(table)


def _spec_dict(spec) -> dict:
    from kerascope.zoo.weights import cached_file, is_cached, package_file, works_offline

    data = asdict(spec)
    data["weights"]["cache_path"] = str(cached_file(spec))
    data["weights"]["cached"] = is_cached(spec)
    pkg = package_file(spec)
    data["weights"]["package_path"] = str(pkg) if pkg else None
    data["offline"] = works_offline(spec)
    return data


def print_spec(name: str, fmt: str = "table") -> None:
    from kerascope.zoo.registry import get

    data = _spec_dict(get(name))
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(show_header=False, title=data["name"])
    for key, value in data.items():
        if key == "weights":
            for wk, wv in value.items():
                if wv is not None:
                    table.add_row(f"weights.{wk}", str(wv))
        elif value not in (None, "", (), {}):
            table.add_row(key, str(value))
    Console(width=120).print(table)


def print_explanations(saved: list) -> None:
    """One line per `SavedExplanation`: the class explained and the picture written, or why not."""
    table = Table()
    table.add_column("image", overflow="fold")
    for col in ("class", "probability", "written to"):
        table.add_column(col, overflow="fold")
    for s in saved:
        if not s.ok:
            table.add_row(_short(s.source), f"[red]error: {s.error}[/]", "", "")
        else:
            e = s.explanation
            table.add_row(
                _short(s.source), e.class_name, f"{e.probability:.4f}", _short(str(s.path))
            )
    Console(width=120).print(table)
