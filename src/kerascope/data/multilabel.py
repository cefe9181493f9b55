"""A multi-label dataset given as a CSV: ``path,labels``, one image per row.

``labels`` holds one or more label names separated by ``;`` or ``|`` (``cat;coffee``); paths
are relative to the CSV's folder (absolute paths are kept). A first row ``path,labels`` is a
header. Every row is checked before anything trains, and a bad one is one line naming its row
number (counted as a spreadsheet shows it: the first line is row 1): a file that is not
there, an empty label set, a row that is not two cells. The split into training and
validation is seeded, like the folder datasets' (`kerascope.data.folders`).

A label may contain spaces (``golden retriever``), so a space is never a separator; but a
fastai-style CSV (``cat dog``) would then train one label ``cat dog`` without a word. When no
row uses ``;`` or ``|`` and every label with a space is made of labels other rows name alone,
the file is refused; weaker signs are one logged warning (see `_check_space_separated`).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.data.folders import DatasetError
from kerascope.files import file_identity

_log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[;|]")
_FORMAT = "each row must be path,labels with labels separated by ; or | (e.g. a.jpg,cat;dog)"


@dataclass
class LabelTable:
    """The rows of a label CSV.

    Attributes:
        csv: the CSV file (resolved).
        paths: each row's image file (resolved against the CSV's folder).
        labels: every label name, sorted: the network's output order.
        targets: (rows, labels) float32 multi-hot: ``targets[i, j]`` is 1 when row ``i``
            names ``labels[j]``.
        rows: each image's row number in the CSV (for messages).
    """

    csv: Path
    paths: list[Path]
    labels: list[str]
    targets: np.ndarray
    rows: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def split(self, val_split: float, seed: int) -> dict[str, np.ndarray]:
        """Row indices of ``train`` and ``validation``: a seeded shuffle, ``val_split`` of the
        rows (at least one) held out."""
        if not 0.0 < val_split < 1.0:
            raise DatasetError(f"val_split must be between 0 and 1 for '{self.csv}', got "
                               f"{val_split:g}")  # fmt: skip
        order = np.random.default_rng(seed).permutation(len(self))
        held = max(1, round(len(self) * val_split))
        return {"train": np.sort(order[held:]), "validation": np.sort(order[:held])}

    def relative(self, indices: np.ndarray) -> list[str]:
        """The rows' paths as the CSV's folder sees them (for the run's record)."""
        root = self.csv.parent
        return [os.path.relpath(self.paths[i], root) for i in indices]


def is_label_csv(data: str | os.PathLike) -> bool:
    """Whether ``data`` names a label CSV (by its suffix) rather than a dataset folder."""
    return str(data).lower().endswith(".csv")


def read_label_csv(path: str | os.PathLike, labels: list[str] | None = None) -> LabelTable:
    """Parse and check a label CSV (see the module doc).

    Args:
        path: the CSV file.
        labels: the label order to use (a trained run's); a row naming another label is then
            refused. None: the sorted set of labels the CSV names.

    Raises:
        DatasetError: one line naming the CSV, the row and the fix.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise DatasetError(f"label CSV '{source}' does not exist (give a CSV of path,labels "
                           "rows, or a dataset folder)")  # fmt: skip
    source = source.resolve()
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"'{source}' is not a readable CSV ({exc}); {_FORMAT}") from None
    paths, names, numbers = [], [], []
    seen: dict[Any, int] = {}  # image -> the row that named it first
    separated = False  # whether any row uses ; or |
    for number, row in enumerate(table, 1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue  # blank lines
        if number == 1 and [c.lower() for c in cells] == ["path", "labels"]:
            continue  # the header
        if len(cells) != 2:
            raise DatasetError(f"'{source}' row {number}: {len(cells)} cell(s) where 2 were "
                               f"expected; {_FORMAT}")  # fmt: skip
        file, text = cells
        if not file:
            raise DatasetError(f"'{source}' row {number}: the path is empty; {_FORMAT}")
        separated = separated or bool(_SEPARATORS.search(text))
        named = sorted({n.strip() for n in _SEPARATORS.split(text) if n.strip()})
        if not named:
            raise DatasetError(f"'{source}' row {number}: '{file}' has no labels; give at "
                               "least one (separated by ; or |) or leave the row out")  # fmt: skip
        image = Path(file).expanduser()
        image = image if image.is_absolute() else source.parent / image
        if not image.is_file():
            what = "is a folder, not an image" if image.is_dir() else "does not exist"
            raise DatasetError(f"'{source}' row {number}: '{file}' {what} (paths are "
                               f"relative to the CSV's folder, {source.parent})")  # fmt: skip
        key = file_identity(image) or os.path.normcase(os.path.realpath(image))
        first = seen.setdefault(key, number)
        if first != number:  # twice: in training and validation at once, or two answers
            raise DatasetError(f"'{source}' row {number}: '{file}' is listed already (row "
                               f"{first}); give each image one row, with all its "
                               "labels")  # fmt: skip
        paths.append(image)
        names.append(named)
        numbers.append(number)
    if not paths:
        raise DatasetError(f"'{source}' has no image rows; {_FORMAT}")
    if labels is None:
        _check_space_separated(source, names, numbers, separated)
    order = sorted({n for row in names for n in row}) if labels is None else list(labels)
    index = {name: i for i, name in enumerate(order)}
    targets = np.zeros((len(paths), len(order)), np.float32)
    for i, (row, number) in enumerate(zip(names, numbers, strict=True)):
        for name in row:
            if name not in index:
                hint = ""
                if len(name.split()) > 1 and all(w in index for w in name.split()):
                    hint = f"; separate labels with ; ({';'.join(name.split())})"
                raise DatasetError(f"'{source}' row {number}: label '{name}' is not one the "
                                   f"model knows ({', '.join(order)}){hint}")  # fmt: skip
            targets[i, index[name]] = 1.0
    if labels is None and len(order) < 2:
        raise DatasetError(f"'{source}' names only the label '{order[0]}'; a multi-label "
                           "dataset needs at least two")  # fmt: skip
    return LabelTable(source, paths, order, targets, numbers)


def _check_space_separated(
    source: Path, names: list[list[str]], numbers: list[int], separated: bool
) -> None:
    """Refuse or warn about labels that look like several labels separated by spaces.

    Why: ``cat dog`` is silently one class otherwise. Refused only when the file uses no
    ``;``/``|`` at all and every spaced label splits into labels that rows name alone: then
    the file is plainly space-separated. A spaced label made of lone labels in a file that
    does use ``;`` (or a file where no image has two labels but some labels have spaces) is
    only warned about, since ``golden retriever`` may be a real class.
    """
    alone = {row[0] for row in names if len(row) == 1 and len(row[0].split()) == 1}
    spaced: dict[str, int] = {}  # spaced label -> the first row naming it
    for row, number in zip(names, numbers, strict=True):
        for name in row:
            if len(name.split()) > 1:
                spaced.setdefault(name, number)
    if not spaced:
        return
    combined = {n: r for n, r in spaced.items() if all(w in alone for w in n.split())}
    name, number = next(iter((combined or spaced).items()))
    fix = (f"separate labels with ; ({';'.join(name.split())}); a label with a space in its "
           "name is kept whole")  # fmt: skip
    if combined:
        what = (f"'{source}' row {number}: label '{name}' is the labels "
                f"{', '.join(repr(w) for w in name.split())} that other rows name alone, "
                "separated by spaces")  # fmt: skip
        if not separated and len(combined) == len(spaced):
            raise DatasetError(f"{what}; {fix}")
        _log.warning("%s: read as one label; if it is several, %s", what, fix)
    elif not separated:
        _log.warning("'%s': no row names two labels, and %d label(s) contain spaces (row %d: "
                     "'%s'); if those are several labels, %s", source, len(spaced), number,
                     name, fix)  # fmt: skip


def pixels_of(table: LabelTable, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The rows' images decoded and resized (squashed, as the folder trainer does) to
    ``size``, uint8; an unreadable one is one line naming its CSV row."""
    from kerascope.images import ImageError, load_image, resize

    out = np.empty((len(indices), *size, 3), np.uint8)
    for k, i in enumerate(indices):
        try:
            out[k] = resize(load_image(table.paths[i]), size)
        except ImageError as exc:
            raise DatasetError(f"'{table.csv}' row {table.rows[i]}: cannot read "
                               f"'{table.paths[i]}': {exc}") from None  # fmt: skip
    return out
