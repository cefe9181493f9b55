"""`kerascope models verify`: each weights file of a zoo model checked against Keras's
published hash (or, where none is published, its layers' parameters, or the checksum recorded
when it was ported), one row per file, whatever the file's trouble.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from kerascope.zoo.registry import ModelSpec, WeightsSource, all_specs
from kerascope.zoo.weight_files import (
    BAD_CONTENT,
    NOT_A_FILE,
    CacheState,
    Damaged,
    held_weights,
    legacy_layout,
    os_reason,
    other_model,
)
from kerascope.zoo.weights import cache_problem, cache_state, least_params


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
        return self.status not in PASSING_STATUSES


# Not failures: a file that matches, none there, or one that nothing can be compared with.
PASSING_STATUSES = ("OK", "not cached", "no published hash", "no checksum recorded")
# The rest: the hash or recorded checksum differs, or what `cache_state` found instead.
CHECK_STATUSES = (*PASSING_STATUSES, "MISMATCH", *NOT_A_FILE, *BAD_CONTENT)


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
    Files without either (MobileNet V1/V2) get their layers' parameters counted. Each file is
    one `FileCheck`, whatever is wrong with another: a loop, a folder, an unreadable file.
    """
    checks = []
    for kind, source in weight_files(spec):
        state = cache_state(spec, include_top=source is spec.weights)
        checks.append(_check(spec, kind, source, state))
    return checks


def _check(spec: ModelSpec, kind: str, source: WeightsSource, state: CacheState) -> FileCheck:
    path = state.path
    if not state.present:
        return FileCheck(spec.name, kind, path, "not cached")
    if state.status == "unreadable":
        return FileCheck(spec.name, kind, path, state.status,
                         f"{state.detail}: make it readable, or delete it")  # fmt: skip
    if state.status in NOT_A_FILE:
        return FileCheck(spec.name, kind, path, state.status, f"{state.detail}: remove it")
    if state.status in ("empty", "not HDF5", "damaged"):  # certain: nothing worth hashing
        return FileCheck(spec.name, kind, path, state.status, state.detail)
    try:
        if source.converter:
            check = _check_recorded(spec, kind, path)
        elif source.file_hash:
            check = _check_hash(spec, kind, path, source.file_hash)
        else:
            check = _check_layout(spec, kind, path, include_top=source is spec.weights)
    except OSError as exc:  # gone or made unreadable since it was judged
        return FileCheck(spec.name, kind, path, "unreadable", f"unreadable: {os_reason(exc)}")
    if state.status == "wrong size" and check.failed:  # the size said it first
        if source.file_hash:  # the counts of `_check_layout` say more than the size
            held = _held(spec, path, source is spec.weights)
            detail = (f"{state.detail}: it holds {held}" if held
                      else f"{state.detail}: another model's file? ({check.detail})")  # fmt: skip
            return replace(check, status=state.status, detail=detail)
        return replace(check, status=state.status)
    return check


def _held(spec: ModelSpec, path: Path, include_top: bool) -> str | None:
    """`other_model` for ``spec``'s file, None where it cannot tell (another layout, damaged)."""
    try:
        return other_model(path, spec.name, _expected(spec, include_top))
    except (Damaged, OSError):
        return None


def _expected(spec: ModelSpec, include_top: bool) -> set[int]:
    """The parameter counts a file of ``spec`` may hold: a with-top file serves both."""
    return {spec.params, least_params(spec, include_top)} - {None}


def _check_hash(spec: ModelSpec, kind: str, path: Path, file_hash: str) -> FileCheck:
    algorithm = hash_algorithm(file_hash)
    actual = file_digest(path, algorithm)
    if actual == file_hash:
        return FileCheck(spec.name, kind, path, "OK", f"{algorithm} {actual}")
    detail = f"{algorithm} expected {file_hash}, got {actual}"
    return FileCheck(spec.name, kind, path, "MISMATCH", detail)


def _check_layout(spec: ModelSpec, kind: str, path: Path, include_top: bool) -> FileCheck:
    """No hash to compare with: count the parameters the file's layers hold (their shapes,
    not their values; 20-80 ms) against the model's, with top or (either file) without."""
    none = "Keras publishes none for this file"
    expected = _expected(spec, include_top)
    try:
        layers, params = legacy_layout(path)
    except Damaged as exc:
        return FileCheck(spec.name, kind, path, "damaged", f"damaged: {exc}")
    if layers is None:  # another layout: nothing to count
        return FileCheck(spec.name, kind, path, "no published hash", none)
    held = held_weights(layers, params, spec.name, expected)
    if held is None:
        return FileCheck(spec.name, kind, path, "no published hash",
                         f"{none}; it holds the model's {params:,} parameters in {layers} "
                         "layers")  # fmt: skip
    return FileCheck(spec.name, kind, path, "MISMATCH", f"{none}, and it holds {held}")


def _check_recorded(spec: ModelSpec, kind: str, path: Path) -> FileCheck:
    problem = cache_problem(path)
    if problem is None:
        return FileCheck(spec.name, kind, path, "OK", "sha256 as recorded when it was ported")
    if problem == "no checksum recorded":
        return FileCheck(spec.name, kind, path, problem, "ported by an older kerascope")
    return FileCheck(spec.name, kind, path, "MISMATCH", problem)


def verify_cached() -> list[FileCheck]:
    """`verify` for every model, keeping only the files that are in the cache (or something
    that is not a file where one would be)."""
    return [c for spec in all_specs() for c in verify(spec) if c.status != "not cached"]
