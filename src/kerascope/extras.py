"""How to install one of kerascope's optional extras (``serve``, ``ray``), said in a way that works.

kerascope is not on a package index, so installing ``kerascope`` with an extra by name fails.
Installed from a clone (``make install`` or ``pip install -e .``), the command names that clone's
path and this Python, so it can be pasted from any folder; installed from a wheel, it says to
install the extra from the clone or the wheel.
Imports nothing of kerascope, so any layer may use it.
"""

from __future__ import annotations

import shlex
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["install_command"]


def _checkout() -> Path | None:
    """The clone this kerascope runs from (``src/kerascope`` inside it), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "kerascope"' in text else None


def install_command(extra: str) -> str:
    """The command that adds ``extra`` to this kerascope; why: the package index has no kerascope.

    >>> install_command("serve")  # doctest: +SKIP
    "/home/me/clone/.venv/bin/python -m pip install -e '/home/me/clone[serve]'"
    """
    root = _checkout()
    if root is not None:
        return f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(f'{root}[{extra}]')}"
    try:
        version = metadata.version("kerascope")
    except metadata.PackageNotFoundError:
        version = "VERSION"
    return (
        f"pip install -e '.[{extra}]' in a kerascope clone, or "
        f"pip install 'kerascope-{version}-py3-none-any.whl[{extra}]' (not on a package index)"
    )
