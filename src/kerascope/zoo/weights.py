"""Where a zoo model's weights come from, tried in a fixed order with one clear failure message.

Order: an explicit file > the local cache > an installed package resource (ported once into
the cache) > the URL, through Keras's own hash-checked ``get_file`` (which caches in the same
folder). Without network, a model whose weights are not cached fails with a `WeightsError`
that names the file, where to put it and which models work offline.

Keras publishes two files per application: with its classifier and without (``*_notop.h5``,
for ``include_top=False``); both are known here, with Keras's names and hashes. A file found in
the cache is used as it is (copying a file there by hand is the usual offline case; hashing
500 MB on every start is not free): `verify` checks the cache on demand.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kerascope.config import cache_dir
from kerascope.errors import WeightsError
from kerascope.files import atomic_path, write_json
from kerascope.zoo.registry import ModelSpec, WeightsSource, all_specs

# What happened that the caller may want to say (the command prints it; DESIGN.md).
_log = logging.getLogger(__name__)


def package_file(spec: ModelSpec) -> Path | None:
    """The weights file inside an installed distribution, if that distribution is installed."""
    source = spec.weights
    if not source.package:
        return None
    found = importlib.util.find_spec(source.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / source.package_file
    return path if path.is_file() else None


def cached_file(spec: ModelSpec, include_top: bool = True) -> Path:
    """Where the weights file lives in the cache (Keras's own name, ``_notop`` without top)."""
    return cache_dir() / spec.weights.for_top(include_top).filename


def is_cached(spec: ModelSpec, include_top: bool = True) -> bool:
    return cached_file(spec, include_top).is_file()


def works_offline(spec: ModelSpec) -> bool:
    """True when the weights are cached or can be made from an installed package."""
    return is_cached(spec) or package_file(spec) is not None


def offline_models() -> list[str]:
    return [s.name for s in all_specs() if works_offline(s)]


def checksum_file(path: Path) -> Path:
    """The sidecar beside a ported file: its size and SHA-256, recorded when it was written."""
    return path.with_name(path.name + ".sha256.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _record(path: Path) -> None:
    """Write the sidecar (atomically), so every later load can tell a damaged cache file."""
    write_json(checksum_file(path), {"size": path.stat().st_size, "sha256": _sha256(path)})


def cache_problem(path: Path) -> str | None:
    """Why a cached, ported file does not match what was recorded when it was written, or None.

    The size is compared first (a truncated or emptied file fails without reading it); the
    SHA-256 only when the size matches (35-55 ms for the 19-25 MB Lite0-2 files, warm).
    ``"no checksum recorded"`` for a file written before checksums were kept.
    """
    try:
        recorded = json.loads(checksum_file(path).read_text(encoding="utf-8"))
        size, sha = int(recorded["size"]), str(recorded["sha256"])
    except FileNotFoundError:
        return "no checksum recorded"
    except (OSError, ValueError, KeyError, TypeError):
        return "its checksum record is unreadable"
    actual = path.stat().st_size
    if actual != size:
        return f"it is {actual:,} bytes, {size:,} were written"
    if _sha256(path) != sha:
        return "its content changed since it was written (SHA-256 differs)"
    return None


def _port_from_package(spec: ModelSpec, source: Path) -> Path:
    """Run the spec's converter into a temp file, fsync, rename, then record its checksum."""
    target = cached_file(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    module, _, attr = spec.weights.converter.partition(":")
    convert = getattr(importlib.import_module(module), attr)
    with atomic_path(target, suffix=".weights.h5") as tmp:  # Keras wants that suffix
        convert(spec.name, source, tmp)
    _record(target)
    return target


def _cached_or_ported(spec: ModelSpec, source: Path | None) -> Path:
    """The cached port if it is intact, else a fresh port from the package (said in one line).

    A cache file without a checksum (written by an older kerascope) is ported again once when
    the package is installed: about 2 s, once, and it never blesses a file that may already be
    damaged. Without the package there is nothing better to use, so it is trusted and recorded.
    """
    target = cached_file(spec)
    problem = cache_problem(target)
    if problem is None:
        return target
    if source is None or not spec.weights.converter:
        if problem == "no checksum recorded":
            _record(target)
            return target
        raise WeightsError(
            f"cached weights '{target}' for '{spec.name}' are damaged: {problem}; delete the "
            "file so they are fetched again"
        )
    why = "damaged" if problem != "no checksum recorded" else "unchecked"
    _log.warning(
        "cached weights '%s' are %s (%s); porting them again from the '%s' package",
        target,
        why,
        problem,
        spec.weights.package,
    )
    return _port_from_package(spec, source)


def _download(spec: ModelSpec, include_top: bool = True) -> Path:
    import keras

    source = spec.weights.for_top(include_top)
    try:
        path = keras.utils.get_file(
            source.filename,
            source.url,
            cache_subdir=str(cache_dir()),
            file_hash=source.file_hash,
        )
    except Exception as exc:  # get_file raises bare Exception on network errors
        reason = str(exc).splitlines()[0]
        raise WeightsError(_missing_message(spec, reason, include_top)) from None
    return Path(path)


def _missing_message(spec: ModelSpec, reason: str, include_top: bool = True) -> str:
    offline = ", ".join(offline_models()) or "none"
    source = spec.weights.for_top(include_top)
    where = cached_file(spec, include_top)
    fetch = f" (download: {source.url})" if source.url else ""
    return (
        f"weights for '{spec.name}' are not available: {reason}. Put {source.filename}"
        f"{fetch} at {where}, or pass --weights FILE. Models that work offline here: {offline}"
    )


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a weights file, said as the rest of a sentence.

    A directory, FIFO or device is named as such: "does not exist" sent users looking for a
    typo in a path that is there (and reading /dev/zero or a FIFO would never end).
    """
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:  # a permission, a symlink loop, a name too long
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(mode):
        return "is a directory: pass the weights file inside it (.h5 or .weights.h5)"
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device",
             stat.S_ISSOCK: "a socket"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), "something else")
    return f"is {kind}, not a regular file: save the weights to a file and pass that file"


def resolve(
    spec: ModelSpec, explicit: str | os.PathLike | None = None, include_top: bool = True
) -> Path:
    """Return a local weights file for ``spec``, porting or downloading it if needed.

    ``include_top=False`` asks for the file of the model without its classifier, which Keras
    publishes separately for its applications (``*_notop.h5``: the legacy loader matches layers
    by count, so the with-top file does not load into a model without top).
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file '{path}' {_not_a_file(path)}")
        return path
    own_file = spec.weights.for_top(include_top) is spec.weights  # packaged/ported: one file
    source = package_file(spec) if own_file else None
    if is_cached(spec, include_top):
        if own_file and spec.weights.converter:
            return _cached_or_ported(spec, source)
        return cached_file(spec, include_top)
    if source is not None and spec.weights.converter:
        return _port_from_package(spec, source)
    if source is not None:
        return source
    if not spec.weights.for_top(include_top).url:
        reason = "not cached and no download source"
    elif os.environ.get("KERASCOPE_OFFLINE") == "1":
        reason = "not cached and downloads are off (KERASCOPE_OFFLINE=1)"
    else:
        return _download(spec, include_top)
    raise WeightsError(_missing_message(spec, reason, include_top))


# --- `kerascope models verify`: cached files against the published hashes ----------------------


@dataclass(frozen=True)
class FileCheck:
    """One cached weights file of one model, checked: ``status`` is one of `CHECK_STATUSES`."""

    model: str
    kind: str  # "with top", "without top", or "with and without top" (one file serves both)
    path: Path
    status: str
    detail: str = ""  # what was compared, or why it failed

    @property
    def failed(self) -> bool:
        return self.status == "MISMATCH"


CHECK_STATUSES = ("OK", "MISMATCH", "not cached", "no published hash", "no checksum recorded")


def hash_algorithm(file_hash: str) -> str:
    """The algorithm of a published hash, told by its length as Keras's ``get_file`` tells it."""
    return "sha256" if len(file_hash) == 64 else "md5"


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def weight_files(spec: ModelSpec) -> list[tuple[str, WeightsSource]]:
    """Every file a spec can use, labelled: Keras's with-top and ``_notop`` files, or one."""
    if spec.weights.notop is None:
        return [("with and without top", spec.weights)]
    return [("with top", spec.weights), ("without top", spec.weights.notop)]


def verify(spec: ModelSpec) -> list[FileCheck]:
    """Check each cached file of ``spec`` against the hash Keras publishes for it.

    Loading never hashes a Keras file (a file copied into the cache by hand is the usual
    offline case, and a 500 MB MD5 on every start is not free); this is the check on demand.
    Ported files (EfficientNet-Lite) have no published hash: their recorded SHA-256 is used.
    """
    checks = []
    for kind, source in weight_files(spec):
        path = cache_dir() / source.filename
        if not path.is_file():
            checks.append(FileCheck(spec.name, kind, path, "not cached"))
        elif source.converter:
            checks.append(_check_recorded(spec, kind, path))
        elif not source.file_hash:
            checks.append(FileCheck(spec.name, kind, path, "no published hash",
                                    "Keras publishes none for this file"))  # fmt: skip
        else:
            algorithm = hash_algorithm(source.file_hash)
            actual = file_digest(path, algorithm)
            if actual == source.file_hash:
                checks.append(FileCheck(spec.name, kind, path, "OK", f"{algorithm} {actual}"))
            else:
                detail = f"{algorithm} expected {source.file_hash}, got {actual}"
                checks.append(FileCheck(spec.name, kind, path, "MISMATCH", detail))
    return checks


def _check_recorded(spec: ModelSpec, kind: str, path: Path) -> FileCheck:
    problem = cache_problem(path)
    if problem is None:
        return FileCheck(spec.name, kind, path, "OK", "sha256 as recorded when it was ported")
    if problem == "no checksum recorded":
        return FileCheck(spec.name, kind, path, problem, "ported by an older kerascope")
    return FileCheck(spec.name, kind, path, "MISMATCH", problem)


def verify_cached() -> list[FileCheck]:
    """`verify` for every model, keeping only the files that are in the cache."""
    return [c for spec in all_specs() for c in verify(spec) if c.status != "not cached"]
