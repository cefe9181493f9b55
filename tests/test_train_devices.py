"""Training on several devices and processes (issue 19): ``--devices``, the Keras
DataParallel run on two virtual CPU devices, two real processes on 127.0.0.1 joined through
``--coordinator`` (JAX's gloo CPU collectives), and the one-line refusals.

Tolerances, measured: one LeNet epoch on two virtual devices ends within 6e-7 of the
one-device weights (the split batch only changes the order of float32 sums); the test
allows 1e-5. Two processes' history matches one process's to ~2e-7 relative; allowed 1e-5.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.cli import main
from kerascope.errors import ConfigError
from kerascope.testing import cat_and_coffee
from kerascope.training import devices as placing

from .ports import free_port

ROOT = Path(__file__).resolve().parents[1]
jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's devices")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Cat and coffee crops of real photos: 26 training images, 6 validation (val_split 0.2)."""
    return cat_and_coffee(tmp_path_factory.mktemp("photos"), n=16, size=40)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1", **extra}
    for name in placing.ENV.values():
        env.pop(name, None)
    return env


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _fed(n: int, batch: int, seed: int, epochs: range | None, index: int,
         count: int) -> set[int]:  # fmt: skip
    """The rows process ``index`` of ``count`` feeds, by the rule written out here: epoch e's
    order is the permutation of ``(seed, e)`` (file order when ``epochs`` is None: no
    shuffle), every batch padded to ``batch`` rows with its first row, and the process takes
    the ``index``-th of ``count`` equal parts of every padded batch."""
    orders = ([np.arange(n)] if epochs is None
              else [np.random.default_rng([seed, e]).permutation(n) for e in epochs])  # fmt: skip
    part = batch // count
    rows: set[int] = set()
    for order in orders:
        for begin in range(0, n, batch):
            chunk = list(order[begin : begin + batch])
            chunk += [chunk[0]] * (batch - len(chunk))
            rows.update(int(r) for r in chunk[index * part : (index + 1) * part])
    return rows


def _cached(home: Path) -> dict[int, set[int]]:
    """The rows held by each decoded-image cache under a KERASCOPE_HOME, by cache size."""
    return {
        len(filled): set(np.flatnonzero(filled).tolist())
        for filled in (np.load(f) for f in (home / "datasets").glob("*.filled.npy"))
    }


def test_a_process_decodes_only_its_part_of_every_batch(photos, tmp_path):
    """With ``share=(i, 2)`` a sequence decodes and caches only the rows process i feeds (its
    half of every padded batch), yet its device feed, cut to that half, equals the one of a
    sequence that read every image: same pixels, augmentation matrices, mixing and weights."""
    from kerascope.data import FolderSequence, scan_dataset
    from kerascope.data.augment import AugmentConfig
    from kerascope.data.regularise import RegulariseConfig
    from kerascope.training.whole import DeviceFeed

    dataset = scan_dataset(photos, 0.2, 0)
    items = dataset.splits["train"]
    assert len(items) == 26  # 4 batches of 8, the last one 2 real rows and 6 of padding

    def feed(images):
        return DeviceFeed(images, AugmentConfig(), 0, regularise=RegulariseConfig(mixup=0.4))

    everything = feed(FolderSequence(items, dataset.classes, 32, 8, shuffle=True, seed=0))
    for index in (0, 1):
        images = FolderSequence(items, dataset.classes, 32, 8, shuffle=True, seed=0,
                                cache=tmp_path / str(index), share=(index, 2))  # fmt: skip
        mine = _fed(26, 8, 0, range(1), index, 2)
        assert images.fill_cache() == len(mine) == (14 if index == 0 else 13)
        shard = feed(images)
        for b in range(len(shard)):
            got = placing.shard_rows(shard[b], index, 2)
            want = placing.shard_rows(everything[b], index, 2)
            assert got[0].keys() == want[0].keys() == {"image", "matrices", "partner", "boxes"}
            for key in got[0]:
                np.testing.assert_array_equal(got[0][key], want[0][key])
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[2], want[2])
        filled = np.load(images.cache_path.with_suffix(".filled.npy"))
        assert set(np.flatnonzero(filled).tolist()) == mine  # reading the epoch decoded no more


