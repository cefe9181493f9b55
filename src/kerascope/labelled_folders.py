"""Class folders of a labelled dataset matched to a model's classes, for ``validate`` and
``evaluate`` alike: a folder is named by the class's WordNet id (ImageNet's layout,
``n02123045/``) or by its name as the model labels it (``tabby/``, ``Tabby``, ``tiger-cat``:
`kerascope.zoo.hierarchy.classes_named`). Every folder that matches no class is named in one
line before any image is decoded.

Each folder is listed once (`list_folder`), and what is not read is said as train's scan says
it: link loops, files that are not images by suffix, images in no class folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from kerascope.data.folders import DatasetError, not_a_folder
from kerascope.data.listing import loose_note, top_level
from kerascope.images.inputs import expand_inputs, loop_note, skipped_note
from kerascope.zoo.hierarchy import classes_named, is_wnid

_log = logging.getLogger(__name__)


@dataclass
class Listed:
    """One folder of class folders, each walked once.

    Attributes:
        root: the folder.
        files: class folder -> its image files (recursive, sorted).
        skipped: files not images by suffix, in the class folders and beside them.
        loose: images directly in ``root``, in no class folder.
        loops: ``(link, target)`` of each folder link back into a folder that holds it.
        walked: whether the class folders were walked (``files`` holds their images).
    """

    root: Path
    files: dict[Path, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    loose: list[str] = field(default_factory=list)
    loops: list[tuple[str, str]] = field(default_factory=list)
    walked: bool = False

    @property
    def has_images(self) -> bool:
        """Whether any class folder holds an image."""
        return any(self.files.values())


def list_folder(root: str | os.PathLike, walk: bool = True) -> Listed:
    """The class folders of ``root`` from one listing, each walked once for its images
    unless not ``walk`` (`walk_folders` does it later), and what is left out (`Listed`)."""
    root = Path(root)
    top = top_level(root)
    listed = Listed(root, {f: [] for f in top.folders}, list(top.others), top.images, top.loops)
    return walk_folders(listed) if walk else listed


def walk_folders(listed: Listed) -> Listed:
    """Walk each class folder of ``listed`` once (recursively) for its images."""
    for folder in listed.files:
        found = expand_inputs([folder])
        listed.files[folder] = found.paths
        listed.skipped += found.skipped
        listed.loops += [c for c in found.cycles if c not in listed.loops]
    listed.walked = True
    return listed


def say_left_out(listings: list[Listed]) -> None:
    """One warning line per link loop, one for the files not images by suffix, one per folder
    with images in no class folder (this module's logger: the commands print them as notes)."""
    for listed in listings:
        for link, target in listed.loops:
            _log.warning(loop_note(link, target))
    skipped = [p for listed in listings for p in listed.skipped]
    if skipped:
        _log.warning(skipped_note(skipped))
    for listed in listings:
        if listed.loose:
            _log.warning(loose_note(len(listed.loose), listed.root))


def class_folders(
    data: str | os.PathLike | Listed, labels: list[tuple[str, str]]
) -> list[tuple[Path, int]]:
    """``[(folder, class index)]`` for each class folder of ``data`` (a folder, or its
    `list_folder`), in name order; ``labels`` are the model's (id, name) pairs.

    Raises:
        DatasetError: ``data`` is no folder or has no class folders; folders that match no
            class (all named in one line), or a name two classes share (use the id).
    """
    if not isinstance(data, Listed):
        data = Path(data).expanduser()
        if not data.is_dir():
            raise DatasetError(not_a_folder(data, "validation"))
        data = list_folder(data, walk=False)
    root, folders = data.root, list(data.files)
    first = next((i for i, (cid, _) in enumerate(labels) if is_wnid(cid)), None)
    if not folders:  # the model's own names as the example (a trained run's: cat, coffee)
        how = (f"its WordNet id ({labels[first][0]}) or class name ({labels[first][1]})"
               if first is not None else "its class name (" + ", ".join(n for _, n in labels[:5])
               + (", ..." if len(labels) > 5 else "") + ")")  # fmt: skip
        raise DatasetError(f"no class folders in '{root}': put each class's images in a folder "
                           f"named by {how}")  # fmt: skip
    mapped, unknown, unclear = [], [], []
    for folder in folders:
        found = classes_named(folder.name, labels)
        if len(found) > 1 and all(is_wnid(labels[i][0]) for i in found):
            choices = " or ".join(labels[i][0] for i in found)
            unclear.append(f"'{folder}': {len(found)} classes of this model are named "
                           f"'{labels[found[0]][1]}'; name the folder by its WordNet id "
                           f"({choices})")  # fmt: skip
        elif len(found) > 1:  # a run's classes that differ only in case or spacing
            names = " or ".join(f"'{labels[i][1]}'" for i in found)
            unclear.append(f"'{folder}' could be the class {names} of this model; name the "
                           "folder exactly as the class is named")  # fmt: skip
        elif found:
            mapped.append((folder, found[0]))
        else:
            unknown.append(folder.name)
    if unknown:  # every folder that is no class, and the unclear ones, in one line
        shown = ", ".join(f"'{n}'" for n in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        how = "a WordNet id (n02123045) or a class name" if first is not None else "a class name"
        examples = ", ".join(name for _, name in labels[:5])
        raise DatasetError(f"{len(unknown)} folder(s) of '{root}' match no class of the model: "
                           f"{shown}; rename each to {how} of the model (e.g. {examples}) or "
                           "remove it" + "".join(f"; and {u}" for u in unclear))  # fmt: skip
    if unclear:
        raise DatasetError("; ".join(unclear))
    return mapped


def folder_items(data: str | os.PathLike | Listed | list, labels: list[tuple[str, str]]) -> list:
    """``[(path, class index)]`` of every image in the class folders of ``data``: one folder,
    or several (``evaluate --split all``: train/, validation/, test/), of which only all
    together must hold an image; each given as a path or as its `list_folder` (listed once).
    What is left out is said (`say_left_out`) once the folder names are checked."""
    roots = data if isinstance(data, list) else [data]
    listings, matched = [], []
    for root in roots:
        if not isinstance(root, Listed):
            root = Path(root).expanduser()
            if not root.is_dir():
                raise DatasetError(not_a_folder(root, "validation"))
            root = list_folder(root, walk=False)  # a wrong folder name: one line, no walk
        matched.append(class_folders(root, labels))
        listings.append(root)
    for listed in listings:
        if not listed.walked:
            walk_folders(listed)
    items = [(p, index) for listed, pairs in zip(listings, matched, strict=True)
             for folder, index in pairs for p in listed.files[folder]]  # fmt: skip
    say_left_out(listings)
    if not items:
        raise DatasetError(f"no images in the class folders of '{listings[0].root}'")
    return items
