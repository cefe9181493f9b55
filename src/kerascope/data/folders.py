"""Find, check and split a class-per-folder image dataset before anything is trained on it.

Two layouts are accepted, because that is what users have on disk:

* ``DATA/train/<class>/*`` + ``DATA/validation/<class>/*`` (``val``/``valid`` also accepted,
  optional ``DATA/test/<class>/*``), the layout of the Keras cats-vs-dogs tutorials;
* ``DATA/<class>/*``, split here into train and validation, stratified and seeded.

Everything that would otherwise fail halfway through an epoch (a truncated download, a
``.txt`` renamed ``.jpg``, a class folder with no validation images) is found up front and
reported in one :class:`DatasetError` that names the folder or file and the fix. Files are
only ever read: nothing under ``root`` is written, moved or deleted.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.data.listing import data_folders, is_data_name, note_cruft, note_loose_files
from kerascope.errors import KerascopeError
from kerascope.files import file_identity
from kerascope.images import IMAGE_SUFFIXES, ImageError, load_image
from kerascope.images.inputs import expand_inputs, loop_note

SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "val", "valid"),
    "test": ("test",),
}
"""Folder names (compared case-insensitively) that mark the pre-split layout."""

_SPLIT_LIKE = re.compile(
    r"(train(ing)?|val(id(ation)?)?|test(ing)?|eval(uation)?|dev)([ _-]?(set|data|images|\d+))?",
    re.IGNORECASE,
)
"""Folder names a download gives its splits (``train2``, ``test1``, ``val_set``,
``training_set``), which read as classes would train a classifier of splits."""

IMBALANCE_RATIO = 3.0
"""Largest/smallest class size in train above which a warning is raised: accuracy stops
meaning much, and class weights or resampling are worth considering."""
IMBALANCE_HINT = "consider --class-weight auto or more images"
IMBALANCE_WEIGHTED = "--class-weight auto weighs them equally in the loss"
"""The imbalance warning's advice, and what a run given ``--class-weight`` says instead."""

_SHOW = 5  # how many offending files an error message names before "and N more"

Item = tuple[str, int]
Progress = Callable[[int, int], None]


class DatasetError(KerascopeError):
    """The dataset folder cannot be trained on as it is; the message says why and what to do."""


def not_a_folder(root: Path, what: str, single: str | None = None) -> str:
    """Why ``root`` cannot be a ``what`` (dataset, evaluation, validation) folder of class
    folders: a file or a glob (these read folders only: one image is `predict`'s, or
    ``single``: the command that does for single images what the caller does), or none."""
    if root.exists() or any(c in str(root) for c in "*?["):
        kind = "a file" if root.exists() else "a glob"
        single = single or "`kerascope predict RUN FILES` labels single images"
        return (
            f"{what} folder '{root}' is {kind}: this reads a folder of class folders "
            f"(DATA/<class>/*.jpg); {single}"
        )
    return f"{what} folder '{root}' does not exist"


