"""The decoded-image cache's size limit: least recently used datasets go first.

Every training folder decoded once at a size leaves a memory-mapped ``.npy`` in
``default_cache_dir()`` (a stress run found 281 MB in 334 entries, never removed). Before a new
one is made, the least recently used (``mtime``, touched on every open) are deleted until the
new one fits in ``KERASCOPE_DATASET_CACHE_GB`` (default 20; ``inf`` or 0: no limit). One used
within the last hour is never deleted: another training may be reading it (a process that has it
mapped keeps reading it anyway; Linux frees the file when the last map goes).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path

_log = logging.getLogger(__name__)

ENV_VAR = "KERASCOPE_DATASET_CACHE_GB"
DEFAULT_GB = 20.0
RECENT_S = 3600.0
_OURS = re.compile(r"[0-9a-f]{32}\.npy")  # `loader.cache_key` names


def limit_bytes() -> int | None:
    """The cache's size limit from ``KERASCOPE_DATASET_CACHE_GB``: None for no limit (``inf``,
    0 or less); a value that is no number: the default, said."""
    text = os.environ.get(ENV_VAR, "")
    try:
        gb = float(text) if text else DEFAULT_GB
    except ValueError:
        gb = float("nan")
    if math.isnan(gb):
        _log.warning("%s=%r is not a number of GB; using %g", ENV_VAR, text, DEFAULT_GB)
        gb = DEFAULT_GB
    return None if math.isinf(gb) or gb <= 0 else int(gb * 1e9)


def touch(path: Path) -> None:
    """Mark a cache as used now (its mtime), so it is the last to go."""
    try:
        os.utime(path)
    except OSError:
        pass


def make_room(folder: Path, needed: int, limit: int | None = None) -> list[Path]:
    """Delete least recently used caches in ``folder`` until ``needed`` more bytes fit in the
    limit; return what was deleted (said in one line)."""
    limit = limit_bytes() if limit is None else limit
    if limit is None:
        return []
    entries = []
    for pixels in folder.glob("*.npy"):
        mask = pixels.with_suffix(".filled.npy")
        if not _OURS.fullmatch(pixels.name) or not mask.is_file():
            continue  # only kerascope's caches: a pixels file and the mask that vouches for it
        try:
            st = pixels.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, pixels))
    used = sum(size for _, size, _ in entries)
    removed: list[Path] = []
    now = time.time()
    for mtime, size, pixels in sorted(entries):
        if used + needed <= limit or now - mtime < RECENT_S:
            break
        try:  # the mask first: pixels without the mask that vouches for them are never read
            pixels.with_suffix(".filled.npy").unlink(missing_ok=True)
            pixels.unlink(missing_ok=True)
        except OSError:
            continue
        used -= size
        removed.append(pixels)
    if removed:
        _log.warning("removed %d decoded-image cache(s) not used for the longest (%s) to keep "
                     "'%s' within %s=%g", len(removed), ", ".join(p.name for p in removed[:3]),
                     folder, ENV_VAR, limit / 1e9)  # fmt: skip
    return removed
