"""Where explanation pictures go, and the overwrite rule of every command that writes pictures
or videos: an existing file is never replaced unless ``overwrite`` is given, and an input of the
job never, even then. Everything is checked before any work (one line naming the file), and
each picture is published without replacing anything that appeared since (a hard link of the
finished temp file: atomic, and it fails if the name was taken). Names are unique within a job
by construction (`output_names`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from kerascope.errors import KerascopeError
from kerascope.files import file_identity, fsync_dir, input_files, output_error, temp_name
from kerascope.sources import Source


class OutputExistsError(KerascopeError, FileExistsError):
    """An output that would replace an existing file (without ``overwrite``) or an input.

    Its message names the API's arguments (``overwrite=True``, ``output_dir``); ``cli`` is the
    same in the command line's words (``--overwrite``, ``-o``), which `kerascope explain`
    prints (before, one line named both: "add --overwrite (overwrite=True)")."""

    def __init__(self, message: str, cli: str | None = None):
        super().__init__(message)
        self.cli = message if cli is None else cli

    def __reduce__(self):  # from a worker process: both wordings
        return (type(self), (str(self), self.cli))


def output_names(sources: Sequence[Source]) -> list[str | None]:
    """One unique relative name per source (None for a missing input), so no output of a run
    overwrites another: ``<stem>-output.jpg`` for a file, ``image-<index>-output.jpg`` for the
    index-th in-memory image.

    The rule: a file keeps its folder relative to the deepest folder holding every file
    input (``a/pic.jpg b/pic.png`` -> ``a/pic-output.jpg``, ``b/pic-output.jpg``; one folder
    of inputs -> plain ``<stem>-output.jpg``); files that still meet on one name (``pic.jpg``
    and ``pic.png`` side by side) keep their extension (``pic.png-output.jpg``); anything
    else that meets gets ``-2``, ``-3``. String work only (no `pathlib` per file): the main
    thread names every file of a job before the first batch runs.
    """
    from kerascope.sources import Missing

    names: list[str | None] = [f"image-{i}-output.jpg" for i in range(len(sources))]
    files = {i: os.path.abspath(s) for i, s in enumerate(sources)
             if isinstance(s, str | os.PathLike) and not isinstance(s, Missing)}  # fmt: skip
    root = os.path.commonpath([os.path.dirname(p) for p in files.values()]) if files else ""
    relative = {i: _relative(p, root) for i, p in files.items()}
    for i, s in enumerate(sources):
        if isinstance(s, Missing):
            names[i] = None
        elif i in relative:
            folder, name = os.path.split(relative[i])
            names[i] = os.path.join(folder, f"{PurePath(name).stem}-output.jpg")
    clash = Counter(n.lower() for n in names if n is not None)  # case-insensitive disks too
    for i, rel in relative.items():
        if clash[names[i].lower()] > 1:
            names[i] = f"{rel}-output.jpg"
    return _numbered(names)


def without_earlier_outputs(sources: list[Source], out_dir: str | os.PathLike) -> tuple[list, int]:
    """``sources`` less the pictures an earlier run wrote into ``out_dir`` (``*-output.jpg``
    under it), and how many were left out: ``explain photos -o photos`` run twice took its
    first run's pictures as inputs, and refused itself even with --overwrite."""
    from kerascope.sources import Missing

    folder = os.path.abspath(out_dir) + os.sep
    kept = [s for s in sources
            if not (isinstance(s, str | os.PathLike) and not isinstance(s, Missing)
                    and os.fspath(s).endswith("-output.jpg")
                    and os.path.abspath(s).startswith(folder))]  # fmt: skip
    return kept, len(sources) - len(kept)


def _relative(path: str, root: str) -> str:
    """``path`` (absolute, normalised) relative to ``root``, a folder above it; never absolute
    (``//a/x.jpg`` keeps its two slashes through abspath, which commonpath drops)."""
    prefix = root.rstrip(os.sep) + os.sep
    rel = path[len(prefix) :] if path.startswith(prefix) else ""
    return rel if rel and not os.path.isabs(rel) else os.path.relpath(path, root)


def _numbered(names: list[str | None]) -> list[str | None]:
    """Make the last clashes (case-insensitive file systems included) unique with a counter."""
    seen: set[str] = set()
    out: list[str | None] = []
    for name in names:
        if name is not None:
            base, n = name, 1
            while name.lower() in seen:
                n += 1
                name = base.removesuffix("-output.jpg") + f"-{n}-output.jpg"
            seen.add(name.lower())
        out.append(name)
    return out


