"""Where a zoo model's weights come from, tried in a fixed order with one clear failure message.

Order: an explicit file > the local cache > an installed package resource (ported once into
the cache) > the URL, through Keras's own hash-checked ``get_file`` (which caches in the same
folder). Without network, a model whose weights are not cached fails with a `WeightsError`
that names the file, where to put it and which models work offline.

Keras publishes two files per application: with its classifier and without (``*_notop.h5``,
for ``include_top=False``); both are known here, with Keras's names and hashes. A file found in
the cache is used as it is (copying a file there by hand is the usual offline case; hashing
500 MB on every start is not free): `verify` checks the cache on demand. What is at a cache path
is judged cheaply, without reading any weights (`cache_state`): a link loop, a folder, an
unreadable, empty, non-HDF5 or damaged file, or one too small or too large for the model's
parameters is not "cached", so `kerascope models` and the offline list do not count it, and
loading names it in one line instead of trying to download over it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from kerascope.config import cache_dir
from kerascope.errors import WeightsError
from kerascope.files import OutputError, atomic_path, write_json
from kerascope.zoo import cache_folder
from kerascope.zoo.cache_folder import CacheFolderError
from kerascope.zoo.registry import ModelSpec, all_specs
from kerascope.zoo.weight_files import (
    NOT_A_FILE,
    CacheState,
    Damaged,
    file_kind,
    held_weights,
    judge_file,
    legacy_layout,
    os_reason,
)

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


def least_params(spec: ModelSpec, include_top: bool) -> int | None:
    """The parameters the model's file must hold (with top: the spec's; without: the table's)."""
    if include_top or spec.weights.notop is None:
        return spec.params or None
    from kerascope.zoo.applications import NOTOP_PARAMS

    return NOTOP_PARAMS.get(spec.name)


def cache_state(spec: ModelSpec, include_top: bool = True) -> CacheState:
    """Judge the cached weights file of ``spec`` (with or without top) in about a millisecond.

    A with-top file also serves the model without top (`zoo.models`), so either file may hold
    up to the with-top model's parameters.
    """
    source = spec.weights.for_top(include_top)
    return judge_file(
        cached_file(spec, include_top),
        least_params=least_params(spec, include_top),
        most_params=spec.params or None,
        recorded_size=_recorded_size(cached_file(spec, include_top)) if source.converter else None,
    )


