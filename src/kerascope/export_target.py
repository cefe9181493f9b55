"""Where `kerascope export` writes, checked before any work: a folder it can write in (probed,
not assumed), no standard output, no link to a missing folder, no file replaced without
``overwrite`` and never one the export reads; and any failed write named as the user's path.

Why before: an export works 10-40 s (three minutes for int8) before it writes; a read-only
folder was found only then, in an error naming the hidden temp file (``.x.onnx.6891-....partial``)
instead of the user's ``-o``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerascope import files
from kerascope.errors import KerascopeError


class ExportError(KerascopeError, ValueError):
    """A model that cannot be exported as asked; nothing was written. The message says why."""


def check_output(output: str | os.PathLike) -> list[Path]:
    """Refuse, before the model loads, an output no file can be written to: standard output,
    a folder, a path under a file, a link to a missing folder, a folder this process cannot
    write in. Returns the folders made for it, which a failed export removes again where it
    left them empty (`files.remove_empty`)."""
    if os.fspath(output) == "-":
        raise ExportError("export writes a model file, not standard output: name one "
                          "(-o model.onnx)")  # fmt: skip
    parent = Path(output).parent
    files.check_output_folder(parent, what="the folder of -o")
    target = files.output_target(output)  # a link's target: its folder must exist already
    if target.stream:
        return []
    made = files.missing_folders(parent)
    try:
        files.make_output_folder(parent, what="the folder of -o")
    except files.OutputError as exc:  # it named the folder as the file it could not write
        files.remove_empty(made)
        if not isinstance(exc.__context__, OSError):  # a file there meanwhile: said as such
            raise
        raise files.output_error(output, exc.__context__, folder=parent) from None
    try:
        files.probe_folder(target.path.parent, output)
    except files.OutputError:
        files.remove_empty(made)
        raise
    return made


@contextlib.contextmanager
def named_as(output: str | os.PathLike, temp: str | os.PathLike) -> Iterator[None]:
    """A failed write of ``temp`` (the hidden file beside the output) said as a failed write
    of ``output``, the name the user gave."""
    try:
        yield
    except files.OutputError as exc:
        if os.fspath(temp) not in str(exc):  # it names the user's path already
            raise
        cause = exc.__cause__
        if not isinstance(cause, OSError):
            code = getattr(exc, "errno", None)
            cause = OSError(code, os.strerror(code)) if code else exc
        raise files.output_error(output, cause) from None
    except OSError as exc:  # a rename or link that failed in `files.place_new`
        raise files.output_error(output, exc) from None


def inputs(model: Any, weights: Any, check: Any) -> list[str]:
    """The files an export reads: the model file (a run's ``model.keras`` and ``labels.json``),
    the weights, the check images."""
    found = [os.fspath(p) for p in (weights, *(check or ())) if isinstance(p, str | os.PathLike)]
    if isinstance(model, str | os.PathLike):
        path = Path(model).expanduser()
        folder = path if path.is_dir() else path.parent if path.suffix == ".keras" else None
        found.append(str(path / "model.keras" if path.is_dir() else path))
        if folder is not None:
            found.append(str(folder / "labels.json"))
    return found


def check_not_replacing(output: str | os.PathLike, sources: list[str], overwrite: bool) -> None:
    """Explain's overwrite rule, before the model loads: an existing file is replaced only with
    ``overwrite`` (before: silently), an input never (a FIFO or device is written, not
    replaced)."""
    if files.output_target(output).what != "file" or not os.path.exists(output):
        return
    same = {files.file_identity(p): p for p in sources if files.file_identity(p) is not None}
    source = same.get(files.file_identity(output))
    if source is not None:
        raise ExportError(f"the output '{output}' is the input '{source}'; inputs are never "
                          "replaced, even with --overwrite: choose another -o")  # fmt: skip
    if not overwrite:
        raise ExportError(f"'{output}' already exists; add --overwrite (overwrite=True) to "
                          "replace it, or choose another -o")  # fmt: skip
