"""The bookkeeping files of a run directory that other commands read: its lock, its labels and
the record of which images it trained on. No Keras here: evaluate and predict check a run
directory before they load a model.

* ``.lock``: held (``fcntl.flock``, exclusive) by the one process writing the run, so a second
  ``train`` into the same folder is refused instead of mixing two runs' files. The kernel drops
  the lock when the holder exits, however it exits (a kill included): no stale lock to clean.
* ``labels.json``: ``{"classes": [...]}``, the model's output order.
* ``split.json``: the dataset folder and, per split, the files (relative to it) the run used,
  so ``evaluate`` can score the held-out ones and warn when a scored image was trained on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerascope.errors import RunError
from kerascope.files import write_json

LOCK_NAME = ".lock"
SPLIT_NAME = "split.json"
LABELS_NAME = "labels.json"
STATE_NAME = "run_state.json"


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike, create: bool = False) -> Iterator[Path]:
    """Hold the run directory's exclusive lock for the ``with`` block, or refuse in one line.

    With ``create`` the folder is made first; if it was made here and still holds nothing but
    the lock when the block ends (the dataset was refused, say), it is removed again.
    """
    import fcntl

    folder = Path(run_dir)
    made = create and not folder.exists()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunError(_busy_message(folder, fd)) from None
        _write_pid(fd)
        try:
            yield folder
        finally:
            if made and {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
                lock.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _write_pid(fd: int) -> None:
    """Leave the holder's pid in the lock file for the refusal message (best effort: a full
    disk must not stop a run over a courtesy)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _busy_message(folder: Path, fd: int) -> str:
    try:
        who = f"another kerascope process (pid {int(os.pread(fd, 32, 0).decode().strip())})"
    except (OSError, ValueError):
        who = "another kerascope process"
    return (f"'{folder}' is in use by {who}, which is writing this run: wait for it to "
            "finish, or choose another --output")  # fmt: skip


def read_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run_state.json`` (which stage and epoch, running / done / ...); {} when absent or
    unreadable: a run killed before its first state write starts from the beginning."""
    try:
        return json.loads((Path(run_dir) / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    write_json(Path(run_dir) / STATE_NAME, state)


def read_labels(run_dir: str | os.PathLike) -> list[str] | None:
    """The class names in a run's ``labels.json`` (None when there is none), or one line
    naming the file when it is not a list of names."""
    path = Path(run_dir) / LABELS_NAME
    if not path.is_file():
        return None
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


def write_split(run_dir: str | os.PathLike, root: str | os.PathLike, splits: dict) -> Path:
    """Record which files of ``root`` each split used (paths relative to ``root``); on a resume
    the files trained on before stay listed as trained on."""
    root = Path(root).expanduser().resolve()
    record = {
        "data": str(root),
        "splits": {name: [_relative(p, root) for p, _ in items] for name, items in splits.items()},
    }
    old = read_split(run_dir)
    if old is not None and old["data"] == record["data"]:
        seen = set(record["splits"].get("train", []))
        extra = [p for p in old["splits"].get("train", []) if p not in seen]
        record["splits"]["train"] = record["splits"].get("train", []) + extra
        trained = set(record["splits"]["train"])
        for name, files in record["splits"].items():
            if name != "train":
                record["splits"][name] = [p for p in files if p not in trained]
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
