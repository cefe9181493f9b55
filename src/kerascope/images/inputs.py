"""What the user named: files, folders (walked for `IMAGE_SUFFIXES`) and globs, expanded in
order, with what could not be expanded listed instead of skipped, and each folder link that
leads back into a folder it is inside (a directory loop) listed with where it points.

Every folder walk of classify, predict, explain, evaluate, validate, train, export's --check and
batch goes through here.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kerascope.images.decode import IMAGE_SUFFIXES

SHOWN = 5
"""How many paths a note names before ``...``."""


@dataclass
class InputList:
    """What :func:`expand_inputs` found, kept apart so commands can report skips and typos.

    Attributes:
        paths: files to try, in a stable order.
        skipped: non-image files (by suffix) met while walking folders or glob matches.
        missing: inputs that are neither an existing file or folder nor a matching glob.
        ordered: ``(name, missing)`` for every path and missing input, in input order (folders
            and globs in their expansion order), so results can keep the user's order.
        cycles: ``(link, target)`` for each folder link met while walking that leads back
            into a folder it is inside (`loop_target`): not followed, to be reported.
    """

    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ordered: list[tuple[str, bool]] = field(default_factory=list)
    cycles: list[tuple[str, str]] = field(default_factory=list)


def _is_link_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def loop_target(path: str, inside: Iterable[str] = ()) -> str | None:
    """Where ``path`` points when it is a link to a folder that holds it, or to one of the
    real folders ``inside`` (those the walk came through to reach it): following it would
    walk the same folders again, round and round (``cat/loop -> ..``, ``d/self -> ../d``).
    None for anything else: a link to a folder elsewhere is followed as a folder."""
    if not os.path.islink(path) or not os.path.isdir(path):
        return None
    target = os.path.realpath(path)
    holder = os.path.realpath(os.path.dirname(path) or ".")
    if holder == target or holder.startswith(target.rstrip(os.sep) + os.sep):
        return target
    return target if target in set(inside) else None


def loop_note(link: str, target: str) -> str:
    """The one line that says a folder loop was left out."""
    return f"skipped '{link}': a link to '{target}', a folder it is inside (a link loop)"


def skipped_note(skipped: list[str]) -> str:
    """The one line that says which files of folders and globs were not read, by suffix."""
    shown = ", ".join(skipped[:SHOWN]) + (" ..." if len(skipped) > SHOWN else "")
    return f"skipped {len(skipped)} non-image file(s): {shown}"


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> InputList:
    """Files as given, folders recursively, globs (including ``**``) expanded.

    A file named explicitly is kept whatever its suffix: the user asked for it, so it is
    tried and fails with a reason rather than vanishing. Inside folders and glob matches
    only :data:`IMAGE_SUFFIXES` and symbolic link loops (whatever their names; they fail with
    ``LINK_LOOP``) are kept (others go to ``skipped``) and hidden entries (``.DS_Store``,
    ``.ipynb_checkpoints``, ``.git``) are ignored. Folders are walked in sorted order, links
    to folders outside them followed (each real folder once), a link to a folder within them
    not (its folder comes by its own name), a link back into a folder it is inside listed in
    ``cycles``; inputs keep their order, and a file reached twice is listed once. A folder
    that cannot be listed is kept as a path, so it fails with its reason instead of vanishing.
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
        for dirpath, _, filenames in _walk(folder, result.cycles, unlisted):
            for name in filenames:
                add_found(os.path.join(dirpath, name))

    for item in inputs:
        raw = os.fspath(item)
        path = os.path.expanduser(raw) if raw.startswith("~") else raw
        if path and os.path.isdir(path):
            walk(path)
        elif path and (os.path.exists(path) or os.path.islink(path)):
            add(path, result.paths)  # a broken link or a loop is tried, and says which
        elif path and any(c in path for c in "*?[") and (matches := _glob(path, result.cycles)):
            for match in matches:
                if os.path.isdir(match):
                    walk(match)
                elif os.path.isfile(match) or os.path.islink(match):
                    add_found(match)
        elif raw not in result.missing:
            result.missing.append(raw)
            result.ordered.append((raw, True))
    return result


