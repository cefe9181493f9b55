"""Bottleneck features: what a zoo backbone sees in each image, computed once and cached in HDF5.

Training a small head on stored features (the seed's ``gap_%s.h5``) is minutes instead of hours,
but only if the store never lies: every row is keyed by the SHA-1 of its file's bytes (cheap next
to a forward pass), every group records the SHA-256 of the weights and the settings that made it,
so a changed image, weights file or setting recomputes only what it affects. This module reads a
finished store (`FeatureStore`); `extract` writes one, `groups` brings each group up to date.

A branch is ``Input(image_size) -> Resizing(backbone size) -> backbone [-> layer] -> pool``; the
``features`` recipe's model (``train.recipes``) is built from the same branches, so cached
features and the saved model agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.bottleneck.branches import (
    FeatureCacheError,
    FeatureSpec,
)

SPLITS = ("train", "validation", "test")
FORMAT = 1
Progress = Callable[[str, int, int], None]  # (backbone, rows done, rows in all)


@dataclass
class Rows:
    """One entry per dataset image, in split order; ``sha1`` keys its features."""

    paths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    sha1: np.ndarray
    classes: list[str]

    @classmethod
    def of(cls, dataset: Any) -> Rows:
        items = [(p, y, SPLITS.index(s)) for s in SPLITS for p, y in dataset.splits.get(s, [])]
        paths = [str(p) for p, _, _ in items]
        with ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
            sha = list(pool.map(lambda p: hashlib.sha1(Path(p).read_bytes()).hexdigest(), paths))
        return cls(
            paths,
            np.array([y for _, y, _ in items], np.int32),
            np.array([s for _, _, s in items], np.uint8),
            np.array(sha, dtype="S40"),
            list(dataset.classes),
        )


@dataclass
class FeatureSet:
    """Features of one group (optionally one split) with what is needed to train on them."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    splits: np.ndarray  # split name per row
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> FeatureSet:
        keep = np.flatnonzero(self.splits == name)
        paths = [self.paths[i] for i in keep]
        sub = (self.features[keep], self.labels[keep], paths, self.splits[keep])
        return FeatureSet(*sub, self.classes, self.info)


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


class FeatureStore:
    """Read side of a feature file; refuses groups an interrupted extraction left unfinished.

    ``computed`` maps each group key to the rows the extraction that returned this store
    actually ran through a backbone (0 when everything came from the cache); ``skipped``: the
    (file, reason) pairs its scan left out (``skip_bad``).
    """

    def __init__(self, path: str | os.PathLike, computed: dict[str, int] | None = None,
                 skipped: list[tuple[str, str]] | None = None):  # fmt: skip
        self.path = Path(path)
        self.computed = dict(computed or {})
        self.skipped = list(skipped or [])
        if self.path.is_dir():
            raise FeatureCacheError(f"'{self.path}' is a folder, not a feature file")
        if not self.path.is_file():
            again = " run extract_features again to finish it"
            if partial_path(self.path).is_file():
                raise FeatureCacheError(
                    f"'{self.path}' is not complete: an extraction was interrupted (its progress "
                    f"is in '{partial_path(self.path)}');{again}"
                )
            raise FeatureCacheError(
                f"no feature file '{self.path}' (make it with extract_features)"
            )

    @contextmanager
    def _open(self) -> Iterator[Any]:
        """The file, read-only; a file HDF5 cannot open or read (truncated, not HDF5) is one
        line naming it."""
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                yield f
        except OSError as exc:
            raise FeatureCacheError(unreadable(self.path, exc)) from None

    def row_shape(self, key: str) -> tuple[int, ...]:
        """The shape of one image's features in group ``key`` (``(4, 4, 512)`` unpooled)."""
        with self._open() as f:
            return tuple(int(d) for d in f[key]["features"].shape[1:])

    def keys(self) -> list[str]:
        with self._open() as f:
            return sorted(f)

    def info(self, key: str) -> dict[str, Any]:
        with self._open() as f:
            return {k: _attr(v) for k, v in f[key].attrs.items()}

    def load(
        self,
        backbone: str,
        layer: str | None = None,
        pool: str = "avg",
        image_size: int | None = None,
        split: str | None = None,
    ) -> FeatureSet:
        """The features of one group; ``backbone`` may also be a full key from ``keys()``."""
        key = (
            backbone if "," in backbone else FeatureSpec.make(backbone, layer, pool, image_size).key
        )
        with self._open() as f:
            if key not in f:
                held = ", ".join(k for k in f) or "nothing"
                raise FeatureCacheError(
                    f"no features for '{key}' in '{self.path}' (it holds: {held}); "
                    "run extract_features with these settings"
                )
            g = f[key]
            done = g["done"][:]
            if not (g.attrs.get("complete", False) and done.all()):
                raise FeatureCacheError(
                    f"features for '{key}' in '{self.path}' are incomplete ({int(done.sum())}/"
                    f"{len(done)} rows): an extraction was interrupted; run extract_features "
                    "again to finish it"
                )
            names = json.loads(g.attrs["splits"])
            out = FeatureSet(
                g["features"][:],
                g["label"][:].astype(np.int64),
                [p.decode() if isinstance(p, bytes) else p for p in g["path"][:]],
                np.array([names[i] for i in g["split"][:]]),
                json.loads(g.attrs["classes"]),
                {k: _attr(v) for k, v in g.attrs.items()},
            )
        return out.split(split) if split else out


def _attr(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def unreadable(path: Path, exc: BaseException | None) -> str:
    text = str(exc).splitlines()[0] if exc is not None and str(exc) else ""
    inner = re.search(r"\(([^()]*)\)\s*$", text)  # h5py: "Unable to ... (the reason)"
    why = f" ({inner[1] if inner else text})" if text else ""
    return (f"'{path}' is not a readable feature file{why}: it is truncated or not HDF5, and "
            "is kept as it is: move it away (or delete it) to compute the features again, or "
            "choose another output")  # fmt: skip