def _recorded_size(path: Path) -> int | None:
    try:
        return int(json.loads(checksum_file(path).read_text(encoding="utf-8"))["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record (an older port) or a damaged one: `cache_problem` says which


def is_cached(spec: ModelSpec, include_top: bool = True) -> bool:
    """A plausible weights file is at the cache path (`cache_state`), not just any file."""
    return cache_state(spec, include_top).usable


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
    """Run the spec's converter into a temp file, fsync, rename, then record its checksum.

    A cache folder that cannot be written (a file, read-only, not creatable) does not stop a
    model whose weights ship in a package: they are ported into the user's own temp folder
    (`cache_folder.port_outside`), checked and reused by later runs like the cache's file.
    """
    target = cached_file(spec)
    try:
        cache_folder.make(target.parent)
        _port(spec, source, target)
    except CacheFolderError as exc:
        why = str(exc)
    except OutputError as exc:  # the folder is there, but the write failed
        why = cache_folder.message(cache_folder.os_problem(exc, target.parent), target.parent)
    else:
        return target
    return cache_folder.port_outside(
        spec, why, target.name, lambda path: _port(spec, source, path), _intact
    )


def _port(spec: ModelSpec, source: Path, target: Path) -> None:
    """The converter's file at ``target``, written atomically, and its size and SHA-256."""
    module, _, attr = spec.weights.converter.partition(":")
    convert = getattr(importlib.import_module(module), attr)
    with atomic_path(target, suffix=".weights.h5") as tmp:  # Keras wants that suffix
        convert(spec.name, source, tmp)
    _record(target)


def _intact(path: Path) -> bool:
    """A port at ``path`` whose recorded size and SHA-256 match (`cache_problem`)."""
    try:
        return path.is_file() and cache_problem(path) is None
    except OSError:
        return False


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
            with contextlib.suppress(OSError):  # a read-only cache: trusted, not recorded
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
    try:  # Keras's own mkdir would say "[Errno 17] File exists" for a file there
        cache_folder.make(cached_file(spec, include_top).parent)
    except CacheFolderError as exc:
        raise WeightsError(_missing_message(spec, "not cached", include_top, str(exc))) from None

    def announce() -> None:  # once bytes arrive: offline, a failure stays one line
        _log.warning("downloading %s from %s", source.filename, source.url)

    try:
        with contextlib.redirect_stdout(_DownloadOutput(announce)):
            path = keras.utils.get_file(
                source.filename,
                source.url,
                cache_subdir=str(cache_dir()),
                file_hash=source.file_hash,
            )
    except Exception as exc:  # get_file raises bare Exception on network errors
        raise WeightsError(_missing_message(spec, _download_failure(exc), include_top)) from None
    return Path(path)


class _DownloadOutput(io.TextIOBase):
    """Stdout while Keras's ``get_file`` runs. Its "Downloading data from URL" line is dropped
    (without network the failure is then our one line, not two), and its progress bar goes to
    stderr (stdout may be a command's JSON), after one line naming the file."""

    def __init__(self, announce: Callable[[], None]) -> None:
        super().__init__()
        self._announce: Callable[[], None] | None = announce

    def write(self, text: str) -> int:
        if text.startswith(("Downloading data from", "A local file was found")):
            return len(text)
        if self._announce is not None:
            announce, self._announce = self._announce, None
            announce()
        sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:  # Keras draws its bar in place on a terminal only
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False


def _download_failure(exc: BaseException) -> str:
    """Keras's "URL fetch failure on URL: None -- [Errno -2] Name or service not known" as the
    reason of our message (which names the URL once)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if m := re.match(r"URL fetch failure on \S+: (\S+) -- (.*)", first):
        code, why = m[1], re.sub(r"^\[Errno -?\d+\]\s*", "", m[2]).strip()
        why = f"HTTP {code} {why}" if code.isdigit() else why or "no answer"
        return f"not cached, and downloading it failed ({why})"
    if "hash does not match" in first:
        return "not cached, and the downloaded file does not match Keras's published hash"
    return f"not cached, and downloading it failed ({first})"


def _missing_message(
    spec: ModelSpec, reason: str, include_top: bool = True, cache: str | None = None
) -> str:
    """``cache``: what is wrong with the cache folder (`cache_folder.message`), found when it
    was made; else judged here. Then "Put FILE at PATH" could not be done, so it says that."""
    offline = ", ".join(offline_models()) or "none"
    source = spec.weights.for_top(include_top)
    where = cached_file(spec, include_top)
    fetch = f" (download: {source.url})" if source.url else ""
    trouble = cache_folder.problem(where.parent)
    cache = cache or (cache_folder.message(trouble, where.parent) if trouble else None)
    if cache is not None:
        return (f"weights for '{spec.name}' are not available: {reason}, and {cache}; or pass "
                f"--weights FILE. Models that work offline here: {offline}")  # fmt: skip
    return (
        f"weights for '{spec.name}' are not available: {reason}. Put {source.filename}"
        f"{fetch} at {where}, or pass --weights FILE. Models that work offline here: {offline}"
    )


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a weights file, said as the rest of a sentence.

    A directory, FIFO or device is named as such: "does not exist" sent users looking for a
    typo in a path that is there (and reading /dev/zero or a FIFO would never end).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:  # a permission, a symlink loop, a name too long
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop: point the link at the weights file, or pass that file"
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(mode):
        return "is a directory: pass the weights file inside it (.h5 or .weights.h5)"
    kind = file_kind(mode)
    return f"is {kind}, not a regular file: save the weights to a file and pass that file"


def _check_readable(path: Path) -> None:
    """Say "cannot read FILE: permission denied" before HDF5 says it as "[Errno 13] Unable to
    synchronously open file (... errno = 13 ...)"."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise WeightsError(f"cannot read '{path}': {os_reason(exc)}") from None


def _unusable_cache(spec: ModelSpec, state: CacheState, include_top: bool) -> WeightsError:
    """The one line for something at the cache path that is no weights file to read, or a file
    that cannot be one: what it is and what to do."""
    source = spec.weights.for_top(include_top)
    fetch = f" (download: {source.url})" if source.url else ""
    if state.status == "unreadable":
        return WeightsError(
            f"cannot read '{state.path}': {state.detail.removeprefix('unreadable: ')} (the "
            f"cached weights of '{spec.name}': make the file readable, or delete it and put "
            f"{source.filename}{fetch} there)"
        )
    if state.status in NOT_A_FILE:
        return WeightsError(
            f"the weights of '{spec.name}' belong at '{state.path}', which is {state.detail}: "
            f"remove it and put {source.filename}{fetch} there, or pass --weights FILE"
        )
    what = state.detail if state.status == "damaged" else f"unusable: {state.detail}"
    return WeightsError(
        f"cached weights '{state.path}' for '{spec.name}' are {what}; delete the file and put "
        f"{source.filename}{fetch} there, or pass --weights FILE"
    )


def _refuse_other_model(
    spec: ModelSpec, state: CacheState, include_top: bool, given: bool = False
) -> None:
    """A file too small or too large for ``spec`` whose layers, counted, hold another model's
    parameters: one line naming the likely model (`held_weights`), since Keras's loader says
    only that some layer's shape differs. Nothing when the count cannot tell (left to loading).
    """
    if state.status != "wrong size":
        return
    expected = {spec.params, least_params(spec, include_top)} - {None}
    try:
        layers, params = legacy_layout(state.path)
    except (Damaged, OSError):
        return
    held = held_weights(layers, params, spec.name, expected)
    if held is None or params == least_params(spec, False):  # its own _notop file: loading
        return  # says so, and what to do
    if given:
        raise WeightsError(f"cannot load weights '{state.path}' into '{spec.name}': it holds "
                           f"{held}")  # fmt: skip
    raise WeightsError(not_its_own(spec, state.path, include_top, f"it holds {held}"))


def put_there(spec: ModelSpec, include_top: bool) -> str:
    """What to do about a cached file that cannot serve: "delete the file and put X there"."""
    source = spec.weights.for_top(include_top)
    fetch = f" (download: {source.url})" if source.url else ""
    return f"delete the file and put {source.filename}{fetch} there, or pass --weights FILE"


def not_its_own(spec: ModelSpec, path: Path, include_top: bool, what: str) -> str:
    """The line for a cached file that is not ``spec``'s (``what``: "it holds ..."), with what
    to do (`put_there`)."""
    return (f"cached weights '{path}' for '{spec.name}' are not its own: {what}; "
            f"{put_there(spec, include_top)}")  # fmt: skip


def is_cached_path(spec: ModelSpec, path: Path, include_top: bool = True) -> bool:
    """Whether ``path`` is the cache path a model with (or without) top loads from, not a file
    given with --weights (its own ``_notop`` file given for a model with top is one)."""
    return os.path.abspath(path) == os.path.abspath(cached_file(spec, include_top))


def layout_held(spec: ModelSpec, path: Path, include_top: bool) -> str | None:
    """Whose weights a legacy file holds, from its layers' shapes (`held_weights`; 20-80 ms),
    or None where the count cannot tell (another layout, a damaged file, the model's own)."""
    try:
        layers, params = legacy_layout(path)
    except (Damaged, OSError):
        return None
    expected = {spec.params, least_params(spec, include_top)} - {None}
    return held_weights(layers, params, spec.name, expected)


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
        _check_readable(path)
        most = spec.params or None
        _refuse_other_model(spec, judge_file(path, least_params(spec, include_top), most),
                            include_top, given=True)  # fmt: skip
        return path
    own_file = spec.weights.for_top(include_top) is spec.weights  # packaged/ported: one file
    source = package_file(spec) if own_file else None
    state = cache_state(spec, include_top)
    if state.status in NOT_A_FILE:  # a loop, a folder...: said, never downloaded over
        raise _unusable_cache(spec, state, include_top)
    if state.present:
        if own_file and spec.weights.converter:
            return _cached_or_ported(spec, source)  # checks its recorded size and SHA-256
        if state.status in ("empty", "not HDF5", "damaged"):
            raise _unusable_cache(spec, state, include_top)
        _refuse_other_model(spec, state, include_top)  # "wrong size": whose file is it?
        return state.path  # else loading says which layer does not match
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
