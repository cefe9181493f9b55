"""`kerascope batch` on Ray Data, for real: an in-process Ray and a two-node cluster on this
machine, a Ray worker killed mid-job, a driver killed and restarted, and the results compared
with the single-process commands on the same real photos."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .ports import free_port

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

import kerascope  # noqa: E402
from kerascope.scale import run_batch, shard_info  # noqa: E402

TOP = 3
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, skimage_data) -> Path:
    """14 inputs: crops of four real photos as JPEG and PNG, a truncated JPEG, a text '.png'."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"):
        with Image.open(skimage_data / name) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        for i in range(3):
            cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            suffix = ".jpg" if i % 2 == 0 else ".png"
            rgb.crop((x, y, x + cw, y + ch)).save(folder / f"{Path(name).stem}_{i}{suffix}")
    data = (skimage_data / "rocket.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 3])
    (folder / "fake.png").write_text("not a picture")
    return folder


@pytest.fixture(scope="module")
def single(photos, lite0) -> dict:
    """The single-process command's results, by absolute path (also ports the weights once,
    before any Ray worker loads them from the shared cache)."""
    results = kerascope.classify(str(photos), model=lite0, top=TOP)
    assert sum(not r.ok for r in results) == 2 and len(results) == 14
    return {os.path.abspath(r.source): r for r in results}


@pytest.fixture(scope="module")
def ray_local(single):
    """Ray in this process: 2 CPUs, a small object store, its own temp folder; stopped after."""
    temp = tempfile.mkdtemp(prefix="krt", dir="/tmp")  # short: Ray's socket paths have a limit
    with _env(RAY_ENV):
        ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
                 _temp_dir=temp, logging_level="WARNING")  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()
        _kill_marked(temp)
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def _env(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kill_marked(marker: str) -> None:
    """SIGKILL the processes this test started: those whose command line names its temp dir."""
    for pid in _pids_with(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _pids_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _read(folder: Path):
    return pq.read_table(folder).to_pandas()


def _assert_same_as_single(df, single: dict) -> None:
    """Each input exactly once (top-k rows or one error row), same classes, same numbers."""
    assert set(df["image"]) == set(single)
    for image, rows in df.groupby("image"):
        expected = single[image]
        if not expected.ok:
            assert len(rows) == 1 and rows["error"].iloc[0] == expected.error
            continue
        assert rows["error"].isna().all()
        rows = rows.sort_values("rank")
        assert list(rows["rank"]) == list(range(1, TOP + 1))  # no duplicate, no gap
        assert list(rows["class_id"]) == [p.class_id for p in expected.predictions]
        assert list(rows["name"]) == [p.name for p in expected.predictions]
        got, want = rows["probability"].to_numpy(), [p.probability for p in expected.predictions]
        np.testing.assert_allclose(got, want, atol=1e-5)


def _first_shard(folder: Path, stop: threading.Event | None = None, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        shards = sorted(folder.glob("part-*.parquet"))
        if shards:
            return shards[0]
        time.sleep(0.01)
    return None


@pytest.mark.slow  # 28 s + Ray's start (11 s)
def test_killed_ray_worker_is_retried_and_every_path_is_written_once(
    ray_local, photos, single, tmp_path
):
    out = tmp_path / "out"
    seen: dict = {}
    done = threading.Event()

    def kill_a_worker() -> None:
        shard = _first_shard(out, done)
        if shard is None:
            return
        pid = shard_info(shard)["pid"]  # the actor that wrote it is still taking blocks
        seen["shards_before"] = len(list(out.glob("part-*.parquet")))
        os.kill(pid, signal.SIGKILL)
        seen["pid"] = pid

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        report = run_batch("classify", [str(photos)], out, cluster="local", top=TOP,
                           block_size=1, batch_size=4)  # fmt: skip
    finally:
        done.set()
        killer.join()
    assert "pid" in seen, "no shard appeared"
    assert seen["shards_before"] < report.blocks == 14  # killed mid-job
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)
    assert report.workers == 2 and report.errors == 2
    _assert_same_as_single(_read(out), single)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(
        p.name for p in out.iterdir() if p.name.startswith("part-")
    )  # no temp file left behind


@pytest.mark.slow  # 13 s
def test_features_from_a_csv_listing_match_the_api(ray_local, photos, tmp_path):
    """One actor (each loads kerascope and the model: ~5 s; two are the killed-worker test's
    and the cluster's)."""
    paths = sorted(str(p) for p in photos.iterdir())
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},x\n" for p in paths + paths[:2]))
    out = tmp_path / "features"
    report = run_batch("features", [str(listing)], out, cluster="local", block_size=5,
                       workers=1, layer="blocks_15_project_conv", pool="max")  # fmt: skip
    df = _read(out)
    assert sorted(df["image"]) == paths and report.inputs == 14  # listed twice, written once
    good = df[df["error"].isna()].sort_values("image")
    want = kerascope.features(list(good["image"]), layer="blocks_15_project_conv", pool="max")
    np.testing.assert_allclose(np.stack(good["vector"].to_numpy()), want, atol=1e-5)
    assert set(df[df["error"].notna()]["image"]) == {str(photos / "broken.jpg"),
                                                     str(photos / "fake.png")}  # fmt: skip
    meta = shard_info(next(out.glob("part-*.parquet")))
    assert meta["model"] == "efficientnet_lite0" and meta["layer"] == "blocks_15_project_conv"
    assert meta["pool"] == "max" and meta["image_size"] == 224
    assert meta["kerascope_version"] == kerascope.__version__ and meta["shape"] == [want.shape[1]]


@pytest.mark.slow  # 12 s
def test_explain_on_ray_writes_the_pictures_explain_writes(ray_local, photos, lite0, tmp_path):
    """One actor, as features above."""
    from kerascope.cam.save import save_explanations

    inputs = [str(p) for p in sorted(photos.glob("c*_0.jpg"))] + [str(photos / "broken.jpg")]
    mine = run_batch("explain", inputs, tmp_path / "ray", cluster="local", block_size=2,
                     workers=1)  # fmt: skip
    saved = save_explanations(inputs, tmp_path / "single", lite0)
    index = _read(tmp_path / "ray" / "index")
    assert mine.inputs == len(inputs) == len(index) and mine.errors == 1
    for s in saved:
        row = index[index["image"] == os.path.abspath(s.source)].iloc[0]
        if not s.ok:
            assert row["error"] == s.error
            assert row["output"] is None or np.isnan(row["output"])
            continue
        assert row["output"] == s.path.name and row["name"] == s.explanation.class_name
        assert abs(row["probability"] - s.explanation.probability) < 1e-5
        a = np.asarray(Image.open(tmp_path / "ray" / row["output"]), np.float32)
        b = np.asarray(Image.open(s.path), np.float32)
        assert a.shape == b.shape and np.abs(a - b).mean() < 0.5


def test_in_process_resume_and_refusals(photos, single, tmp_path):
    from kerascope.scale import BatchError

    out = tmp_path / "out"
    first = run_batch("classify", [str(photos)], out, top=TOP, block_size=4)
    shards = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    victim = sorted(shards)[-1]
    victim.unlink()
    again = run_batch("classify", [str(photos)], out, top=TOP, block_size=4)
    assert (first.written, again.written, again.already) == (4, 1, 3)
    assert all(p.stat().st_mtime_ns == t for p, t in shards.items() if p != victim)
    _assert_same_as_single(_read(out), single)
    with pytest.raises(BatchError, match="another batch job"):
        run_batch("classify", [str(photos)], out, top=TOP + 1, block_size=4)
    with pytest.raises(BatchError, match="not empty"):
        run_batch("classify", [str(photos)], photos, top=TOP)
    with pytest.raises(BatchError, match="no_such_model|unknown|not"):
        run_batch("classify", [str(photos)], tmp_path / "bad", model="no_such_model")


def test_without_ray_installed_one_line_says_how_to_install_it(photos, tmp_path, monkeypatch):
    from kerascope.scale import BatchError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    from kerascope.extras import install_command

    with pytest.raises(BatchError) as caught:
        run_batch("classify", [str(photos)], tmp_path / "out", cluster="local")
    assert str(caught.value) == f"--ray needs Ray Data: {install_command('ray')}"


# ---- a two-node cluster started with `ray start`, driven through the CLI ----

_WRAPPER = """\
import argparse, sys
from kerascope import cli, cli_batch
def build():  # `kerascope batch` until cli.py registers it
    parser = argparse.ArgumentParser(prog="kerascope")
    cli_batch.add_batch_command(parser.add_subparsers(dest="command", required=True))
    return parser
cli.build_parser = build
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli_command() -> list[str]:
    from kerascope.cli import build_parser

    try:
        build_parser().parse_args(["batch", "classify", "x", "-o", "y"])
        return [sys.executable, "-m", "kerascope"]
    except SystemExit:
        return [sys.executable, "-c", _WRAPPER]


@pytest.fixture
def two_nodes():
    """Head (1 CPU) + a second node (1 CPU) on 127.0.0.1, each in its own temp dir. The
    second node's ``ray start`` is under way when the test begins: ``join()`` waits for it."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="krc", dir="/tmp")
    env = dict(os.environ, **RAY_ENV)
    port = free_port()
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20),
              "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]  # fmt: skip
    # Each `ray start` in a session of its own: its daemons keep that process group, and the
    # agents the raylets start rename themselves (ray::DashboardAgent), so only the group still
    # finds them at the end (they outlived the test before).
    groups: list[int] = []
    node2 = None
    try:
        head = subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--temp-dir",
                                 f"{temp}/head", "--include-dashboard=false", *common], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # fmt: skip
        groups.append(head.pid)
        out = head.communicate(timeout=180)[0]
        assert head.returncode == 0, out[-3000:]
        node2 = subprocess.Popen([ray_bin, "start", "--address", f"127.0.0.1:{port}",
                                  "--temp-dir", f"{temp}/node2", "--resources", '{"node2": 1}',
                                  *common], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)  # fmt: skip
        groups.append(node2.pid)

        def join() -> None:
            out = node2.communicate(timeout=180)[0]
            assert node2.returncode == 0, out[-3000:]

        yield f"127.0.0.1:{port}", env, join
    finally:
        if node2 is not None and node2.poll() is None:
            node2.kill()
            node2.communicate()
        _stop_cluster(temp, groups)