def test_devices_option_values():
    assert placing.parse_devices(None) == placing.parse_devices(" All ") == "all"
    assert placing.parse_devices("2") == placing.parse_devices(2) == 2
    assert placing.parse_devices("0, 2,5") == placing.parse_devices([0, 2, 5]) == (0, 2, 5)
    # "0" is a count (CUDA users mean GPU 0): the line says how to name device 0 alone
    assert placing.parse_devices("0,") == placing.parse_devices([0]) == (0,)
    assert placing.parse_devices("2 ,") == (2,)
    alone = "give at least 1, or all; to train on device 0 alone, give --devices 0,"
    for bad, says in (("two", "takes all, a count"), ("1,1", "twice"), ("0", alone),
                      ("-1", "takes all, a count"), (",0", "takes all, a count")):  # fmt: skip
        with pytest.raises(ConfigError, match=says):
            placing.parse_devices(bad)
    with pytest.raises(ConfigError, match="give a multiple of 4 \\(e.g. 32\\)"):
        placing.check_batch(30, 4)
    placing.check_batch(32, 4)


@jax_only
def test_too_many_devices_is_one_line_and_writes_nothing(photos, tmp_path, capsys):
    """This machine's JAX shows one CPU device: --devices 9 is refused before any file."""
    run = tmp_path / "run"
    code = main(["train", str(photos), "--recipe", "lenet", "--image-size", "32", "--devices",
                 "9", "-o", str(run)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "--devices 9: this machine has 1 CPU device(s), numbered 0-0; give at most 1" in err
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], {},
         "--process-id 2 is out of range for --num-processes 2: give 0-1"),
        ([], {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1234",
              "KERAS_DISTRIBUTION_NUM_PROCESSES": "4", "KERAS_DISTRIBUTION_PROCESS_ID": "-1"},
         "--process-id -1 is out of range for --num-processes 4: give 0-3"),
        (["--coordinator", "no-port", "--num-processes", "2", "--process-id", "0"], {},
         "--coordinator 'no-port': give HOST:PORT"),
        (["--coordinator", "127.0.0.1:1234", "--process-id", "0"], {},
         "--coordinator needs --num-processes N"),
        (["--num-processes", "2", "--process-id", "1"], {}, "need --coordinator HOST:PORT"),
    ],
)  # fmt: skip
def test_bad_process_options_are_one_line(photos, tmp_path, capsys, monkeypatch, args, env, says):
    """Checked before JAX is asked to join anything, and before any file is written."""
    for name in placing.ENV.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    code = main(["train", str(photos), "--recipe", "lenet", "-o", str(run), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and says in err, err
    assert not run.exists()


@jax_only
@pytest.mark.slow
def test_two_virtual_devices_train_the_one_device_weights(photos, tmp_path):
    """One epoch, same seed and global batch (8): on two devices (4 rows each, weights on
    both) the weights equal one device's within 1e-5, for the whole graph and for the split
    trainer (transfer: frozen prefix on onnxruntime), and the run directory has the same
    files; --devices 3 on two devices, a batch of 9 over two, device 2 of two: one line each,
    no folder left."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "devices_worker.py"), str(photos), str(tmp_path)],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["jax_devices"] == 2
    one, two = out["1"], out["all"]
    assert one["weights_on"] == [1] and two["weights_on"] == [2]
    assert one["config"]["count"] == 1 and one["config"]["per_device_batch"] == 8
    assert two["config"]["names"] == ["cpu:0", "cpu:1"] and two["config"]["per_device_batch"] == 4
    assert two["config"]["lr_rule"] == placing.LR_RULE
    import kerascope.zoo.preprocess  # noqa: F401  (registers the backbone's layer for loading)

    runs = [(one["run"], two["run"]), (out["transfer 1"], out["transfer all"])]
    for first, second in runs:  # the whole graph (LeNet), the split trainer (transfer)
        a, b = (keras.saving.load_model(Path(r) / "model.keras") for r in (first, second))
        pairs = zip(a.get_weights(), b.get_weights(), strict=True)
        assert max(float(np.abs(x - y).max()) for x, y in pairs) < 1e-5
    assert _files(Path(one["run"])) == _files(Path(two["run"]))
    for name in ("history.csv", "config.yaml", "report.md", "model.keras", "split.json"):
        assert (Path(two["run"]) / name).is_file()
    report = (Path(two["run"]) / "report.md").read_text()
    assert "Devices: 2 device(s) (cpu:0, cpu:1) in 1 process(es), 4 images per device" in report
    assert "learning rate per global batch" in report
    assert "this machine has 2 CPU device(s), numbered 0-1; give at most 2" in out["refused 3 8"]
    assert "--batch-size 9 does not split evenly over 2 devices" in out["refused all 9"]
    assert "--devices 0,2: no device 2" in out["refused 0,2 8"]
    assert out["refused left a folder"] is False


@jax_only
@pytest.mark.slow
@pytest.mark.keras_init  # the reference run draws its weights as a `kerascope` process does
def test_two_processes_train_together_and_only_process_0_writes(photos, tmp_path, capsys):
    """Two real processes on 127.0.0.1 (gloo CPU collectives): the history equals one
    process's run; process 1 writes nothing under the shared output path; each process (its
    own KERASCOPE_HOME, as on two machines) decoded and cached only the rows it fed. The
    one-process reference trains in this process while the pair runs (a third process cost
    ~5 s of imports)."""
    common = ["train", str(photos), "--recipe", "lenet", "--engine", "keras", "--epochs", "2",
              "--batch-size", "8", "--image-size", "32", "--seed", "0"]  # fmt: skip
    single = tmp_path / "single"
    run = tmp_path / "pair"
    homes = [tmp_path / "home0", tmp_path / "home1"]
    pair = _start_pair([*common, "-o", str(run)], [*common, "-o", str(run)], homes)
    assert main([*common, "-o", str(single)]) == 0, capsys.readouterr().err[-3000:]
    codes, outs = _finish_pair(pair)
    assert codes == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    pair, ref = _history(run), _history(single)
    assert len(pair) == len(ref) == 2
    for got, want in zip(pair, ref, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5), key
    config = (run / "config.yaml").read_text()
    assert "processes: 2" in config and "per_device_batch: 4" in config
    assert _files(run) == _files(single)  # one writer: no second lock, no stray files
    assert f"run in {run}" in outs[1][1]  # process 1 names the run (its scratch copy is gone)
    # Each process's caches hold its half of every batch it fed, no other row: validation's
    # 6 images (one batch of 6: a split smaller than the batch is not padded to it) exactly;
    # the 26 training images
    # reshuffled each epoch, so epochs 1 and 2's halves, and perhaps some of the third's
    # (Keras's queue prefetches the epoch after the last one: 4 batches, all of it here)
    caches = [_cached(home) for home in homes]
    assert [c[6] for c in caches] == [{0, 1, 2}, {3, 4, 5}]
    for index, cache in enumerate(caches):
        assert set(cache) == {6, 26}
        fed, prefetched = (_fed(26, 8, 0, range(e), index, 2) for e in (2, 3))
        assert fed <= cache[26] <= prefetched, (index, sorted(cache[26]))
    assert len(caches[0][26]) < 26 and len(caches[1][26]) < 26


def _pair(args0: list[str], args1: list[str], homes: list[Path] | None = None,
          temp: Path | None = None) -> tuple[list[int], list[tuple[str, str]]]:  # fmt: skip
    """``kerascope ARGS --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I`` for
    I = 0, 1 at once (with ``homes``, each its own KERASCOPE_HOME; with ``temp``, that
    TMPDIR): their exit codes and (stdout, stderr)."""
    return _finish_pair(_start_pair(args0, args1, homes, temp))


def _start_pair(args0: list[str], args1: list[str], homes: list[Path] | None = None,
                temp: Path | None = None,
                counts: tuple[int, int] = (2, 2)) -> list[subprocess.Popen]:  # fmt: skip
    """`_pair`'s two processes, started (``counts``: each one's --num-processes);
    `_finish_pair` waits for them."""
    port = free_port()
    extra = {"TMPDIR": str(temp)} if temp else {}
    envs = ([_env(KERASCOPE_HOME=str(h), **extra) for h in homes] if homes
            else [_env(**extra), _env(**extra)])  # fmt: skip
    return [subprocess.Popen([sys.executable, "-m", "kerascope", *args, "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", str(counts[i]),
                              "--process-id", str(i)], env=envs[i], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for i, args in enumerate((args0, args1))]  # fmt: skip


def _finish_pair(procs: list[subprocess.Popen]) -> tuple[list[int], list[tuple[str, str]]]:
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs


@jax_only
@pytest.mark.slow
def test_processes_started_with_other_options_both_refuse_naming_it(photos, tmp_path):
    """Process 1 given another --lr, or another --num-processes (JAX takes process 0's: it
    trained without a word): both processes stop at once with the same line naming it (no
    lockstep training of two different runs, no wait for JAX's heartbeat), nothing written.
    Before, --lr was named "--stages", an option that does not exist."""

    def common(run: str) -> list[str]:  # each pair its own -o: one run folder has one writer
        return ["train", str(photos), "--recipe", "lenet", "--image-size", "32",
                "--batch-size", "8", "-o", str(tmp_path / run)]  # fmt: skip

    pairs = {"--lr": _start_pair(common("lr"), [*common("lr"), "--lr", "0.01"]),
             "--num-processes": _start_pair(common("np"), common("np"), counts=(2, 3))}  # fmt: skip
    for flag, pair in pairs.items():
        codes, outs = _finish_pair(pair)
        says = (
            f"kerascope: error: process 1 was started with another {flag} than process 0: "
            "start every process with the same options (only --process-id differs)"
        )
        assert codes == [2, 2], outs
        assert all(says in err.splitlines() for _, err in outs), outs
    assert not (tmp_path / "lr").exists() and not (tmp_path / "np").exists()


@jax_only
@pytest.mark.slow
def test_processes_reading_other_images_both_refuse(photos, tmp_path):
    """Process 1's copy of the data lacks one image: before, both trained in lockstep on
    other batches and process 0's split.json described a run that did not happen."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(photos, copy)
    next(p for p in sorted(copy.rglob("*")) if p.suffix in (".png", ".jpg")).unlink()
    common = ["--recipe", "lenet", "--image-size", "32", "--batch-size", "8", "-o",
              str(tmp_path / "run")]  # fmt: skip
    codes, outs = _pair(["train", str(photos), *common], ["train", str(copy), *common])
    says = (
        "kerascope: error: process 1 reads other images (names, sizes or split) than "
        "process 0 in its DATA folder: give every process the same copy of the dataset"
    )
    assert codes == [2, 2], outs
    assert all(says in err.splitlines() for _, err in outs), outs


@jax_only
@pytest.mark.slow
def test_process_1_does_not_name_a_run_folder_it_lacks(photos, tmp_path):
    """Process 1 with its own -o (allowed: a path on its machine): before, it said "run in
    <its -o> — try: kerascope evaluate <its -o>", a folder only process 0's machine has."""
    common = ["train", str(photos), "--recipe", "lenet", "--image-size", "32", "--batch-size",
              "8", "--epochs", "1"]  # fmt: skip
    codes, outs = _pair([*common, "-o", str(tmp_path / "run")],
                        [*common, "-o", str(tmp_path / "elsewhere")])  # fmt: skip
    assert codes == [0, 0], outs
    assert "run in " + str(tmp_path / "run") in outs[0][1]
    assert "process 1: done; process 0 wrote the run, on its machine" in outs[1][1], outs
    assert not (tmp_path / "elsewhere").exists()


@jax_only
@pytest.mark.slow
def test_process_0_refused_before_training_stops_the_others_at_once(photos, tmp_path, reap):
    """Process 0's output folder holds someone's files (process 1's, on its own machine, is
    new): process 0 refuses as alone, and process 1 stops at once with one line giving
    process 0's reason, instead of waiting in its first collective until JAX aborts both
    (measured before: 5 min, then SIGABRT with a C++ stack trace). And the other way round."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    common = ["train", str(photos), "--recipe", "lenet", "--image-size", "32", "--batch-size",
              "8"]  # fmt: skip
    # the other way round (below: process 1 refused, its dataset path missing on its
    # machine) starts at once, its pair beside this one
    missing = tmp_path / "nowhere"
    run = tmp_path / "run"
    other_way = _start_pair(["train", str(photos), *common[2:], "-o", str(run)],
                            ["train", str(missing), *common[2:], "-o", str(run)])  # fmt: skip
    reap.extend(other_way)
    started = time.monotonic()
    codes, outs = _pair([*common, "-o", str(taken)], [*common, "-o", str(tmp_path / "fresh")])
    took = time.monotonic() - started
    reason = (f"output '{taken}' exists and is not empty (and holds no run): choose a new or "
              "empty folder")  # fmt: skip
    lines = [[line for line in err.splitlines() if line.startswith("kerascope:")]
             for _, err in outs]  # fmt: skip
    assert codes == [2, 2], outs
    assert lines == [[f"kerascope: error: {reason}"],
                     [f"kerascope: error: process 1 of 2: process 0 stopped before training: "
                      f"{reason}"]], outs  # fmt: skip
    assert all("Traceback" not in err for _, err in outs)
    assert took < 90, took  # both started, refused and left: no heartbeat wait (100 s)
    assert _files(taken) == {"notes.txt"} and not (tmp_path / "fresh").exists()
    # the other way round: process 1 refused (its dataset path is missing on its machine)
    codes, outs = _finish_pair(other_way)
    lines = [[line for line in err.splitlines() if line.startswith("kerascope:")]
             for _, err in outs]  # fmt: skip
    assert codes == [2, 2], outs
    assert lines[0] == [
        f"kerascope: error: process 0 of 2: process 1 stopped before "
        f"training: {lines[1][0].removeprefix('kerascope: error: ')}"
    ], outs
    assert str(missing) in lines[1][0] and not run.exists()


@jax_only
@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line_and_both_resume(photos, tmp_path):
    """Process 1 killed once process 0 has saved an epoch: process 0 stops within seconds
    (its next collective fails) with one line saying to resume; `--resume` on both then
    finishes the run from the saved epoch."""
    run, port = tmp_path / "run", free_port()
    # 400 epochs: with a warm compilation cache a short run can end before the kill
    args = ["train", str(photos), "--recipe", "lenet", "--engine", "keras", "--epochs", "400",
            "--patience", "400", "--batch-size", "8", "--image-size", "32",
            "-o", str(run)]  # fmt: skip
    temp = tmp_path / "tmp"  # the killed process 1 cannot remove its scratch copy of the run
    temp.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "kerascope", *args, "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                               str(i)], env=_env(TMPDIR=str(temp)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]  # fmt: skip
    deadline = time.monotonic() + 400
    while not (run / "history.csv").is_file() and time.monotonic() < deadline:
        assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
        time.sleep(0.05)
    procs[1].kill()
    procs[1].communicate()
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    assert time.monotonic() - killed < 60  # not JAX's 100 s heartbeat, and no hang
    assert procs[0].returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("kerascope:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "process 0 of 2: another process of the run stopped" in lines[0]
    assert f"again with `--resume {run}`" in lines[0]
    saved = len(_history(run))
    assert saved >= 1
    assert len(list(temp.glob("kerascope-process1-*"))) == 1  # the killed one's scratch copy
    codes, outs = _pair(["train", "--resume", str(run), "--epochs", str(saved + 1)],
                        ["train", "--resume", str(run), "--epochs", str(saved + 1)],
                        temp=temp)  # fmt: skip
    assert codes == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert [int(r["epoch"]) for r in _history(run)] == list(range(1, saved + 2))
    assert (run / "model.keras").is_file() and not (run / "backup").exists()
    assert not list(temp.iterdir())  # the new process 1 removed the old copy, then its own


@jax_only
@pytest.mark.slow
def test_a_coordinator_that_does_not_answer_ends_with_one_line(photos, tmp_path):
    """Process 1 with nobody at the address: after the timeout (3 s here), one line naming
    the address, exit code 3, not JAX's abort with a C++ stack trace after 300 s."""
    port = free_port()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kerascope", "train", str(photos), "--recipe", "lenet", "-o",
         str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", "1"],
        env=_env(KERASCOPE_COORDINATOR_TIMEOUT="3"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == placing.EXIT_NO_COORDINATOR, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kerascope:")]
    assert lines == [f"kerascope: error: the coordinator did not answer at 127.0.0.1:{port} "
                     "within 3 s (process 1 of 2): start process 0 there with the same "
                     "--num-processes, check the address and that the port is open, or wait "
                     f"longer with {placing.TIMEOUT_ENV}=SECONDS"]  # fmt: skip
    assert "Check failure" not in proc.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


def test_a_coordinator_address_is_checked_at_once():
    """Before: a name that does not resolve waited the full 120 s. Process 0 serves every
    interface, so another machine's address (a NAT's) is its own affair; a port in use is not."""
    import socket

    from kerascope.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot resolve 'nosuch.invalid'"):
        placing.check_address("nosuch.invalid:1234", 1)
    with pytest.raises(ConfigError, match="the port must be 1-65535"):
        placing.check_address("localhost:70000", 0)
    placing.check_address(f"192.0.2.1:{free_port()}", 0)  # a NAT's address: JAX binds [::]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} is in use on this machine"):
            placing.check_address(f"127.0.0.1:{port}", 0)
        placing.check_address(f"127.0.0.1:{port}", 1)  # process 1 connects there: fine
    placing.check_address(f"127.0.0.1:{free_port()}", 0)
