"""What is at a weights file's path, judged without reading any weights: a link loop, a folder,
an unreadable, empty, non-HDF5 or damaged file, or one too small or too large for a model's
parameters (`judge_file`). `kerascope.zoo.weights` judges its cache paths with it.

A legacy file's layout (its layers' shapes, no values) gives its parameter count
(`legacy_layout`), and that count names the model it most likely holds (`other_model`): the
zoo's specs and Keras's other published MobileNet widths, from tables, without building any.
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


def legacy_layout(path: Path) -> tuple[int | None, int]:
    """(layers with weights, parameters) of a legacy ``.h5`` weights file, as Keras's loader
    counts them, from the datasets' shapes (20-80 ms; no value is read); (None, 0) for another
    layout. `Damaged` when HDF5 refuses the file or its layer list does not match it."""
    import math

    try:
        with open_hdf5(path) as f:
            legacy_model = "layer_names" not in f.attrs and "model_weights" in f
            group = f["model_weights"] if legacy_model else f
            if "layer_names" not in group.attrs:
                return None, 0
            layers = params = 0
            for name in group.attrs["layer_names"]:
                layer = group[name.decode() if isinstance(name, bytes) else name]
                weight_names = layer.attrs.get("weight_names", [])
                if len(weight_names):
                    layers += 1
                    for w in weight_names:
                        params += math.prod(layer[w.decode() if isinstance(w, bytes) else w].shape)
            return layers, params
    except OSError as exc:
        raise Damaged(hdf5_reason(exc)) from None
    except (KeyError, ValueError, TypeError) as exc:  # names listed but not there
        raise Damaged(f"its layer list does not match its contents ({exc})") from None


# Keras's published MobileNet widths that the zoo does not list (it lists alpha 1.0): (with top,
# without top) parameters as keras.applications builds them, so a file of another width, saved
# under the alpha-1.0 name, is named from its count (tests/test_weights_other_model.py builds
# the small ones to check).
WIDTH_VARIANTS: dict[tuple[str, str], tuple[int, int]] = {
    ("mobilenet", "alpha 0.25"): (475_544, 218_544),
    ("mobilenet", "alpha 0.5"): (1_342_536, 829_536),
    ("mobilenet", "alpha 0.75"): (2_601_976, 1_832_976),
    ("mobilenet_v2", "alpha 0.35"): (1_691_208, 410_208),
    ("mobilenet_v2", "alpha 0.5"): (1_987_224, 706_224),
    ("mobilenet_v2", "alpha 0.75"): (2_663_064, 1_382_064),
    ("mobilenet_v2", "alpha 1.3"): (5_431_048, 3_766_048),
    ("mobilenet_v2", "alpha 1.4"): (6_156_712, 4_363_712),
    ("mobilenet_v3_small", "alpha 0.75"): (2_051_552, 583_160),
    ("mobilenet_v3_small", "minimalistic"): (2_056_848, 441_000),
    ("mobilenet_v3_large", "alpha 0.75"): (4_012_616, 1_808_736),
    ("mobilenet_v3_large", "minimalistic"): (3_948_688, 1_437_608),
}


def likely_models(params: int) -> list[str]:
    """The models whose weights files hold exactly ``params`` parameters, as said in a message:
    ``'resnet50' (with top)``, ``'mobilenet' at alpha 0.5 (without top)``."""
    from kerascope.zoo.applications import NOTOP_PARAMS
    from kerascope.zoo.registry import all_specs

    counts = [((f"'{s.name}'"), (s.params, NOTOP_PARAMS.get(s.name))) for s in all_specs()]
    counts += [(f"'{name}' at {variant}", n) for (name, variant), n in WIDTH_VARIANTS.items()]
    return [f"{who} ({top})" for who, pair in counts
            for top, n in zip(("with top", "without top"), pair, strict=True)
            if n == params]  # fmt: skip


def other_model(path: Path, name: str, expected: set[int]) -> str | None:
    """What a legacy file holds when it is not model ``name``'s (whose files hold one of the
    ``expected`` parameter counts), as the end of "it holds ...": the likely model by its
    count, with the counts. None for a file with an expected count or another layout.
    `Damaged` as `legacy_layout`."""
    return held_weights(*legacy_layout(path), name, expected)


def held_weights(layers: int | None, params: int, name: str, expected: set[int]) -> str | None:
    """`other_model` of a layout already read (`legacy_layout`)."""
    if layers is None or not expected or params in expected:
        return None
    want = " or ".join(f"{n:,}" for n in sorted(expected))
    held = f"{params:,} parameters in {layers} layers, where '{name}' has {want}"
    likely = likely_models(params)
    return f"the weights of {' or '.join(likely)}: {held}" if likely else (
        f"{held}: another model's weights")  # fmt: skip


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
