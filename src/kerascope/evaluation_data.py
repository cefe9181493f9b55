"""Which images ``evaluate`` scores, and their true classes: the split of a folder that
``--split`` names (`SPLITS`), or the files the run itself held out (its ``split.json``).

Each folder is listed once: ``--split auto`` decides from the test folder's listing whether
it holds labelled images and scores that same listing. What is left out (link loops, files
not images by suffix, pictures in no class folder, an unlabelled test folder) is said, as
training's scan says it (`kerascope.labelled_folders.say_left_out`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from kerascope.data.folders import SPLIT_DIRS, DatasetError, not_a_folder
from kerascope.images.inputs import expand_inputs
from kerascope.labelled_folders import Listed, folder_items, list_folder, say_left_out
from kerascope.rundir import split_files

_log = logging.getLogger(__name__)

SPLITS = ("auto", "test", "validation", "train", "all")
"""``evaluate``'s ``split``: ``auto`` scores the folder's ``test/`` split if it has one, else the
run's own held-out validation images when the folder is the one it trained from, else the
folder's ``validation/`` split, else every image."""


def evaluation_items(data: str | os.PathLike, classes: list[str], split: str = "auto",
                     record: dict | None = None,
                     ids: list[str] | None = None) -> tuple[str, list, str]:  # fmt: skip
    """``(split used, [(path, label)], source)`` for the folder ``data``.

    ``split`` as in `SPLITS`. ``record`` is the run's ``split.json``: when ``data`` is the
    folder the run trained from, ``validation`` and ``train`` are the files the run itself
    held out and trained on (``source`` ``"run"``); otherwise the folder's own ``validation/``
    or ``train/`` folder (``source`` ``"folder"``), whose class folders are named by class
    name or, where ``ids`` are WordNet ids (a zoo model), as ImageNet's are (``n02123045/``).

    Raises:
        DatasetError: no class folders, a folder that is not one of the model's classes, or
            no such split.
    """
    return items_and_default(data, classes, split, record, ids)[:3]


def items_and_default(data: str | os.PathLike, classes: list[str], split: str = "auto",
                      record: dict | None = None,
                      ids: list[str] | None = None) -> tuple[str, list, str, str]:  # fmt: skip
    """`evaluation_items`, and the split ``auto`` picks for this folder and run (from the
    same listing)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DatasetError(not_a_folder(root, "evaluation"))
    top, found, unlabelled, ours = _split_folders(root, record, split in ("auto", "test", "all"))
    default = _default_split(found, ours)
    asked, split = split, default if split == "auto" else split
    if unlabelled is not None and asked in ("auto", "all"):  # as training says it
        _log.warning(f"'{unlabelled}' holds no images in class folders, so it is not scored "
                     f"(unlabelled pictures there: `kerascope predict RUN {unlabelled}` labels "
                     "them)")  # fmt: skip
    if ours and split in ("train", "validation") and record["splits"].get(split):
        return split, _recorded_items(record, split, classes), "run", default
    if split == "all":
        where = [p for p in found.values() if p is not None] or [top]
    elif found[split] is not None:
        where = [found[split]]
    else:
        raise DatasetError(f"'{root}' has no {split}/ folder of class folders" + (
            "" if not ours else f" and the run recorded no {split} files")
            + f"; choose another --split ({', '.join(SPLITS)})")  # fmt: skip
    if where[0] is not top:  # split folders: the pictures and loops beside them are not read
        say_left_out([replace(top, skipped=[])])
    labels = list(zip(ids or classes, classes, strict=True))
    return split, folder_items(where, labels), "folder", default


def _split_folders(
    root: Path, record: dict | None, walk_test: bool
) -> tuple[Listed, dict, Path | None, bool]:
    """``root``'s listing; its split folders by split name, ``test/`` None when no class
    folder of it holds an image (training leaves Kaggle's unlabelled ``test/*.jpg`` out too),
    else, with ``walk_test`` (it may be scored), walked already (`Listed`: its files are
    listed once); that test folder when it holds loose pictures instead; and whether ``root``
    is the folder the run trained from."""
    top = list_folder(root, walk=False)
    folders = {p.name.lower(): p for p in top.files}
    found: dict = {name: next((folders[n] for n in names if n in folders), None)
                   for name, names in SPLIT_DIRS.items()}  # fmt: skip
    unlabelled = None
    if found["test"] is not None:
        test = list_folder(found["test"], walk=walk_test)
        labelled = (
            test.has_images if walk_test else any(expand_inputs([f]).paths for f in test.files)
        )  # stops at the first with one
        unlabelled = None if labelled or not test.loose else test.root
        found["test"] = (test if walk_test else test.root) if labelled else None
    return top, found, unlabelled, record is not None and root.resolve() == Path(record["data"])


def _default_split(found: dict, ours: bool) -> str:
    """What ``--split auto`` scores: test/, else the held-out images, else everything."""
    return "test" if found["test"] else "validation" if ours or found["validation"] else "all"


def _recorded_items(record: dict, split: str, classes: list[str]) -> list:
    """The files the run put in ``split``, labelled as training labelled them: by the class
    folder below the data folder (or below its split folder), however deep the file lies
    (``cat/coffee/x.jpg`` is a cat: its parent folder's name read it as coffee)."""
    splits = {n for names in SPLIT_DIRS.values() for n in names}
    items = []
    for rel, path in zip(record["splits"].get(split, []), split_files(record, split), strict=True):
        parts = Path(rel).parts
        top = 1 if len(parts) > 2 and parts[0].lower() in splits and parts[1] in classes else 0
        if len(parts) < top + 2 or parts[top] not in classes:
            raise DatasetError(f"'{path}' (recorded in the run's split.json) is not in a class "
                               f"folder of this model; evaluate with --split all")  # fmt: skip
        items.append((path, classes.index(parts[top])))
    return items
