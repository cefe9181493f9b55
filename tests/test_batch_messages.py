"""`kerascope batch`: what it says when it cannot start or is stopped. A Ray address nothing
answers at, or a name that does not resolve, is one line within seconds with nothing written
(it hung for minutes, and wrote the output folder first); ``ray://`` without the Ray Client
says what to install; Ctrl-C says how many shards (and images) are kept, and a re-run uses
them; a resume with other options names them and their saved values."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .ports import free_port

pytest.importorskip("pyarrow.parquet")
ray = pytest.importorskip("ray")

from kerascope.cli import main  # noqa: E402
from kerascope.scale import BatchError, run_batch  # noqa: E402

FAST = 15.0  # seconds: a refusal within this (Ray's own retries took minutes)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kerascope: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_ray_env(monkeypatch):
    """No address from the environment, and no cluster recorded by `ray start`: only what the
    test names."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize("kind", ["free port", "unknown host"])
def test_a_ray_address_nothing_answers_at_is_one_line_within_seconds(
    kind,
    pictures,
    tmp_path,
    capsys,
    no_ray_env,
):
    """Before: `--ray 127.0.0.1:1` retried for minutes printing only Ray's C++ warnings (about
    192.0.2.2:1, an address the user never gave), `--ray nosuch.invalid:6379` ran for 4.5+
    minutes, and the output folder was written before any connection."""
    port = free_port()  # bound and closed: nothing listens there now
    address = f"127.0.0.1:{port}" if kind == "free port" else "nosuch.invalid:6379"
    out = tmp_path / "out_x"
    start = time.monotonic()
    code = main(["batch", "classify", str(pictures), "-o", str(out), "--ray", address])
    took = time.monotonic() - start
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and took < FAST, (code, took)
    assert f"cannot connect to Ray at '{address}'" in line
    if kind == "free port":
        assert f"nothing listens at 127.0.0.1:{port}" in line
        assert f"`ray start --head --port {port}`" in line
    else:
        assert "'nosuch.invalid'" in line and ("unknown host" in line or "not resolved" in line)
        assert "ray start" not in line  # nothing to start: the name is wrong
    assert "--ray without an address" in line
    assert not out.exists()  # nothing written before a connection


def test_ray_client_address_without_the_client_says_what_to_install(
    pictures,
    tmp_path,
    capsys,
    monkeypatch,
):
    """Before: "Ray Client requires pip package ray[client]" followed by the wrong hint to
    start a cluster."""
    monkeypatch.setitem(sys.modules, "grpc", None)  # as without ray[client]: import fails
    out = tmp_path / "out"
    assert main(["batch", "classify", str(pictures), "-o", str(out), "--ray",
                 "ray://127.0.0.1:10001"]) == 2  # fmt: skip
    line = _one_line_error(capsys.readouterr().err)
    assert 'pip install "ray[client]"' in line and "ray://127.0.0.1:10001" in line
    assert "ray start" not in line and not out.exists()


def test_ray_client_port_is_checked_like_a_cluster_address(pictures, tmp_path, no_ray_env):
    """With the Ray Client installed (or not: the port check is what this is about), a
    ray:// address nothing answers at names the client port and how to start the head."""
    from kerascope.scale.connect import _answers, _start_client_hint

    port = free_port()
    with pytest.raises(BatchError) as caught:
        _answers(f"ray://127.0.0.1:{port}", "127.0.0.1", port, _start_client_hint(port, "--ray"))
    said = str(caught.value)
    assert f"nothing listens at 127.0.0.1:{port}" in said
    assert f"`ray start --head --ray-client-server-port {port}`" in said


def test_plain_ray_passes_over_a_stale_cluster_record_and_checks_ray_address(tmp_path, monkeypatch):
    """`--ray` alone joins the cluster `ray start` recorded on this machine only when it
    answers (a record of a cluster gone starts a local one); RAY_ADDRESS must answer."""
    from kerascope.scale.connect import running_cluster

    port = free_port()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    assert running_cluster() is None
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(BatchError) as caught:
        running_cluster()
    said = str(caught.value)
    assert f"'127.0.0.1:{port}' (RAY_ADDRESS)" in said and "unset RAY_ADDRESS" in said
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's "start one here" (the review's find)
    assert running_cluster() is None


