"""The dataset as a run uses it: on a resume the split it started with, a moved dataset found
again, and checks a scan alone cannot make (an output folder inside the dataset, validation
images that are byte copies of training images).

A resume that split the folder again leaked: one file added or removed reshuffled its class,
so images held out in epoch 1 were trained on afterwards and the best epoch was chosen on
images the model had seen. The split a run records (``split.json``) is its split for good.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from kerascope.data.folders import Dataset, DatasetError
from kerascope.errors import RunError
from kerascope.files import write_text
from kerascope.rundir import file_digest, read_split, read_state
from kerascope.zoo.hierarchy import composed

log = logging.getLogger(__name__)

_SHOW = 3  # names a one-line note shows before "..."


def check_output_outside(data: str | os.PathLike, output: str | os.PathLike) -> None:
    """A run folder inside the dataset would be read as a class by the next scan (and by a
    resume): refused before anything is written."""
    root = Path(data).expanduser().resolve()
    out = Path(output).expanduser().resolve()
    if out == root or root in out.parents:
        raise RunError(f"output '{out}' is inside the dataset folder '{root}': its files "
                       "would be read as a class; choose an output outside the dataset "
                       "(--output)")  # fmt: skip


def resumed_data(run_dir: Path, config: dict[str, Any], data: Any) -> str | None:
    """The dataset folder a resume reads: the recorded one, or ``data`` when the recorded one
    is gone and ``data`` holds the run's files (at least 9 in 10 of the paths ``split.json``
    records, relative to it: a copy short of a few). None: ``data``
    is for `resume.apply_options` to judge (the recorded folder is still there)."""
    recorded = Path(config["data"])
    if read_state(run_dir).get("status") == "done":
        return None  # a finished run is refused as such, wherever its dataset went
    if data is None:
        if not recorded.exists():  # a folder, or a multi-label run's CSV
            raise RunError(f"the dataset of '{run_dir}', '{recorded}', does not exist any more: "
                           f"if it moved, give its new location: `kerascope train NEW_FOLDER "
                           f"--resume {run_dir}`")  # fmt: skip
        return None
    new = Path(data).expanduser().resolve()
    if new == recorded.expanduser().resolve() or recorded.is_dir():
        return None
    if not new.is_dir():
        return None  # the scan says what is wrong with it
    record = read_split(run_dir)
    files = sorted({f for fs in (record or {}).get("splits", {}).values() for f in fs})
    found = sum((new / f).is_file() for f in files)
    if not files or found < 0.9 * len(files):  # a few deleted since: said by the resume
        raise RunError(f"cannot resume '{run_dir}' with DATA {new}: the run's dataset "
                       f"'{recorded}' is gone, and {new} holds {found} of its {len(files)} "
                       "files (the same paths relative to the folder); give the folder the "
                       "run's dataset was moved to, or start a new run")  # fmt: skip
    log.info("dataset moved: '%s' is gone; resuming on '%s' (%d of its %d files there)",
             recorded, new, found, len(files))  # fmt: skip
    return str(new)


def same_classes(found: list[str], recorded: list[str]) -> bool:
    """Whether a resume's scan found the run's classes, in Unicode's composed form: a dataset
    moved between macOS (decomposed ``café``) and Linux keeps its classes."""
    return [composed(n) for n in found] == [composed(n) for n in recorded]


def keep_recorded_split(run_dir: Path, dataset: Dataset) -> Dataset:
    """``dataset`` with the split ``run_dir`` recorded: files gone since are dropped, new ones
    left out, and no file moves between train and validation; each change said in one line
    (in ``dataset.warnings``). A run without a record keeps the scan's split."""
    record = read_split(run_dir)
    if record is None:
        return dataset
    root = Path(dataset.root).expanduser().resolve()
    now = {_relative(p, root): (p, label) for items in dataset.splits.values()
           for p, label in items}  # fmt: skip
    unreadable = {_relative(p, root) for p, _ in dataset.bad}
    splits: dict[str, list[tuple[str, int]]] = {}
    gone: list[str] = []
    kept: set[str] = set()
    for name, recorded in record["splits"].items():
        files = [f for f in dict.fromkeys(composed(f) for f in recorded) if f not in kept]
        splits[name] = [now[f] for f in files if f in now]  # each file once, in its first split
        kept.update(files)
        gone += [f for f in files if f not in now and f not in unreadable]
    for name in ("train", "validation"):
        splits.setdefault(name, [])
    new = sorted(f for f in now if f not in kept)
    order = [n for n in ("train", "validation", "test") if n in splits]
    dataset.splits = {n: splits[n] for n in order}  # the recorded order: the first run's
    dataset.counts = {n: {c: sum(1 for _, label in dataset.splits[n] if label == i)
                          for i, c in enumerate(dataset.classes)}
                      for n in order}  # fmt: skip
    where = run_dir / "split.json"
    for split in ("train", "validation"):
        for c, count in dataset.counts[split].items():
            if not count:
                raise DatasetError(
                    f"no {split} image of class '{c}' that '{where}' records is in '{root}' "
                    "(deleted since, or, for held-out images, moved into training by a resume "
                    "of an earlier kerascope): a resume never moves images between the "
                    "splits; restore them, or start a new run")  # fmt: skip
    if gone:
        dataset.warnings.append(f"{len(gone)} file(s) of the run's split are gone from the "
                                f"dataset and left out ({_names(sorted(gone))}); the split of "
                                f"{where} is kept")  # fmt: skip
    if new:
        dataset.warnings.append(f"{len(new)} file(s) added to the dataset since the run started "
                                f"are not used ({_names(new)}): a resume keeps the run's split "
                                "(start a new run to train on them)")  # fmt: skip
    return dataset


