"""What the user named: files, folders (walked for `IMAGE_SUFFIXES`) and globs, expanded in
order, with what could not be expanded listed instead of skipped."""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from kerascope.images.decode import IMAGE_SUFFIXES


@dataclass
class InputList:
    """What :func:`expand_inputs` found, kept apart so the CLI can report skips and typos.

    Attributes:
        paths: files to try, in a stable order.
        skipped: non-image files (by suffix) met while walking folders or glob matches.
        missing: inputs that are neither an existing file or folder nor a matching glob.
        ordered: ``(name, missing)`` for every path and missing input, in input order (folders
            and globs in their expansion order), so results can keep the user's order.
    """

    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ordered: list[tuple[str, bool]] = field(default_factory=list)


def _is_link_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> InputList:
    """Files as given, folders recursively, globs (including ``**``) expanded.

    A file named explicitly is kept whatever its suffix: the user asked for it, so it is
    tried and fails with a reason rather than vanishing. Inside folders and glob matches
    only :data:`IMAGE_SUFFIXES` and symbolic link loops (whatever their names; they fail with
    :data:`LINK_LOOP`) are kept (others go to ``skipped``) and hidden entries
    (``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are ignored. Folders are walked in
    sorted order, links to folders outside them followed (each real folder once), inputs
    keep their order, and a file reached twice is listed once. A folder that cannot be
    listed is kept as a path, so it fails with its reason instead of vanishing.
    """
    result = InputList()
    seen: set[tuple[str, bool]] = set()

    def add(path: str, to: list[str]) -> None:
        key = (os.path.normcase(os.path.abspath(path)), to is result.paths)
        if key not in seen:
            seen.add(key)
            to.append(path)
            if to is result.paths:
                result.ordered.append((path, False))

    def unlisted(error: OSError) -> None:
        if error.filename is not None:
            add(os.fspath(error.filename), result.paths)  # `file_problem` gives the reason

    def add_found(path: str) -> None:
        image = os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES
        # a link loop has no kind to judge by its name: it is tried, and says it is a loop
        add(path, result.paths if image or _is_link_loop(path) else result.skipped)

    def walk(folder: str) -> None:
        # Links to folders outside it are followed (as training's class folders are), each
        # real folder once; a link within it is not (its folder is walked by its own name,
        # and a link back up would loop). A folder that cannot be listed is tried: it says why.
        root = os.path.realpath(folder)
        visited: set[str] = set()

        def elsewhere(path: str) -> bool:
            if not os.path.islink(path):
                return True
            real = os.path.realpath(path)
            return real != root and not real.startswith(root.rstrip(os.sep) + os.sep)

        for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited:
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and elsewhere(os.path.join(dirpath, d)))  # fmt: skip
            for name in sorted(filenames):
                if not name.startswith("."):
                    add_found(os.path.join(dirpath, name))

    for item in inputs:
        raw = os.fspath(item)
        path = os.path.expanduser(raw) if raw.startswith("~") else raw
        if path and os.path.isdir(path):
            walk(path)
        elif path and (os.path.exists(path) or os.path.islink(path)):
            add(path, result.paths)  # a broken link or a loop is tried, and says which
        elif (
            path
            and any(c in path for c in "*?[")
            and (matches := sorted(glob.glob(path, recursive=True)))
        ):
            for match in matches:
                if os.path.isdir(match):
                    walk(match)
                elif os.path.isfile(match) or os.path.islink(match):
                    add_found(match)
        elif raw not in result.missing:
            result.missing.append(raw)
            result.ordered.append((raw, True))
    return result