@dataclass
class Dataset:
    """What :func:`scan_dataset` found.

    Attributes:
        root: the folder scanned.
        layout: ``"split"`` (train/validation folders) or ``"classes"`` (one folder per
            class, split here).
        classes: class names, sorted; a label is an index into this list.
        splits: ``"train"``, ``"validation"`` and, when present, ``"test"`` -> ``(path,
            label)`` pairs in a stable order.
        counts: split -> class -> number of usable images.
        bad: ``(path, reason)`` for files that did not decode (excluded from ``splits``).
        skipped: files ignored because their suffix is not an image format.
        warnings: things worth reading before training (imbalance, ignored files).
    """

    root: Path
    layout: str
    classes: list[str]
    splits: dict[str, list[Item]]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    bad: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A plain-text table of images per class and split, then bad files and warnings."""
        names = list(self.splits)
        width = max([5, *(len(c) for c in self.classes)])
        cols = [max(len(n), 6) for n in names]
        lines = [f"{self.root} ({self.layout} layout, {len(self.classes)} classes)"]
        lines.append(
            "  ".join(
                [f"{'class':<{width}}", *(f"{n:>{w}}" for n, w in zip(names, cols, strict=True))]
            )
        )
        for c in [*self.classes, None]:
            row = [f"{c or 'total':<{width}}"]
            for n, w in zip(names, cols, strict=True):
                value = sum(self.counts[n].values()) if c is None else self.counts[n].get(c, 0)
                row.append(f"{value:>{w}}")
            lines.append("  ".join(row))
        if self.bad:
            lines.append(f"{len(self.bad)} unreadable file(s) left out:")
            lines += [f"  {p}: {r}" for p, r in self.bad]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def scan_dataset(
    root: str | os.PathLike,
    val_split: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    check_images: bool = True,
    progress: Progress | None = None,
) -> Dataset:
    """Scan ``root``, check every image decodes, and return labelled train/validation lists.

    Checking decodes each file with :func:`kerascope.images.load_image`, the same code the
    loader uses, so a file that passes here cannot fail in the middle of training. That
    costs a full decode (about 2 ms for a 500x375 JPEG, 0.3 s for a 12 MP photo, on one
    core); ``Image.verify()`` would be nearly free but misses truncated files, the most
    common corruption. Files are checked on a thread pool (Pillow releases the GIL).

    Args:
        root: the dataset folder.
        val_split: fraction of each class held out for validation when ``root`` holds
            class folders directly (ignored when it has ``train``/``validation`` folders).
        seed: makes the split reproducible; each class is shuffled with its own generator
            derived from ``seed`` and its name, so adding a class does not reshuffle others.
        skip_bad: leave unreadable files out (listed in ``Dataset.bad``) instead of failing.
        check_images: decode every file; ``False`` only lists files (fast, trusting).
        progress: called as ``progress(done, total)`` while checking images.

    Raises:
        DatasetError: the folder is missing or empty, has fewer than two classes, a class
            has no images (or no validation images), or files are unreadable and
            ``skip_bad`` is false.

    Example:
        >>> ds = scan_dataset("data/cats_and_dogs")  # doctest: +SKIP
        >>> print(ds.summary())  # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(not_a_folder(root, "dataset"))
    warnings: list[str] = []
    skipped: list[str] = []
    loops: list[tuple[str, str]] = []
    folders = _subfolders(root, loops)
    split_dirs = _split_dirs(root, folders)
    if split_dirs:
        layout = "split"
        found = {s: _class_files(d, skipped, loops) for s, d in split_dirs.items()}
        classes = sorted(found["train"])
        _check_split_classes(root, split_dirs, found, classes, warnings)
    else:
        layout = "classes"
        _check_not_splits(root, folders, warnings)
        found = {"all": _class_files(root, skipped, loops, folders)}
        classes = sorted(found["all"])
    where = split_dirs.get("train", root)
    warnings += [loop_note(link, target) for link, target in loops]
    note_cruft([root, *split_dirs.values()], warnings)
    _check_classes(where, classes, found["train" if split_dirs else "all"])
    skipped += note_loose_files(root, where, warnings)
    _note_shared_files(found, warnings)

    bad: list[tuple[str, str]] = []
    if check_images:
        every = [p for per_class in found.values() for files in per_class.values() for p in files]
        bad = _check_files(every, progress)
        if bad and not skip_bad:
            raise DatasetError(_bad_message(root, bad))
        broken = {p for p, _ in bad}
        found = {
            s: {c: [p for p in f if p not in broken] for c, f in d.items()}
            for s, d in found.items()
        }
        _check_classes(where, classes, found["train" if split_dirs else "all"], after_bad=True)

    if layout == "classes":
        found = _stratified_split(root, found["all"], classes, val_split, seed)
    elif "validation" not in found:
        warnings.append(f"no validation folder in '{root}': holding out {val_split:.0%} of train")
        held = _stratified_split(split_dirs["train"], found.pop("train"), classes, val_split, seed)
        found = {**held, **found}
    for c in classes:
        if not found["validation"].get(c):
            raise DatasetError(
                f"class '{c}' has no validation images in '{root}': add some to its "
                "validation folder (or give it more images to split)"
            )
    order = ["train", "validation", "test"]
    splits = {s: _items(found[s], classes) for s in order if s in found}
    counts = {s: {c: len(found[s].get(c, [])) for c in classes} for s in splits}
    train_counts = list(counts["train"].values())
    if max(train_counts) > IMBALANCE_RATIO * min(train_counts):
        big = max(counts["train"], key=counts["train"].get)
        small = min(counts["train"], key=counts["train"].get)
        warnings.append(
            f"classes are imbalanced: '{big}' has {max(train_counts)} training images, "
            f"'{small}' {min(train_counts)} ({IMBALANCE_HINT})"
        )
    if skipped:
        shown = ", ".join(f"'{p}'" for p in skipped[:_SHOW])
        more = f" and {len(skipped) - _SHOW} more" if len(skipped) > _SHOW else ""
        warnings.append(f"{len(skipped)} non-image file(s) ignored: {shown}{more}")
    return Dataset(root, layout, classes, splits, counts, bad, skipped, warnings)


