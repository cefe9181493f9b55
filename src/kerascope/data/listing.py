"""What a dataset folder's own listing says, before any class folder is walked: which
entries can hold data (not hidden, not an archive's leftovers, not a link back into a folder
that holds it), and the files lying next to the class folders. `kerascope.data.folders`
(train) and `kerascope.labelled_folders` (evaluate, validate) read folders through here, so
both say the same about the same folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kerascope.images.decode import IMAGE_SUFFIXES
from kerascope.images.inputs import SHOWN, loop_target

_CRUFT = ("__macosx",)
"""Folder names that are never data: a zip made on a Mac unpacks its resource forks into
``__MACOSX/`` (read before as an empty class)."""


def is_data_name(name: str) -> bool:
    """Whether a folder of this name can hold data: not hidden, not an archive's leftovers."""
    return not name.startswith(".") and name.lower() not in _CRUFT


@dataclass
class TopLevel:
    """One listing of a folder: the folders that can hold data, sorted (`is_data_name`); the
    links among them back into a folder that holds it (`kerascope.images.inputs.loop_target`:
    ``d/self -> ../d``), as ``(link, where it points)``; and the visible files directly in
    it, ``images`` and ``others`` (not images by suffix: a README, a labels file), sorted."""

    folders: list[Path] = field(default_factory=list)
    loops: list[tuple[str, str]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


def top_level(folder: Path) -> TopLevel:
    """What ``folder`` holds directly, from one listing (`TopLevel`)."""
    out = TopLevel()
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            if not is_data_name(p.name):
                continue
            target = loop_target(str(p))
            if target is None:
                out.folders.append(p)
            else:
                out.loops.append((str(p), target))
        elif p.is_file() and not p.name.startswith("."):
            image = p.suffix.lower() in IMAGE_SUFFIXES
            (out.images if image else out.others).append(str(p))
    return out


def data_folders(folder: Path, loops: list[tuple[str, str]]) -> list[Path]:
    """The folders in ``folder`` that can hold data; the link loops among them go to
    ``loops`` instead (`top_level`)."""
    found = top_level(folder)
    loops += [c for c in found.loops if c not in loops]
    return found.folders


def note_cruft(folders: list[Path], warnings: list[str]) -> None:
    """Say which archive leftovers were ignored, so a missing class is never a mystery."""
    cruft = [p for f in folders for p in f.iterdir() if p.is_dir() and p.name.lower() in _CRUFT]
    if cruft:
        listed = ", ".join(f"'{p}'" for p in cruft[:SHOWN])
        warnings.append(f"ignored {listed}: macOS archive metadata, not images")


def loose_note(count: int, folder: Path | str) -> str:
    """The line that says pictures next to the class folders are not read."""
    return f"{count} image(s) directly in '{folder}' are ignored (no class folder)"


def note_loose_files(root: Path, where: Path, warnings: list[str]) -> list[str]:
    """Images lying next to the class folders (in ``root``, or in ``where``, the folder whose
    class folders are read) are ignored: said in ``warnings`` rather than dropped in silence.
    Returns the other files in ``where`` (a README): not images by suffix, to be counted with
    the class folders' ones."""
    others = []
    for folder in sorted({root, where}):
        found = top_level(folder)
        if found.images:
            warnings.append(loose_note(len(found.images), folder))
        if folder == where:
            others += found.others
    return others
