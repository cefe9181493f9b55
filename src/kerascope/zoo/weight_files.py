"""What is at a weights file's path, judged without reading any weights: a link loop, a folder,
an unreadable, empty, non-HDF5 or damaged file, or one too small or too large for a model's
parameters (`judge_file`). `kerascope.zoo.weights` judges its cache paths with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from kerascope.errors import WeightsError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# What can be at a cache path instead of a usable file. The first kind is no file to read at
# all: loading names it and never downloads over it. The second is a file that cannot hold
# this model's weights (certain for the first three; "wrong size" is told by the size alone,
# so loading leaves the last word to the load, which says which layer does not match).
NOT_A_FILE = ("link loop", "dangling link", "folder", "not a file", "unreadable")
BAD_CONTENT = ("empty", "not HDF5", "damaged", "wrong size")

# A legacy .h5 weights file holds 4 bytes per float32 parameter plus HDF5's headers: 2.2-3.9 KB
# per layer (a group, its datasets, their names) in every zoo file Keras's legacy writer makes,
# with and without top; these bounds are well above that.
_FIXED_OVERHEAD = 1 << 20
_LAYER_OVERHEAD = 16 << 10


@dataclass(frozen=True)
class CacheState:
    """What is at a weights file's cache path, judged without reading any weights.

    ``status``: ``"yes"`` (a plausible weights file), ``"no"`` (nothing there), or a problem
    from `NOT_A_FILE` or `BAD_CONTENT`, short enough for a table column; ``detail`` says it
    in words, as the end of "'PATH' is ...".
    """

    path: Path
    status: str
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.status == "yes"

    @property
    def present(self) -> bool:
        return self.status != "no"


def judge_file(
    path: Path,
    least_params: int | None = None,
    most_params: int | None = None,
    recorded_size: int | None = None,
) -> CacheState:
    """What ``path`` is, as a weights file, without loading it.

    In order: nothing there; a symbolic link loop, a link to nothing, a folder, something
    other than a regular file; unreadable; empty; not starting with the HDF5 signature; its
    size unlike ``recorded_size``, the one recorded when it was ported; refused by HDF5 (a
    truncated file); smaller than ``least_params`` float32 values, or (a legacy weights file,
    whose layer count gives its headers' size) larger than ``most_params`` of them need.
    """
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            with contextlib.suppress(OSError):
                target = os.readlink(path)
                detail = f"a symbolic link to '{target}', which does not exist"
                return CacheState(path, "dangling link", detail)
        return CacheState(path, "no")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return CacheState(path, "link loop", "a symbolic link loop")
        return CacheState(path, "unreadable", f"unreadable: {os_reason(exc)}")
    if stat.S_ISDIR(found.st_mode):
        return CacheState(path, "folder", "a folder, not a weights file")
    if not stat.S_ISREG(found.st_mode):
        return CacheState(path, "not a file", f"{file_kind(found.st_mode)}, not a weights file")
    if found.st_size == 0:
        return CacheState(path, "empty", "empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return CacheState(path, "unreadable", f"unreadable: {os_reason(exc)}")
    if not head.startswith(HDF5_SIGNATURE):
        shown = "".join(c if " " <= c <= "~" else "." for c in head.decode("latin-1"))
        detail = f"not a weights file (no HDF5 signature; it starts with '{shown}')"
        return CacheState(path, "not HDF5", detail)
    size = found.st_size
    written = recorded_size
    if written is not None and written != size:
        return CacheState(path, "damaged", f"damaged: {size:,} bytes, {written:,} were written")
    try:
        layers = _hdf5_layer_count(path)
    except Damaged as exc:
        return CacheState(path, "damaged", f"damaged: {exc}")
    if least_params and size < 4 * least_params:
        need = f"{least_params:,} float32 parameters ({_mb(4 * least_params)})"
        detail = f"too small for this model: {_mb(size)} cannot hold its {need}"
        return CacheState(path, "wrong size", detail)
    room = _FIXED_OVERHEAD + _LAYER_OVERHEAD * (layers or 0)
    if most_params and layers is not None and size > 4 * most_params + room:
        need = f"{most_params:,} float32 parameters take {_mb(4 * most_params)}"
        detail = f"too large for this model: {_mb(size)} in {layers} layers, where its {need}"
        return CacheState(path, "wrong size", detail)
    return CacheState(path, "yes")


class Damaged(WeightsError):
    """HDF5 refused the file (truncated, damaged metadata); the message says how."""


def _hdf5_layer_count(path: Path) -> int | None:
    """How many layers a legacy weights file lists (one attribute: no layer is read), None for
    another layout (Keras 3 ``.weights.h5``, a whole saved model); `Damaged` if HDF5 refuses
    the file (truncated, damaged metadata)."""
    try:
        import h5py  # noqa: F401
    except ImportError:  # Keras needs it; without it nothing loads anyway
        return None
    try:
        with open_hdf5(path) as f:
            if "layer_names" not in f.attrs:
                return None
            return len(f.attrs["layer_names"])
    except Exception as exc:  # OSError from HDF5; anything else is the same verdict
        raise Damaged(hdf5_reason(exc)) from None


def open_hdf5(path: Path):
    """Read-only, without HDF5's file lock (a reader waits for no writer, and fails on none)."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py before 3.5 has no `locking`
        return h5py.File(path, "r")


def hdf5_reason(exc: BaseException) -> str:
    """h5py's "Unable to synchronously open file (truncated file: eof = 5, ...)" in words."""
    text = str(exc)
    if m := re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text):
        return f"truncated ({int(m[1]):,} of {int(m[2]):,} bytes)"
    inner = re.search(r"\(([^()]*)\)\s*$", text)
    return f"HDF5 cannot open it ({inner[1] if inner else text.strip() or type(exc).__name__})"


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device",
             stat.S_ISSOCK: "a socket"}  # fmt: skip
    return next((name for test, name in kinds.items() if test(mode)), "something else")


def os_reason(exc: OSError) -> str:
    """The OS's reason in a sentence: "permission denied" (``[Errno 13] Permission denied``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]
