"""The bookkeeping files of a run directory that other commands read: its lock, its labels and
the record of which images it trained on. No Keras here: evaluate and predict check a run
directory before they load a model.

* ``.lock``: held (`kerascope.locks`) by the one process writing the run, so a second
  ``train`` into the same folder is refused instead of mixing two runs' files; removed when the
  run ends, and never stale (the kernel drops the lock however the holder exits).
* ``labels.json``: ``{"classes": [...]}``, the model's output order.
* ``split.json``: the dataset folder and, per split, the files (relative to it) the run used,
  so ``evaluate`` can score the held-out ones and warn when a scored image was trained on.
* ``run_state.json``: where the run stands (`read_state`). A folder with a ``model.keras`` is a
  finished run unless its state says otherwise, and a damaged state is refused in one line:
  guessing "start over" retrained finished runs and replaced their model without a word.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerascope.errors import RunError
from kerascope.files import output_error, write_json
from kerascope.locks import LockBusy, acquire, lock_holder
from kerascope.zoo.hierarchy import composed

LOCK_NAME = ".lock"
SPLIT_NAME = "split.json"
LABELS_NAME = "labels.json"
STATE_NAME = "run_state.json"


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike, create: bool = False) -> Iterator[Path]:
    """Hold the run directory's exclusive lock for the ``with`` block, or refuse in one line.

    With ``create`` the folder is made first; if it was made here and holds nothing when the
    block ends (the dataset was refused, say), it is removed again. The lock file goes with
    the lock: a finished run's folder holds no ``.lock``.
    """
    folder = Path(run_dir)
    made = create and not folder.exists()
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        held = acquire(folder / LOCK_NAME)
    except LockBusy as busy:
        raise RunError(f"'{folder}' is in use by {busy.holder}, which is writing this run: "
                       "wait for it to finish, or choose another --output") from None  # fmt: skip
    except (FileExistsError, NotADirectoryError):  # a file where a folder should be
        raise RunError(f"output '{folder}' is a file (or lies under one): choose a folder "
                       "for the run") from None  # fmt: skip
    except OSError as exc:  # a read-only file system, no permission
        raise output_error(folder, exc) from None
    try:
        with held:
            yield folder
    finally:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def discard_new_run(run_dir: str | os.PathLike, before: set[str]) -> None:
    """Remove what a new run wrote into ``run_dir`` (every entry not in ``before``).

    For a run that failed before it saved an epoch: its config, labels and split alone are not
    a run, and left behind they made the next attempt refuse the folder ("continue with
    --resume") while ``--resume`` failed the same way.
    """
    folder = Path(run_dir)
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name in before or entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


_STATE_FIELDS = {"status": str, "completed_stages": int, "stage": int, "epoch": int}
_STATUSES = ("running", "interrupted", "failed", "done")  # what `training.run` writes


def read_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run_state.json`` (which stage and epoch, running / done / ...).

    A missing or empty state means the run never recorded an epoch, so it starts from its
    backups, unless the folder holds a ``model.keras``: then the run finished (the state is
    written before the model, and says "done" after it), whatever removed the state, and it
    reads ``{"status": "done"}`` so that nothing retrains it and replaces its model. A state
    that is not a JSON object of the expected fields is refused (RunError, one line): how far
    the run got is then unknown, and no guess may retrain it.
    """
    path = Path(run_dir) / STATE_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        state: Any = {}
    except OSError as exc:
        raise RunError(f"cannot read '{path}' ({_first_line(exc)}): {_STATE_FIX}") from None
    else:
        try:
            state = json.loads(text.decode("utf-8"))
        except ValueError as exc:
            raise RunError(_damaged_state(path, f"not JSON: {_first_line(exc)}")) from None
    if not isinstance(state, dict):
        raise RunError(_damaged_state(path, f"a JSON {type(state).__name__}, not an object"))
    for key, kind in _STATE_FIELDS.items():
        value = state.get(key)
        if value is None:
            continue
        if (
            not isinstance(value, kind)
            or isinstance(value, bool)
            or (value not in _STATUSES if key == "status" else value < 0)
        ):
            raise RunError(_damaged_state(path, f"its '{key}' is {value!r}"))
    if state.get("status") is None and (Path(run_dir) / "model.keras").is_file():
        return {**state, "status": "done"}
    return state


_STATE_FIX = ("kerascope will not guess how far the run got (a guess could train it again "
              "and replace its model): restore the file, delete it to continue from the "
              "backups that remain (a run with a model.keras then counts as finished), or "
              "start a new run")  # fmt: skip


def _damaged_state(path: Path, why: str) -> str:
    return f"'{path}' is damaged ({why}); {_STATE_FIX}"


def missing_model(model_path: Path) -> str:
    """What to say of a run folder's missing ``model.keras``: a kerascope run that has not
    finished has none yet (a Ctrl-C, a crash), and goes on with ``--resume``."""
    run_dir = model_path.parent
    said = f"no model file at '{model_path}'"
    if not ((run_dir / STATE_NAME).is_file() and (run_dir / "config.yaml").is_file()):
        return said
    try:
        done = read_state(run_dir).get("status") == "done"
    except RunError:
        return said
    if done:  # finished, then the model was moved or deleted: a resume would be refused
        return f"{said}: the run in '{run_dir}' finished, but its model was removed since"
    if holder := _training(run_dir):  # a resume would be refused: the run is locked
        return (f"{said}: the run in '{run_dir}' is still training ({holder}); its model is "
                "written when it ends")  # fmt: skip
    return (f"{said}: the run in '{run_dir}' has not finished; continue it with "
            f"`kerascope train --resume {run_dir}`")  # fmt: skip


def _training(run_dir: Path) -> str | None:
    """Who holds the run's lock (the training writing it), or None. Looked at read-only, with a
    shared lock for a moment: nothing is created or removed, and a training starting then is
    kept waiting microseconds at most."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nothing trains there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return lock_holder(fd)
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return None


def write_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    write_json(Path(run_dir) / STATE_NAME, state)


def read_labels(run_dir: str | os.PathLike) -> list[str] | None:
    """The class names in a run's ``labels.json`` (without one: those its ``config.yaml``
    records, else None), or one line naming the file when it is not a list of names."""
    path = Path(run_dir) / LABELS_NAME
    if not path.is_file():
        return _config_classes(Path(run_dir))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"'{path}' is not valid JSON ({_first_line(exc)}): restore it from the "
                       "run's config.yaml (its 'classes') or retrain") from None  # fmt: skip
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RunError(f"'{path}' must hold {{\"classes\": [\"name\", ...]}}; restore it from "
                       "the run's config.yaml (its 'classes') or retrain")  # fmt: skip
    return names


def _config_classes(run_dir: Path) -> list[str] | None:
    """The classes a run's ``config.yaml`` records: a run that lost its ``labels.json`` kept
    its names there (without this its predictions said ``class_0``, ``class_1`` ...)."""
    path = run_dir / "config.yaml"
    if not path.is_file() or not (run_dir / STATE_NAME).is_file():  # a kerascope run only
        return None
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # resume says what is wrong with it; the model's names stay unknown
    names = config.get("classes") if isinstance(config, dict) else None
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None


def write_split(run_dir: str | os.PathLike, root: str | os.PathLike, splits: dict) -> Path:
    """Record which files of ``root`` each split used (paths relative to ``root``); on a resume
    the files of each split before stay listed in it, missing ones too (also when the dataset
    moved: the recorded folder is gone, the relative paths are the same): a validation file
    away during one resume is held out again when it is back, not taken for a new file."""
    root = Path(root).expanduser().resolve()
    record = {
        "data": str(root),
        "splits": {name: [_relative(p, root) for p, _ in items] for name, items in splits.items()},
    }
    old = read_split(run_dir)
    if old is not None and (old["data"] == record["data"] or not os.path.isdir(old["data"])):
        # names compared composed (NFC): a run recorded on macOS resumed on Linux listed each
        # accented file twice, once per spelling
        splits = record["splits"]
        trained = {composed(p) for p in splits.get("train", [])}
        for p in old["splits"].get("train", []):  # trained on before: trained on for good
            if composed(p) not in trained:
                trained.add(composed(p))
                splits.setdefault("train", []).append(p)
        for name, files in splits.items():
            if name != "train":
                splits[name] = [p for p in files if composed(p) not in trained]
        listed = {composed(p) for files in splits.values() for p in files}
        for name, files in old["splits"].items():
            for p in files if name != "train" else ():
                if composed(p) not in listed:
                    listed.add(composed(p))
                    splits.setdefault(name, []).append(p)
    return write_json(Path(run_dir) / SPLIT_NAME, record)


def read_split(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``split.json`` (None when the run has none), or one line when it is damaged."""
    path = Path(run_dir) / SPLIT_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(record["data"], str) and all(
            isinstance(files, list) for files in record["splits"].values()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunError(f"'{path}' is damaged ({_first_line(exc)}): delete it to evaluate "
                       "without knowing which images the run trained on") from None  # fmt: skip
    if not ok:
        raise RunError(f"'{path}' is damaged: delete it to evaluate without knowing which "
                       "images the run trained on")  # fmt: skip
    return record


def split_files(record: dict[str, Any], name: str) -> list[str]:
    """Absolute paths of a recorded split (``[]`` when the run had no such split)."""
    root = record["data"]
    return [os.path.join(root, rel) for rel in record["splits"].get(name, [])]


def _relative(path: str, root: Path) -> str:
    return os.path.relpath(os.path.abspath(path), root)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def trained_count(record: dict | None, sources: list) -> int:
    """How many of ``sources`` are files the run trained on: by real path, or copies of one
    (the same bytes: a folder holding the training images copied scored 1.0 in silence).
    Files are read only where a size matches one of the training files'."""
    if record is None:
        return 0
    trained = {os.path.realpath(p) for p in split_files(record, "train")}
    by_size: dict[int, list[str]] = {}
    for path in trained:
        with contextlib.suppress(OSError):
            by_size.setdefault(os.path.getsize(path), []).append(path)
    digests: dict[int, set[bytes]] = {}

    def is_copy(path: str) -> bool:
        try:
            size = os.path.getsize(path)
            if size not in by_size:
                return False
            if size not in digests:
                digests[size] = {file_digest(p) for p in by_size[size] if os.path.isfile(p)}
            return file_digest(path) in digests[size]
        except OSError:
            return False

    return sum(isinstance(s, str | os.PathLike)
               and (os.path.realpath(s) in trained or is_copy(os.fspath(s)))
               for s in sources)  # fmt: skip


def file_digest(path: str | os.PathLike) -> bytes:
    """A file's content hash (BLAKE2b): copies of a file have the same one."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").digest()