def _walk(folder: str, cycles: list[tuple[str, str]], unlisted=None, hidden: bool = False):
    """``os.walk`` of ``folder`` following links, each real folder once, visible entries
    (hidden ones too with ``hidden``, for a glob that names one) sorted: a link to a folder
    outside it is followed (as training's class folders are), a link to a folder within it
    is not (that folder comes by its own name), and a link back into a folder it is inside
    goes to ``cycles`` (`loop_target`) instead of round and round. A folder that cannot be
    listed goes to ``unlisted``."""
    root = os.path.realpath(folder)
    visited: set[str] = set()
    came_through: dict[str, tuple[str, ...]] = {}  # a folder -> the real folders above it

    def follow(path: str, above: tuple[str, ...]) -> bool:
        if not os.path.islink(path):
            return True
        target = loop_target(path, above)
        if target is not None:
            if (path, target) not in cycles:
                cycles.append((path, target))
            return False
        real = os.path.realpath(path)
        return real != root and not real.startswith(root.rstrip(os.sep) + os.sep)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        above = (*came_through.get(dirpath, ()), real)
        dirnames[:] = [d for d in sorted(dirnames) if (hidden or not d.startswith("."))
                       and follow(os.path.join(dirpath, d), above)]  # fmt: skip
        for d in dirnames:
            came_through[os.path.join(dirpath, d)] = above
        yield dirpath, dirnames, sorted(f for f in filenames if hidden or not f.startswith("."))


def _glob(pattern: str, cycles: list[tuple[str, str]]) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, sorted, except that ``**`` walks folders as
    `expand_inputs` does (`_walk`): Python's follows every link, so one link loop gave each
    picture once per turn of it (40 turns), and two loops never ended. As in Python's glob,
    hidden entries match only a component that names them (``**/.cache/*.jpg``)."""
    parts = re.split("[/\\\\]" if os.altsep else "/", pattern)  # Windows: both separators
    if "**" not in parts:
        return sorted(glob.glob(pattern, recursive=True))
    folders_only = parts[-1] == ""  # "photos/**/": folders, as glob gives them
    at = parts.index("**")
    head, rest = os.sep.join(parts[:at]), [p for p in parts[at:] if p]
    if at and not head:  # "/**/x.jpg": from the root, not the working folder
        head = os.sep
    hidden = any(p.startswith(".") and p not in (".", "..") for p in rest)
    bases = sorted(glob.glob(head)) if glob.has_magic(head) else [head]
    matches = []
    for base in bases:
        if not os.path.isdir(base or "."):
            continue
        for dirpath, dirnames, filenames in _walk(base or ".", cycles, hidden=hidden):
            rel = os.path.relpath(dirpath, base or ".")
            above = [] if rel == "." else rel.split(os.sep)
            names = dirnames if folders_only else dirnames + filenames
            itself = [("", [])] if base and not above else []  # the base itself: "photos/"
            for name, comps in itself + [(n, [*above, n]) for n in names]:
                if _matches(rest, comps):
                    path = os.path.join(dirpath, name)
                    path = path if base else os.path.relpath(path)  # "./a" as glob says "a"
                    matches.append(os.path.join(path, "") if folders_only else path)
    return sorted(set(matches))


def _matches(pattern: list[str], parts: list[str]) -> bool:
    """Whether path components ``parts`` match glob components ``pattern`` (``**``: any
    number of components, none included). A hidden component matches only a pattern that
    starts with a dot, never ``**`` (Python's glob)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        visible = next((k for k, p in enumerate(parts) if p.startswith(".")), len(parts))
        return any(_matches(pattern[1:], parts[k:]) for k in range(visible + 1))
    if parts and parts[0].startswith(".") and not pattern[0].startswith("."):
        return False
    first = bool(parts) and fnmatch.fnmatch(parts[0], pattern[0])
    return first and _matches(pattern[1:], parts[1:])