def _note_shared_files(found: dict[str, dict[str, list[str]]], warnings: list[str]) -> None:
    """A file that two classes hold (a linked class folder, a hard link) teaches the model
    both labels for one picture, and may land in training and validation at once."""
    owners: dict[Any, tuple[str, set[str]]] = {}
    for per_class in found.values():
        for cls, files in per_class.items():
            for path in files:
                key = file_identity(path) or path  # (none: said when it is read)
                owners.setdefault(key, (path, set()))[1].add(cls)
    shared = [(path, sorted(c)) for path, c in owners.values() if len(c) > 1]
    if shared:
        path, classes = shared[0]
        warnings.append(f"{len(shared)} file(s) belong to more than one class (e.g. '{path}' "
                        f"is in {', '.join(repr(c) for c in classes)}): each is trained with "
                        "both labels; give every picture one class")  # fmt: skip


def _subfolders(folder: Path, loops: list[tuple[str, str]] | None = None) -> list[Path]:
    """Visible subfolders, sorted (`kerascope.data.listing.data_folders`): hidden ones and
    archive leftovers are not data, nor a link back into a folder that holds it (added to
    ``loops``)."""
    return data_folders(folder, [] if loops is None else loops)


def _split_dirs(root: Path, folders: list[Path]) -> dict[str, Path]:
    """Map split name -> folder when ``root`` uses the train/validation layout, else {}."""
    found: dict[str, Path] = {}
    for split, names in SPLIT_DIRS.items():
        hits = [p for p in folders if p.name.lower() in names]
        if len(hits) > 1:
            listed = ", ".join(f"'{p.name}'" for p in hits)
            raise DatasetError(f"'{root}' has several {split} folders ({listed}); keep one")
        if hits:
            found[split] = hits[0]
    if not found:
        return {}
    if "train" not in found:
        names = ", ".join(f"'{p.name}'" for p in found.values())
        raise DatasetError(
            f"'{root}' has {names} but no 'train' folder: add train/<class>/ folders, or "
            "move the class folders directly under the dataset folder"
        )
    others = [p.name for p in folders if p not in found.values()]
    if others:
        raise DatasetError(
            f"'{root}' mixes split folders ('train', ...) with other folders "
            f"({', '.join(repr(o) for o in others[:_SHOW])}): put every class folder inside "
            "train/ and validation/, or drop train/ and keep one folder per class"
        )
    return found