def _stop_cluster(temp: str, groups: list[int]) -> None:
    """Stop the Ray processes a test started with `ray start` in sessions of their own."""
    _kill_marked(temp)  # `ray stop` would stop every Ray on the machine; these are ours
    deadline = time.monotonic() + 1  # ... and those they were starting meanwhile
    while _pids_with(temp) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_marked(temp)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_cluster_cli_resumes_after_the_driver_is_killed(two_nodes, photos, single, tmp_path):
    """The first driver (one worker: it is killed at its first shard) starts while the second
    node joins; the rerun, on both nodes, resumes it."""
    address, env, join = two_nodes
    out = tmp_path / "out"
    cmd = [*_cli_command(), "batch", "classify", str(photos), "-o", str(out), "--top", str(TOP),
           "--block-size", "1", "--batch-size", "4", "--ray", address]  # fmt: skip
    driver = subprocess.Popen([*cmd, "--workers", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert _first_shard(out, timeout=300) is not None, driver.communicate()[0][-2000:]
        driver.kill()
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 0 < len(before) < 14  # stopped part-way
    # the killed driver's actor may still finish the block it held, after `before`
    first = {shard_info(p)["pid"] for p in before}
    join()  # both nodes up
    # Ray Data hands blocks to whichever actor is ready: an actor that finished loading the
    # model first took all 13 blocks once (a full run on a fast machine). Its documented knob
    # makes the driver wait for both actors, so both nodes take blocks.
    both = dict(env, RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="300")
    rerun = subprocess.run(cmd, env=both, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr[-3000:]  # 1: two inputs have error rows
    assert "done before" in rerun.stderr and "2 worker(s)" in rerun.stderr
    # before: an error-level core_worker line and a "Progress bars disabled" warning from Ray
    # on every successful run
    assert "core_worker" not in rerun.stderr and "Progress bars" not in rerun.stderr, rerun.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not recomputed
    df = _read(out)
    _assert_same_as_single(df, single)
    pids = {shard_info(p)["pid"] for p in out.glob("part-*.parquet") if p not in before} - first
    assert len(pids) == 2 or len(before) >= 12  # both nodes' actors took blocks


# ---- a cluster already running (`ray start --head`, token authentication on) ----


@pytest.fixture(scope="module")
def token_head():
    """A one-node cluster (1 CPU) started as a user starts one, with token authentication on,
    and recorded by `ray start` where `ray.init()` without an address looks: its own
    RAY_TMPDIR. Its port and the environment of a user who holds the token."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="krh", dir="/tmp")  # short: Ray's socket paths have a limit
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=temp, RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(16))  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    groups: list[int] = []
    try:
        head = subprocess.Popen([ray_bin, "start", "--head", "--port", str(port),
                                 "--include-dashboard=false", "--num-cpus", "1",
                                 "--object-store-memory", str(100 * 2**20),
                                 "--disable-usage-stats", "--node-ip-address", "127.0.0.1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
        groups.append(head.pid)
        out = head.communicate(timeout=180)[0]
        assert head.returncode == 0, out[-3000:]
        yield port, env
    finally:
        _stop_cluster(temp, groups)


@pytest.mark.slow  # Ray retries a refused token for 20 s
def test_a_cluster_that_wants_a_token_is_one_line_that_says_so(token_head, photos, tmp_path):
    """Before: "Failed to connect to Ray cluster at ... (start it with `ray start --head`, ...)"
    after 20 lines of Ray's InvalidAuthToken warnings: the cause was not in the line."""
    port, env = token_head
    plain = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    plain["RAY_AUTH_MODE"] = "disabled"
    out = tmp_path / "out"
    cmd = [*_cli_command(), "batch", "classify", str(photos), "-o", str(out), "--ray",
           f"127.0.0.1:{port}"]  # fmt: skip
    run = subprocess.run(cmd, env=plain, capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"kerascope: error: cannot connect to Ray at '127.0.0.1:{port}'")
    assert "authentication" in line and "InvalidAuthToken" in line
    assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line
    assert "ray start" not in line  # it is running: starting one is not the fix
    assert not out.exists()


@pytest.mark.slow
def test_plain_ray_joins_the_running_cluster_and_ctrl_c_keeps_its_shards(
    token_head, photos, single, tmp_path
):
    """Before: `--ray` beside a running cluster failed ("num_cpus and num_gpus must not be
    provided"), and Ctrl-C said only "interrupted". Now the job runs on that cluster (the
    closing line says so); stopped by a real SIGINT it says what it keeps, and the re-run
    reuses those shards."""
    port, env = token_head
    out = tmp_path / "out"
    cmd = [*_cli_command(), "batch", "classify", str(photos), "-o", str(out), "--top", str(TOP),
           "--block-size", "1", "--batch-size", "4", "--ray"]  # fmt: skip
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert _first_shard(out, timeout=300) is not None, driver.communicate()[1][-2000:]
        driver.send_signal(signal.SIGINT)
        err = driver.communicate(timeout=120)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    said = re.fullmatch(r"kerascope: interrupted after (\d+) of 14 shards \((\d+) of 14 "
                        r"images\); run the same command again to finish the rest",
                        err.strip().splitlines()[-1])  # fmt: skip
    assert said and said[1] == said[2], err[-3000:]
    kept = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    # counted once Ray let go of the job; an actor may still have finished the block it held
    assert 1 <= int(said[1]) <= len(kept) < 14
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr[-3000:]  # 1: two inputs have error rows
    # an actor may finish the block it held after `kept` was listed, before the rerun counts
    counted = re.search(r"\((\d+) done before\)", rerun.stderr)
    assert counted and len(kept) <= int(counted[1]) < 14, rerun.stderr[-3000:]
    assert "the cluster already running on this machine at " in rerun.stderr
    assert f":{port}), 1 worker(s)" in rerun.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # reused, not recomputed
    _assert_same_as_single(_read(out), single)
