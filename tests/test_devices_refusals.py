"""What does not train on several devices or processes says so (issue 19): a multi-label CSV
run (a sigmoid head on frozen features, one device of one process) refuses ``--devices N``
and ``--coordinator`` by name instead of ignoring them (before: ``--devices 2`` trained on one
device without a word, and every process of a ``--coordinator`` run trained the whole model
alone, each writing the same output path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from kerascope.cli import main
from kerascope.training import devices as placing

from .serve_server import free_port
from .test_multilabel import make_pairs

jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's processes")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, skimage_data) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), skimage_data, n=8)


def test_a_multilabel_run_refuses_several_devices(pairs, tmp_path, capsys):
    out = tmp_path / "run"
    for devices in ("2", "0,1"):
        assert main(["train", str(pairs), "--devices", devices, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("kerascope: error: --devices: not available for a multi-label CSV (a "
                       "sigmoid head on frozen features); leave it out"), err  # fmt: skip
    assert not out.exists()
    assert placing.parallel_flags(None) == placing.parallel_flags("all") == []
    assert placing.parallel_flags("1") == placing.parallel_flags([0]) == []


@jax_only
@pytest.mark.slow
def test_a_multilabel_run_refuses_several_processes(pairs, tmp_path):
    """Both processes of a --coordinator run on a CSV stop at once with the same line."""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    for name in placing.ENV.values():
        env.pop(name, None)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "kerascope", "train", str(pairs), "-o",
                               str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    for _, err in outs:
        lines = [line for line in err.splitlines() if line.startswith("kerascope:")]
        assert lines == ["kerascope: error: --coordinator: not available for a multi-label CSV "
                         "(a sigmoid head on frozen features); leave it out"], err  # fmt: skip
    assert not (tmp_path / "run").exists()
