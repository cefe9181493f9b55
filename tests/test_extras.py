"""Installing the extras (issue 24, item 1): kerascope is not on a package index, so every
message and the README give a command that works from the clone, never
``pip install 'kerascope[serve]'``."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from kerascope import extras
from kerascope.extras import install_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", ["serve", "ray"])
def test_from_the_clone_the_command_names_this_python_and_the_clone(extra):
    words = shlex.split(install_command(extra))
    assert words[:5] == [sys.executable, "-m", "pip", "install", "-e"]
    target = re.fullmatch(r"(.+)\[(\w+)\]", words[5])
    assert target and Path(target[1]) == ROOT and target[2] == extra
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "kerascope" and extra in project["optional-dependencies"]


def test_installed_from_a_wheel_it_says_clone_or_wheel(monkeypatch):
    monkeypatch.setattr(extras, "_checkout", lambda: None)
    said = install_command("serve")
    assert "pip install -e '.[serve]' in a kerascope clone" in said
    assert re.search(r"pip install 'kerascope-[\w.]+-py3-none-any\.whl\[serve\]'", said)


def test_serve_without_uvicorn_says_the_working_command(monkeypatch):
    from kerascope.serve.server import ServeError, run_server

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    with pytest.raises(ServeError) as caught:
        run_server(["efficientnet_lite0"], port=0)
    assert str(caught.value) == f"kerascope serve needs uvicorn: {install_command('serve')}"


def test_batch_without_pyarrow_says_the_working_command(monkeypatch, tmp_path):
    from kerascope.scale import BatchError, run_batch
    from kerascope.scale.plan import read_listing

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(BatchError) as caught:
        run_batch("classify", [str(tmp_path)], tmp_path / "out")
    assert str(caught.value) == f"Parquet output needs pyarrow: {install_command('ray')}"
    with pytest.raises(BatchError) as caught:
        read_listing(str(tmp_path / "listing.parquet"))
    assert str(caught.value) == f"a Parquet listing needs pyarrow: {install_command('ray')}"


def test_no_message_readme_or_help_installs_kerascope_from_an_index():
    """``pip install 'kerascope[...]'`` fails: kerascope is not on a package index."""
    texts = [ROOT / "README.md", *sorted((ROOT / "src" / "kerascope").rglob("*.py"))]
    found = [
        f"{p.relative_to(ROOT)}: {line.strip()}"
        for p in texts
        for line in p.read_text(encoding="utf-8").splitlines()
        if re.search(r"kerascope\[(serve|ray)\]", line)
    ]
    assert found == []
