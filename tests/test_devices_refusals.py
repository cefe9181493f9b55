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

from .ports import free_port
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


@pytest.mark.parametrize("sweep", [["--find-lr"], ["--lr", "find"]])
def test_the_lr_finder_refuses_a_multi_process_run(tmp_path, capsys, monkeypatch, sweep):
    """The sweep runs in one process: with --coordinator it is refused before anything runs
    (before: --find-lr swept alone in every process; --lr find swept, then could not join the
    run, JAX having started)."""
    from kerascope.testing import cat_and_coffee

    for name in placing.ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # where --find-lr would write lr_find.png
    data = cat_and_coffee(tmp_path / "data", n=4, size=40)
    out = tmp_path / "run"
    code = main(["train", str(data), *sweep, "--coordinator", "127.0.0.1:1234",
                 "--num-processes", "2", "--process-id", "0", "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("kerascope: error: the lr finder sweeps in one process: run it "
                                 "once without --coordinator, then start every process with "
                                 "--lr VALUE"), err  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob("lr_find*.png"))


def test_a_killed_process_scratch_copy_is_removed_by_the_next_one_on_the_host(tmp_path):
    """Only folders of this host whose process is gone go; a running process's, another
    host's, a malformed name and a symlink stay."""
    import os
    import subprocess

    from kerascope.training.scratch import remove_stale_scratch, scratch_prefix

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ours = scratch_prefix(1)  # kerascope-process1-<host>-<this pid>-
    host = ours.removeprefix("kerascope-process1-").rsplit("-", 2)[0]
    dead = tmp_path / f"kerascope-process1-{host}-{gone.pid}-abc"
    (dead / "run").mkdir(parents=True)
    (dead / "run" / "best.weights.h5").write_bytes(b"x" * 1000)
    alive = tmp_path / f"{ours}def"
    other_host = tmp_path / f"kerascope-process1-{host}x-{gone.pid}-ghi"
    odd = tmp_path / f"kerascope-process1-{host}-notapid-jkl"
    link = tmp_path / f"kerascope-process2-{host}-{gone.pid}-mno"
    for folder in (alive, other_host, odd):
        folder.mkdir()
    os.symlink(alive, link)
    assert remove_stale_scratch(tmp_path) == [dead]
    assert not dead.exists() and all(p.exists() for p in (alive, other_host, odd, link))