def _check_not_splits(root: Path, folders: list[Path], warnings: list[str]) -> None:
    """Class folders that look like splits: refused when every one is named like a split (a
    Kaggle download's ``train2/{cats,dogs}`` + ``test2/...``, read before as the two classes
    "train2" and "test2"); a warning when only some are, or all hold the same class folders
    (``cats/{indoor,outdoor}`` + ``dogs/{indoor,outdoor}`` may be classes with their own
    subfolders)."""
    inner = {f.name: {d.name.lower() for d in _dir_entries(f) if _holds_images(d.path)}
             for f in folders}  # fmt: skip
    named = [name for name in inner if _SPLIT_LIKE.fullmatch(name)]
    shared = set.intersection(*inner.values()) if len(inner) > 1 else set()
    nested = len(inner) > 1 and all(len(v) > 1 for v in inner.values()) and bool(shared)
    if not named and not nested:
        return
    holding = sorted(shared) if nested else sorted(set().union(*(inner[n] for n in named)))
    listed = ", ".join(f"'{n}'" for n in (named or list(inner))[:_SHOW])
    inside = f" holding {', '.join(holding[:_SHOW])}" if holding else ""
    message = (f"'{root}' looks like splits, not classes: {listed}{inside}; name them train/ "
               "and test/ (or validation/), each holding one folder per class")  # fmt: skip
    if named and len(named) == len(inner):  # one sign alone (dev/ + prod/) is only a warning
        raise DatasetError(message)
    if named:  # some classes, some split-like names: a test folder among the classes?
        message = (f"class folder(s) {listed} in '{root}' are named like a split, not a class: "
                   "if they are one, put the classes in train/<class>/ and test/<class>/ (or "
                   "validation/)")  # fmt: skip
    warnings.append(f"{message} (read as classes now)")


def _dir_entries(folder: Path) -> list[os.DirEntry]:
    """Visible subfolders, from the directory listing alone (no stat of every image); none
    for a folder that cannot be listed (the scan names it with its reason)."""
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries if is_data_name(e.name) and _entry_is_dir(e)]
    except OSError:
        return []


