"""What a batch job will do: its inputs in fixed blocks, one shard name per block, a manifest.

Exactly once rests on determinism: the inputs are made absolute, de-duplicated and sorted, then
cut into blocks of ``block_size``; block ``i`` always becomes the shard ``part-<i>-<digest>``
(the digest covers its paths), written atomically by whichever worker runs it. A restart finds
which shards exist and runs only the others; a retried block rewrites the same file. The
manifest pins the inputs and settings, so a restart with different ones is refused instead of
mixing two jobs in one folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope import files
from kerascope.errors import KerascopeError
from kerascope.extras import install_command
from kerascope.images.inputs import expand_inputs, loop_note

_log = logging.getLogger(__name__)

MANIFEST = "_kerascope_batch.json"
INDEX_DIR = "index"  # explain: the Parquet index beside the overlay pictures
LISTING_SUFFIXES = frozenset({".txt", ".lst", ".list", ".csv", ".parquet", ".pq"})
TASKS = ("classify", "features", "explain")
FORMAT = 1  # the manifest's; the shards' columns are checked on a resume (`work.lacking_columns`)


class BatchError(KerascopeError, ValueError):
    """A batch job that cannot start or finish as asked; the message names the fix."""


@dataclass
class Block:
    """One unit of work and of output: its paths, and the shard that holds their rows."""

    index: int
    shard: str  # file name inside the shard folder
    paths: list[str]
    missing: list[bool]  # named on the command line but not on disk (no file, folder or glob)
    outputs: list[str] = field(default_factory=list)  # explain: picture name per path

    def row(self) -> dict[str, Any]:
        return {
            "block": self.index,
            "shard": self.shard,
            "paths": self.paths,
            "missing": self.missing,
            "outputs": self.outputs,
        }


@dataclass
class Inputs:
    paths: list[str]  # absolute, unique, sorted
    missing: set[str]
    skipped: list[str]  # non-image files met in folders and globs


def read_listing(path: str) -> list[str]:
    """Paths from a listing: one per line (``#`` comments), or a ``path`` column (CSV, Parquet)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BatchError(_needs("a Parquet listing", "pyarrow")) from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for bad files)
            raise BatchError(f"cannot read listing '{path}': {exc}") from None
        if "path" not in table.column_names:
            raise BatchError(_no_path_column(path, table.column_names))
        return [str(p) for p in table.column("path").to_pylist() if p]
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix == ".csv":
            reader = csv.DictReader(fh)
            if "path" not in (reader.fieldnames or []):
                raise BatchError(_no_path_column(path, reader.fieldnames or []))
            return [row["path"] for row in reader if row.get("path")]
        lines = (line.strip() for line in fh)
        return [line for line in lines if line and not line.startswith("#")]


def _no_path_column(path: str, columns) -> str:
    shown = ", ".join(map(str, columns)) or "none"
    return f"listing '{path}' has no 'path' column (its columns: {shown})"


def _needs(what: str, package: str) -> str:
    return f"{what} needs {package}: {install_command('ray')}"


def collect_inputs(inputs: list[str]) -> Inputs:
    """Folders, globs, files and listing files -> absolute, unique, sorted paths.

    A listing is a file named on the command line with a listing suffix (``.txt``, ``.lst``,
    ``.csv``, ``.parquet``); its relative paths are taken from the working directory, like
    paths on the command line. Listed paths are kept whatever their suffix (a missing or bad
    one becomes an error row), as files named on the command line are.
    """
    named: list[str] = []
    listed: list[str] = []
    for item in inputs:
        if os.path.isfile(item) and Path(item).suffix.lower() in LISTING_SUFFIXES:
            listed.extend(read_listing(item))  # literal paths: a '[' in a name is no glob
        else:
            named.append(item)
    found = expand_inputs(named)
    for link, target in found.cycles:
        _log.warning(loop_note(link, target))
    missing = {os.path.abspath(p) for p in found.missing}
    paths = {os.path.abspath(p) for p in found.paths} | {os.path.abspath(p) for p in listed}
    return Inputs(sorted(paths | missing), missing - paths, list(found.skipped))


def _digest(parts: list[str]) -> str:
    return hashlib.sha1("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def explain_names(paths: list[str]) -> dict[str, str]:
    """Picture names as ``kerascope explain`` gives them (``<stem>-output.jpg``), one per input
    and all distinct, by construction.

    In one output folder two inputs with the same stem (``a/IMG_1.jpg``, ``b/IMG_1.jpg``)
    would overwrite each other; those get a short hash of their path before ``-output``. A
    hashed name can still equal another input's plain name (``c/IMG_1-<hash>.jpg``) or, in
    principle, another hashed one: the names every other input wants are reserved first, and
    any name left in a tie gets the first free ``-2``, ``-3``, ... in the sorted inputs'
    order. The inputs are the job's whole sorted list, so the names are the same on a resume.
    """
    stems = Counter(Path(p).stem for p in paths)
    wanted = {
        p: f"{Path(p).stem}-output.jpg"
        if stems[Path(p).stem] == 1
        else f"{Path(p).stem}-{_digest([p])[:8]}-output.jpg"
        for p in paths
    }
    counts = Counter(wanted.values())
    taken = {name for name, n in counts.items() if n == 1}
    names = {}
    for p in sorted(paths):
        name = wanted[p]
        if counts[name] > 1:
            stem = name.removesuffix("-output.jpg")
            k = 2
            while (name := f"{stem}-{k}-output.jpg") in taken:
                k += 1
            taken.add(name)
        names[p] = name
    return names


def make_blocks(found: Inputs, block_size: int, task: str) -> list[Block]:
    """Cut the sorted inputs into fixed blocks; the shard name depends only on its paths."""
    if block_size < 1:
        raise BatchError("--block-size must be at least 1")
    names = explain_names(found.paths) if task == "explain" else {}
    blocks = []
    for index, start in enumerate(range(0, len(found.paths), block_size)):
        paths = found.paths[start : start + block_size]
        shard = f"part-{index:06d}-{_digest(paths)[:10]}.parquet"
        missing = [p in found.missing for p in paths]
        outputs = [names.get(p, "") for p in paths]
        blocks.append(Block(index, shard, paths, missing, outputs))
    return blocks


def shard_dir(out: Path, task: str) -> Path:
    """Where the Parquet shards go: the output folder, or ``index/`` beside explain's pictures."""
    return out / INDEX_DIR if task == "explain" else out


def manifest_for(task: str, settings: dict, blocks: list[Block], block_size: int) -> dict:
    import kerascope

    return {
        "format": FORMAT,
        "task": task,
        "settings": settings,
        "inputs": sum(len(b.paths) for b in blocks),
        "blocks": len(blocks),
        "block_size": block_size,
        "digest": _digest([b.shard for b in blocks]),
        "kerascope_version": kerascope.__version__,
        "complete": False,
    }


_SAME = ("format", "task", "settings", "inputs", "block_size", "digest")
# How each setting is written on the command line (`kerascope batch TASK --help`).
_FLAGS = {"model": "--model", "weights": "--weights", "top": "--top", "threshold": "--threshold",
          "layer": "--layer", "pool": "--pool", "image_size": "--image-size",
          "method": "--method", "target": "--class", "alpha": "--alpha",
          "colormap": "--colormap", "fit": "--fit", "precision": "--precision"}  # fmt: skip


def check_output(out: Path, manifest: dict) -> None:
    """Refuse, without writing anything, an output that cannot hold this job: a file, a folder
    with other things in it, or one holding a batch job of other inputs or options."""
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise BatchError(f"output '{out}' is a file: batch writes a folder of Parquet shards; "
                         "choose a new or empty folder")  # fmt: skip
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BatchError(f"cannot read '{path}' ({exc}); delete it to start over") from None
        if not isinstance(old, dict):
            raise BatchError(f"'{path}' is not a kerascope batch manifest; delete it to start "
                             "over")  # fmt: skip
        if _holds_nothing(out, old):  # a start that failed (weights missing): no job yet
            return
        changed = [k for k in _SAME if old.get(k) != manifest.get(k)]
        if changed:
            raise BatchError(
                f"'{out}' holds another batch job: {differences(old, manifest)}; to resume it "
                "use the same inputs and options, or give this job another -o folder"
            )
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise BatchError(
            f"'{out}' is not empty and holds no kerascope batch job; choose a new or empty "
            "output folder"
        )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():  # a file where a parent folder should be
        raise BatchError(f"output '{out}' lies under a file: choose a folder")


def _holds_nothing(out: Path, saved: dict) -> bool:
    """Whether the job recorded in ``out`` wrote nothing but its record: no shard, no picture
    (a start that failed before any block, e.g. weights that could not be loaded). Such a
    record is replaced by the next start, whatever its options: it blocked the corrected
    command ("it was run with no --weights")."""
    if saved.get("task") not in TASKS:
        return False
    shards = shard_dir(out, saved["task"])
    for folder in {out, shards}:
        try:
            names = [e.name for e in os.scandir(folder)]
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if any(not n.startswith(".") and n not in (MANIFEST, INDEX_DIR) for n in names):
            return False
    return True


def differences(old: dict, new: dict) -> str:
    """What differs between a saved job (``old``) and this one, as the command line says it:
    "it was run with --top 5 (this run: --top 3)"."""
    said = []
    if old.get("task") != new.get("task"):
        said.append(f"it is a batch {old.get('task')} job (this run: batch {new.get('task')})")
    if old.get("format") != new.get("format"):
        said.append(f"it was written by another kerascope version ({old.get('kerascope_version')})")
    was, now = [], []
    saved, asked = old.get("settings") or {}, new.get("settings") or {}
    if old.get("task") == new.get("task"):
        for key in [k for k in {**saved, **asked} if saved.get(k) != asked.get(k)]:
            was.append(_option(key, saved.get(key)))
            now.append(_option(key, asked.get(key)))
    if old.get("block_size") != new.get("block_size"):
        was.append(f"--block-size {old.get('block_size')}")
        now.append(f"--block-size {new.get('block_size')}")
    if was:
        said.append(f"it was run with {', '.join(was)} (this run: {', '.join(now)})")
    if old.get("inputs") != new.get("inputs"):
        said.append(f"it has {old.get('inputs')} input(s) (this run: {new.get('inputs')})")
    elif not was and old.get("digest") != new.get("digest"):  # (a new block size: new digest)
        said.append(f"its {old.get('inputs')} inputs are not this run's")
    return "; ".join(said) or "different settings"


def _option(key: str, value: Any) -> str:
    flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
    return f"no {flag}" if value is None else f"{flag} {value}"


def prepare_output(out: Path, manifest: dict) -> None:
    """Start or resume the job in ``out`` (`check_output` first); refuse a folder that holds
    something else.

    Hidden temp files left by workers killed mid-write (``.*.partial``) are removed: the
    blocks they belonged to have no shard and run again.
    """
    check_output(out, manifest)
    path = out / MANIFEST
    shards = shard_dir(out, manifest["task"])
    try:
        shards.mkdir(parents=True, exist_ok=True)
        for folder in {out, shards}:
            files.remove_stale_temps(folder)
    except (FileExistsError, NotADirectoryError):  # a file where a parent folder should be
        raise BatchError(f"output '{out}' lies under a file: choose a folder") from None
    except OSError as exc:  # a read-only file system, no permission
        raise files.output_error(out, exc) from None
    if not path.is_file() or (_read_manifest(path) != manifest and _holds_nothing(out, manifest)):
        files.write_json(path, manifest)  # new, or a record of a start that wrote nothing


def pending(out: Path, task: str, blocks: list[Block]) -> list[Block]:
    """The blocks whose shard is not written yet (the others are done, exactly once)."""
    folder = shard_dir(out, task)
    done = {p.name for p in folder.glob("part-*.parquet")} if folder.is_dir() else set()
    return [b for b in blocks if b.shard not in done]


def finish(out: Path, manifest: dict, blocks: list[Block]) -> dict:
    """Check every block has its shard and no other shard is there; mark the job complete."""
    folder = shard_dir(out, manifest["task"])
    present = {p.name for p in folder.glob("part-*.parquet")}
    expected = {b.shard for b in blocks}
    if present != expected:
        lost, extra = sorted(expected - present), sorted(present - expected)
        raise BatchError(
            f"'{folder}' does not hold exactly this job's shards (missing {lost[:3]}, "
            f"unexpected {extra[:3]}); run the same command again to finish it"
        )
    done = dict(manifest, complete=True)
    if _read_manifest(out / MANIFEST) != done:  # a finished job is not written again
        files.write_json(out / MANIFEST, done)
    return done


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
