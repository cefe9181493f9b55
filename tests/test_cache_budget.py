"""The decoded-image cache stays within its limit, least recently used first, and never takes
one used within the hour (another training may be reading it)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from kerascope.data.cache_budget import make_room


def _cache(folder, name: str, mb: int, hours_ago: float):
    name = name * 32  # a cache_key
    pixels = folder / f"{name}.npy"
    np.lib.format.open_memmap(pixels, mode="w+", dtype=np.uint8, shape=(mb, 1 << 20)).flush()
    mask = folder / f"{name}.filled.npy"
    np.save(mask, np.zeros(mb, np.uint8))
    when = time.time() - hours_ago * 3600
    for path in (pixels, mask):
        os.utime(path, (when, when))
    return pixels


def test_least_recently_used_caches_go_until_the_new_one_fits(tmp_path, caplog):
    oldest = _cache(tmp_path, "a", 4, hours_ago=30)
    older = _cache(tmp_path, "b", 4, hours_ago=20)
    recent = _cache(tmp_path, "c", 4, hours_ago=0.1)
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        removed = make_room(tmp_path, needed=5 << 20, limit=12 << 20)
    assert removed == [oldest, older]  # 12 MB + 5 MB over 12: a, then b (c is in use)
    assert not oldest.exists() and not oldest.with_suffix(".filled.npy").exists()
    assert recent.exists()
    assert "removed 2 decoded-image cache(s)" in caplog.text
    assert make_room(tmp_path, needed=1 << 20, limit=12 << 20) == []  # fits now: nothing goes


def test_only_kerascopes_caches_are_counted_and_no_limit_is_allowed(tmp_path, monkeypatch):
    """The review: a user's own .npy in a folder given as cache= was deleted; inf crashed."""
    from kerascope.data.cache_budget import limit_bytes

    theirs = tmp_path / "features.npy"
    np.save(theirs, np.zeros((8, 1 << 20), np.uint8))
    os.utime(theirs, (0, 0))
    ours = _cache(tmp_path, "b", 2, hours_ago=30)
    assert make_room(tmp_path, needed=1 << 20, limit=1 << 20) == [ours]
    assert theirs.exists()
    for value, limit in (("inf", None), ("0", None), ("2.5", 2_500_000_000)):
        monkeypatch.setenv("KERASCOPE_DATASET_CACHE_GB", value)
        assert limit_bytes() == limit
    monkeypatch.setenv("KERASCOPE_DATASET_CACHE_GB", "nan")
    assert limit_bytes() == 20_000_000_000
