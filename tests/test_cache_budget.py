"""The decoded-image cache stays within its limit, least recently used first, and never takes
one used within the hour (another training may be reading it)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from kerascope.data.cache_budget import make_room


def _cache(folder, name: str, mb: int, hours_ago: float):
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
    assert not oldest.exists() and not (tmp_path / "a.filled.npy").exists()
    assert recent.exists()
    assert "removed 2 decoded-image cache(s)" in caplog.text
    assert make_room(tmp_path, needed=1 << 20, limit=12 << 20) == []  # fits now: nothing goes