def _entry_is_dir(entry: os.DirEntry) -> bool:
    """A link loop (``loop.png -> loop.png``) is no folder: said when its file is read."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _holds_images(folder: str | Path) -> bool:
    """Whether any image lies under ``folder`` (stops at the first)."""
    for _, _, files in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            return True
    return False


def _class_files(
    folder: Path,
    skipped: list[str],
    loops: list[tuple[str, str]],
    classes: list[Path] | None = None,
) -> dict[str, list[str]]:
    """Class name -> image files found recursively under each class folder, sorted; files
    not images by suffix go to ``skipped``, folder link loops to ``loops``."""
    out = {}
    for class_dir in _subfolders(folder, loops) if classes is None else classes:
        found = expand_inputs([class_dir])
        skipped += found.skipped
        loops += [c for c in found.cycles if c not in loops]
        out[class_dir.name] = found.paths
    return out


def _check_classes(
    where: Path, classes: list[str], files: dict[str, list[str]], after_bad: bool = False
) -> None:
    """At least two classes, each with at least one (readable) image, each named in UTF-8
    (a class name is kept in labels.json and the model; one that is not would crash there)."""
    for c in classes:
        if any("\udc80" <= ch <= "\udcff" for ch in c):
            shown = c.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise DatasetError(f"class folder '{where / shown}' has a name that is not UTF-8: "
                               "rename it (its name becomes the class's name)")  # fmt: skip
    if not classes:
        if not any(not p.name.startswith(".") for p in where.iterdir()):
            raise DatasetError(
                f"dataset folder '{where}' is empty: put each class's images in its own "
                f"folder inside it, e.g. '{where / 'cats'}' and '{where / 'dogs'}'"
            )
        images = expand_inputs([where]).paths
        hint = f" (it holds {len(images)} images directly)" if images else ""
        raise DatasetError(
            f"no class folders in '{where}'{hint}: put each class's images in its own "
            f"folder, e.g. '{where / 'cats'}' and '{where / 'dogs'}'"
        )
    if len(classes) == 1:
        raise DatasetError(
            f"only one class folder ('{classes[0]}') in '{where}': a classifier needs at "
            "least two, one folder per class"
        )
    empty = [c for c in classes if not files.get(c)]
    if empty:
        what = "no readable images" if after_bad else "no images"
        raise DatasetError(
            f"class folder '{where / empty[0]}' has {what}"
            + (f" (nor do {', '.join(repr(c) for c in empty[1:])})" if len(empty) > 1 else "")
            + ": add images or remove the folder"
        )


def _check_split_classes(
    root: Path,
    dirs: dict[str, Path],
    found: dict[str, dict[str, list[str]]],
    classes: list[str],
    warnings: list[str],
) -> None:
    """Validation/test classes must be train classes; a missing one is an error/warning. A
    test/ folder with no labelled image at all (Kaggle's unlabelled test/*.jpg, or empty) is
    left out, saying so (before: training failed on an empty test split)."""
    if "test" in found and not any(found["test"].values()):
        del found["test"]
        warnings.append(f"'{dirs['test']}' holds no images in class folders, so there is no test "
                        f"split (unlabelled pictures there: `kerascope predict RUN "
                        f"{dirs['test']}` labels them)")  # fmt: skip
    for split in ("validation", "test"):
        if split not in found:
            continue
        extra = sorted(set(found[split]) - set(classes))
        if extra:
            raise DatasetError(
                f"'{dirs[split] / extra[0]}' has no matching folder in '{dirs['train']}': "
                "every class needs training images (or remove that folder)"
            )
        missing = [c for c in classes if not found[split].get(c)]
        if missing and split == "validation":
            raise DatasetError(
                f"class '{missing[0]}' has no validation images: add "
                f"'{dirs[split] / missing[0]}' with some images of that class"
            )
        if missing:
            warnings.append(f"no {split} images for class(es) {', '.join(missing)} in '{root}'")


def _check_one(path: str) -> tuple[str, str] | None:
    """Decode one file fully; return ``(path, reason)`` if it cannot be used."""
    try:
        load_image(path)
    except ImageError as err:
        return (path, err.reason)
    return None


def _check_files(paths: list[str], progress: Progress | None) -> list[tuple[str, str]]:
    """Decode every file on a thread pool; bad ones in input order."""
    workers = min(8, os.cpu_count() or 1, max(1, len(paths)))
    bad = []
    with ThreadPoolExecutor(workers) as pool:
        for done, result in enumerate(pool.map(_check_one, paths), 1):
            if result:
                bad.append(result)
            if progress:
                progress(done, len(paths))
    return bad


def _bad_message(root: Path, bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"'{p}': {r}" for p, r in bad[:_SHOW])
    more = f"; and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    return (
        f"{len(bad)} unreadable file(s) in '{root}': {shown}{more} "
        "(fix or remove them, or leave them out with --skip-bad / skip_bad=True)"
    )


def _stratified_split(
    where: Path, files: dict[str, list[str]], classes: list[str], val_split: float, seed: int
) -> dict[str, dict[str, list[str]]]:
    """Hold out ``round(n * val_split)`` files of each class (at least one, never all)."""
    if not 0.0 < val_split < 1.0:
        raise DatasetError(
            f"val_split must be between 0 and 1 to split '{where}' into train and "
            f"validation, got {val_split}"
        )
    out: dict[str, dict[str, list[str]]] = {"train": {}, "validation": {}}
    for c in classes:
        paths = files[c]
        if len(paths) < 2:
            raise DatasetError(
                f"class '{c}' in '{where}' has {len(paths)} image(s); at least 2 are needed "
                "to hold one out for validation"
            )
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_split)))
        rng = np.random.default_rng([seed, zlib.crc32(c.encode())])
        order = rng.permutation(len(paths))
        held = set(order[:n_val].tolist())
        out["validation"][c] = [p for i, p in enumerate(paths) if i in held]
        out["train"][c] = [p for i, p in enumerate(paths) if i not in held]
    return out


def _items(per_class: dict[str, list[str]], classes: list[str]) -> list[Item]:
    """Flatten to ``(path, label)`` in class order then file order (stable, unshuffled)."""
    return [(p, label) for label, c in enumerate(classes) for p in per_class.get(c, [])]
