"""Where a zoo model's weights come from, tried in a fixed order with one clear failure message.

Order: an explicit file > the local cache > an installed package resource (ported once into
the cache) > the URL, through Keras's own hash-checked ``get_file`` (which caches in the same
folder). Without network, a model whose weights are not cached fails with a `WeightsError`
that names the file, where to put it and which models work offline.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from pathlib import Path

from kerascope.config import cache_dir
from kerascope.errors import KerascopeError
from kerascope.zoo.registry import ModelSpec, all_specs


class WeightsError(KerascopeError, RuntimeError):
    """Weights that cannot be found or fetched; the message says what to do."""


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


def cached_file(spec: ModelSpec) -> Path:
    return cache_dir() / spec.weights.filename


def is_cached(spec: ModelSpec) -> bool:
    return cached_file(spec).is_file()


def works_offline(spec: ModelSpec) -> bool:
    """True when the weights are cached or can be made from an installed package."""
    return is_cached(spec) or package_file(spec) is not None


def offline_models() -> list[str]:
    return [s.name for s in all_specs() if works_offline(s)]


def _port_from_package(spec: ModelSpec, source: Path) -> Path:
    """Run the spec's converter into a temp file, then rename: a crash never leaves half a file."""
    target = cached_file(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    module, _, attr = spec.weights.converter.partition(":")
    convert = getattr(importlib.import_module(module), attr)
    fd, tmp = tempfile.mkstemp(suffix=".weights.h5", dir=target.parent)
    os.close(fd)
    try:
        convert(spec.name, source, Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _download(spec: ModelSpec) -> Path:
    import keras

    source = spec.weights
    try:
        path = keras.utils.get_file(
            source.filename,
            source.url,
            cache_subdir=str(cache_dir()),
            file_hash=source.file_hash,
        )
    except Exception as exc:  # get_file raises bare Exception on network errors
        raise WeightsError(_missing_message(spec, reason=str(exc).splitlines()[0])) from None
    return Path(path)


def _missing_message(spec: ModelSpec, reason: str) -> str:
    offline = ", ".join(offline_models()) or "none"
    where = cached_file(spec)
    fetch = f" (download: {spec.weights.url})" if spec.weights.url else ""
    return (
        f"weights for '{spec.name}' are not available: {reason}. Put {spec.weights.filename}"
        f"{fetch} at {where}, or pass --weights FILE. Models that work offline here: {offline}"
    )


def resolve(spec: ModelSpec, explicit: str | os.PathLike | None = None) -> Path:
    """Return a local weights file for ``spec``, porting or downloading it if needed."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file '{path}' does not exist")
        return path
    if is_cached(spec):
        return cached_file(spec)
    source = package_file(spec)
    if source is not None and spec.weights.converter:
        return _port_from_package(spec, source)
    if source is not None:
        return source
    if spec.weights.url and os.environ.get("KERASCOPE_OFFLINE") != "1":
        return _download(spec)
    raise WeightsError(_missing_message(spec, reason="not cached and no download source"))