def test_a_resume_with_other_options_names_them_and_their_saved_values(
    lenet,
    pictures,
    tmp_path,
    capsys,
):
    """Before: "holds another batch job (different settings)", whichever option differed."""
    out = tmp_path / "out_int"
    run_batch("classify", [str(pictures)], out, model=str(lenet), block_size=2)  # top 5
    before = sorted(p.name for p in out.iterdir())
    args = ["batch", "classify", str(pictures), "-m", str(lenet), "-o", str(out)]
    assert main([*args, "--top", "3", "--block-size", "2"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "it was run with --top 5 (this run: --top 3)" in line
    assert "another -o" in line and "same inputs and options" in line
    assert main([*args, "--block-size", "3", "--threshold", "0.5"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--threshold 0.0, --block-size 2 (this run: --threshold 0.5, --block-size 3)" in line
    assert main(["batch", "features", str(pictures), "-o", str(out), "--block-size", "2"]) == 2
    assert "it is a batch classify job (this run: batch features)" in capsys.readouterr().err
    assert main([*args, "--block-size", "2"]) == 0  # the same options: resumed, all done
    assert "(3 done before)" in capsys.readouterr().err  # 5 pictures in blocks of 2
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_explain_job_of_an_older_shard_layout_is_not_resumed_into_a_mix(
    lenet, pictures, tmp_path, capsys
):
    """Readers take the first shard's schema: an explain job started before ``class_specific``
    and resumed lost that column in every shard, without a word. Its shards are now read
    first: one that lacks the column is not resumed; one that has it is."""
    import json

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    run_batch("explain", [str(pictures)], out, model=str(lenet), block_size=2)
    manifest = out / "_kerascope_batch.json"
    saved = json.loads(manifest.read_text())
    shards = sorted((out / "index").glob("part-*.parquet"))
    assert "class_specific" in pq.read_table(out / "index").column_names
    args = ["batch", "explain", str(pictures), "-m", str(lenet), "-o", str(out),
            "--block-size", "2"]  # fmt: skip
    shards[-1].unlink()  # a job that stopped before its last shard, in this layout: resumed
    manifest.write_text(json.dumps({**saved, "complete": False}))
    assert main(args) == 0
    assert f"({len(shards) - 1} done before)" in capsys.readouterr().err
    for shard in shards[:-1]:  # the older layout: as an older kerascope wrote them
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["class_specific"]), shard)
    shards[-1].unlink()
    manifest.write_text(json.dumps({**saved, "complete": False}))
    assert main(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "lack the column(s) class_specific" in line and "another -o" in line, line
    assert sorted((out / "index").glob("part-*.parquet")) == shards[:-1]  # nothing written


def test_a_start_that_wrote_nothing_does_not_block_the_corrected_command(
    lenet, pictures, tmp_path, capsys
):
    """A start that failed before any block (its weights missing) left its record behind, and
    the corrected command was refused: "it was run with no --weights (this run: ...)". A
    record with no shard and no picture beside it is replaced; one with a shard is not."""
    import json

    out = tmp_path / "out"
    args = ["batch", "classify", str(pictures), "-o", str(out), "--block-size", "2"]
    assert main([*args, "-m", "efficientnet_lite0", "--weights", str(tmp_path / "no.h5")]) == 2
    assert "does not exist" in _one_line_error(capsys.readouterr().err)
    assert json.loads((out / "_kerascope_batch.json").read_text())["settings"]["weights"]
    assert main([*args, "-m", str(lenet)]) == 0  # corrected: runs, and records itself
    capsys.readouterr()
    saved = json.loads((out / "_kerascope_batch.json").read_text())
    assert saved["settings"]["model"] == str(lenet) and saved["complete"]
    assert main([*args, "-m", str(lenet), "--top", "3"]) == 2  # a job with shards: kept
    assert "it was run with --top 5 (this run: --top 3)" in capsys.readouterr().err


def test_ctrl_c_says_how_many_shards_are_kept_and_a_rerun_uses_them(
    lenet,
    pictures,
    tmp_path,
    capsys,
):
    """Before: "kerascope: interrupted" and nothing else. A real SIGINT to a real
    `kerascope batch classify` process, 400 inputs in blocks of one."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = sorted(pictures.iterdir())
    for i in range(400):
        shutil.copyfile(sources[i % len(sources)], inputs / f"img_{i:03d}.png")
    out = tmp_path / "out"
    args = ["batch", "classify", str(inputs), "-m", str(lenet), "-o", str(out), "--top", "1",
            "--block-size", "1"]  # fmt: skip
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
    job = subprocess.Popen([sys.executable, "-m", "kerascope", *args], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 3 and job.poll() is None:
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.005)
        job.send_signal(signal.SIGINT)
        err = job.communicate(timeout=60)[1]
    finally:
        if job.poll() is None:
            job.kill()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert job.returncode == 130, err
    n = len(kept)
    assert 3 <= n < 400
    assert err.strip().splitlines()[-1] == (
        f"kerascope: interrupted after {n} of 400 shards ({n} of 400 images); run the same "
        "command again to finish the rest"
    ), err
    assert "Traceback" not in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left
    assert main(args) == 0
    assert f"400 input(s) in 400 shard(s) in {out} ({n} done before)" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # reused, not recomputed
    assert len(list(out.glob("part-*.parquet"))) == 400