def check_output_folder(out_dir: str | os.PathLike, sources: Sequence[Source] = ()) -> None:
    """``-o`` must be a folder (or a new name): a file there is one line, not a traceback."""
    from kerascope.images import IMAGE_SUFFIXES

    if not os.path.lexists(out_dir) and Path(out_dir).suffix.lower() in IMAGE_SUFFIXES:
        raise OutputExistsError(  # before: a folder named single.png, the picture inside it
            f"-o '{out_dir}' looks like a picture's name, but -o names the folder the "
            "<name>-output.jpg pictures go to: choose a folder name"
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        which = (
            " (it is one of the inputs)" if file_identity(out_dir) in input_files(sources) else ""
        )
        raise OutputExistsError(
            f"the output folder '{out_dir}' is a file{which}; -o names the folder the "
            "<name>-output.jpg pictures go to: choose a folder"
        )
    from kerascope.files import check_output_folder as any_output_folder

    any_output_folder(out_dir)  # a link loop, a path under a file: the rule of every -o folder


def check_outputs(
    paths: Sequence[Path | None], sources: Sequence[Source], overwrite: bool = False
) -> None:
    """Refuse, before any work, outputs that would replace an input (always) or an existing
    file (unless ``overwrite``): the overwrite rule of the module docstring."""
    inputs = input_files(sources)
    taken = []
    for path in paths:
        if path is None or not os.path.lexists(path):
            continue
        source = inputs.get(file_identity(path))
        if source is not None:
            said = f"the output '{path}' is the input '{source}'; inputs are never replaced, even"
            raise OutputExistsError(
                f"{said} with overwrite=True: choose another output_dir",
                cli=f"{said} with --overwrite: choose another output folder (-o)",
            )
        if os.path.isdir(path):
            said = f"the output '{path}' is a folder; choose another"
            raise OutputExistsError(f"{said} output_dir", cli=f"{said} -o")
        taken.append(path)
    if taken and not overwrite:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        said = f"'{taken[0]}' already exists{more};"
        raise OutputExistsError(
            f"{said} pass overwrite=True to replace existing pictures, or choose another "
            "output_dir",
            cli=f"{said} add --overwrite to replace existing pictures, or choose another output "
            "folder (-o)",
        )


def write_new_jpeg(array: np.ndarray | Image.Image, path: str | os.PathLike, quality: int = 90):
    """`write_jpeg` that never replaces: the name must still be free when it is published."""
    return write_jpeg(array, path, quality, replace=False)


def write_jpeg(
    array: np.ndarray | Image.Image,
    path: str | os.PathLike,
    quality: int = 90,
    replace: bool = True,
    sync_folder: bool = True,
) -> Path:
    """Write a JPEG atomically: encoded to a temp file beside ``path``, synced, then published.

    ``replace`` False: published with a hard link, which fails if the name was taken meanwhile
    (the file there is kept: `OutputExistsError`); where the file system has no hard links, the
    name is checked and the temp file renamed (a small window, as any rename). ``replace``
    True: renamed over ``path``. ``sync_folder`` False leaves the folder's sync (which makes
    the new name durable) to the caller, once for many pictures: a crash may then lose a
    picture, never leave half of one.
    """
    path = Path(path)
    tmp = temp_name(path)
    if not isinstance(array, Image.Image):
        array = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    renamed = False
    try:
        with open(tmp, "xb") as fh:
            array.save(fh, "JPEG", quality=quality)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            renamed = True  # no temp file left, so no failing unlink (with the GIL held)
        else:
            _link(tmp, path)
        if sync_folder:
            fsync_dir(path.parent)
    except OSError as exc:
        if isinstance(exc, KerascopeError):
            raise
        raise output_error(path, exc) from exc
    finally:
        if not renamed:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return path


def _link(tmp: Path, path: Path) -> None:
    """Publish ``tmp`` under ``path`` only if nothing is there (module docstring)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        said = f"'{path}' appeared while the job ran; it was kept"
        raise OutputExistsError(
            f"{said} (pass overwrite=True to replace it, or choose another output_dir)",
            cli=f"{said} (add --overwrite to replace it, or choose another output folder: -o)",
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise OutputExistsError(f"'{path}' appeared while the job ran; it was kept") from None
        os.replace(tmp, path)
