"""One loaded classifier per model for the functional API's repeated calls.

``kerascope.classify("a.jpg")`` names its model, so each call used to build the network and
compile its forward again: about 5 s for Lite0 on a GPU, far more than the call's own work.
`shared_model` hands the same `Classifier` (and so its compiled forwards) to every call that
names the same model with the same weights, and loads again when a file behind it changed (a
run retrained, weights cached or replaced). It keeps the last `KEPT` models, each holding its
weights in memory; a `Classifier` passed by the caller is never touched.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import Any

from kerascope.zoo.models import Classifier, load_model, names_a_file

KEPT = 2
_kept: collections.OrderedDict[tuple, Classifier] = collections.OrderedDict()
_lock = threading.Lock()  # guards the two dicts, never held while a model loads
_loading: dict[tuple, threading.Lock] = {}


def shared_model(name_or_path: str | os.PathLike, weights: Any = None) -> Classifier:
    """`load_model(name_or_path, weights)`, or the classifier a call before loaded from the
    same files. Loading one model (seconds; a first download) holds back only the threads
    that want that model."""
    key = _key(name_or_path, weights)
    with _lock:
        clf = _kept.pop(key, None)
        if clf is not None:
            _kept[key] = clf  # the newest last
            return clf
        loading = _loading.setdefault(key, threading.Lock())
    with loading:
        with _lock:
            clf = _kept.get(key)  # another thread loaded it meanwhile
        if clf is None:
            clf = load_model(name_or_path, weights)
        after = _key(name_or_path, weights)  # as loaded: a first load may port weights
        with _lock:
            _loading.pop(key, None)
            _kept.pop(key, None)
            _kept[after] = clf
            while len(_kept) > KEPT:
                _kept.popitem(last=False)
    return clf


def forget_shared_models() -> None:
    """Drop every kept classifier (their memory goes with the caller's last reference)."""
    with _lock:
        _kept.clear()


def _stat(path: Path) -> tuple | None:
    try:
        found = path.stat()
    except OSError:
        return None
    # the inode and ctime too: an atomic rewrite of the same size within a coarse mtime
    return (str(path.resolve()), found.st_ino, found.st_mtime_ns, found.st_ctime_ns,
            found.st_size)  # fmt: skip


def _key(name_or_path: str | os.PathLike, weights: Any) -> tuple:
    """What the loaded classifier depends on: the model's files and their versions."""
    text = str(name_or_path)
    explicit = None if weights is None else _stat(Path(weights)) or str(weights)
    path = Path(text).expanduser()
    if names_a_file(name_or_path):
        folder = path if path.is_dir() else path.parent
        model = path / "model.keras" if path.is_dir() else path
        files = (model, folder / "labels.json", folder / "config.yaml", folder / "multilabel.json")
        return ("file", str(path.resolve()), *map(_stat, files), explicit)
    from kerascope.zoo import weights as weights_mod
    from kerascope.zoo.models import zoo_spec

    spec = zoo_spec(text)  # an unknown name or a missing path: load_model's message
    cached = weights_mod.cached_file(spec)
    package = weights_mod.package_file(spec)
    return ("zoo", spec.name, explicit, str(cached), _stat(cached),
            None if package is None else _stat(package))  # fmt: skip