def note_copies(dataset: Dataset) -> None:
    """Validation and test images that are byte copies of training images (a train/ and
    validation/ holding the same files, ``x.jpg`` and ``x_copy.jpg`` split apart) score as
    unseen: said in one line. Only files whose sizes collide with a training file's are read."""
    sizes: dict[str, dict[int, list[str]]] = {}
    for name, items in dataset.splits.items():
        for path, _ in items:
            try:
                sizes.setdefault(name, {}).setdefault(os.path.getsize(path), []).append(path)
            except OSError:
                continue
    train = sizes.get("train", {})
    digests: dict[bytes, str] = {}
    hashed: set[int] = set()
    copies: list[tuple[str, str]] = []
    for name, by_size in sizes.items():
        if name == "train":
            continue
        for size in sorted(by_size.keys() & train.keys()):
            if size not in hashed:
                hashed.add(size)
                for path in train[size]:
                    digests.setdefault(_hash(path), path)
            for path in by_size[size]:
                if (same := digests.get(_hash(path))) is not None:
                    copies.append((path, same))
    if copies:
        root = Path(dataset.root)
        shown = ", ".join(f"'{_relative(a, root)}' = '{_relative(b, root)}'"
                          for a, b in copies[:_SHOW])  # fmt: skip
        more = ", ..." if len(copies) > _SHOW else ""
        dataset.warnings.append(f"{len(copies)} validation/test image(s) are byte copies of "
                                f"training images ({shown}{more}): they score as unseen; "
                                "remove the copies")  # fmt: skip


def report_scan(dataset: Dataset, run_dir: Path, progress: bool, weighted: bool = False) -> None:
    """The scan's findings on stderr before the first epoch; dropped and ignored files listed
    in ``skipped.txt`` (path, tab, reason), since a terminal shows only the first few."""
    dropped = [(p, r) for p, r in dataset.bad] + [(p, "not an image file (ignored by suffix)")
                                                  for p in dataset.skipped]  # fmt: skip
    listing = run_dir / "skipped.txt"
    if dropped:
        write_text(listing, "".join(f"{_one_line(p)}\t{_one_line(r)}\n" for p, r in dropped))
    if weighted:  # the advice is already taken: here and in report.md's summary
        from kerascope.data.folders import IMBALANCE_HINT, IMBALANCE_WEIGHTED

        dataset.warnings = [w.replace(IMBALANCE_HINT, IMBALANCE_WEIGHTED)
                            for w in dataset.warnings]  # fmt: skip
    if not progress:
        return
    print(counts_line(dataset))
    if dataset.bad:
        print(f"warning: --skip-bad left out {len(dataset.bad)} unreadable file(s); the list "
              f"is in {listing}", file=sys.stderr)  # fmt: skip
    for warning in dataset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if dataset.skipped and not dataset.bad:
        print(f"  (ignored files are listed in {listing})", file=sys.stderr)


def counts_line(dataset: Dataset, shown: int = 6) -> str:
    """What the run trains on, in one line: ``dataset: 2 classes; train 26 (cat 13, coffee
    13); validation 6 (cat 3, coffee 3)`` (the first ``shown`` classes of each split)."""
    parts = []
    for split, counts in dataset.counts.items():
        each = ", ".join(f"{_one_line(c)} {n}" for c, n in list(counts.items())[:shown])
        more = ", ..." if len(counts) > shown else ""
        parts.append(f"{split} {sum(counts.values())} ({each}{more})")
    return f"dataset: {len(dataset.classes)} classes; " + "; ".join(parts)


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _hash(path: str) -> bytes:
    try:
        return file_digest(path)
    except OSError:
        return path.encode()  # unreadable now: matches nothing


def _names(files: list[str]) -> str:
    return ", ".join(f"'{f}'" for f in files[:_SHOW]) + (", ..." if len(files) > _SHOW else "")


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root``, composed (NFC): a dataset moved between macOS and Linux
    spells its names the other way, and they still name the same files."""
    return composed(os.path.relpath(os.path.abspath(path), root))


def precision_line(precision: str) -> str:
    """The run's precision line, with why it is slower here when it is (a CPU's XLA)."""
    from kerascope.precision import slower_here

    slower = slower_here(precision)
    return f"precision: {precision} (weights float32)" + (f"; {slower}" if slower else "")
