"""The split trainer's frozen prefix with several devices and processes (issue 19).

* On the JAX engine the prefix runs on each local device for its shard of every batch
  (``split.ShardedPrefix``): checked on two virtual CPU devices in a subprocess
  (tests/devices_prefix_worker.py). Tolerances, measured there: the sharded prefix's outputs
  equal the one-device forward's exactly (0.0; each row is computed alike on either device),
  allowed 1e-6; one transfer epoch on two devices ends within 1e-5 of one device's weights.
* In a multi-process run each process runs the prefix on its own rows only, and with mixup
  or CutMix also reads its rows' partners (before: another process's partner was a zero
  image, so its rows were mixed with black).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.testing import cat_and_coffee
from kerascope.training import devices as placing

ROOT = Path(__file__).resolve().parents[1]
jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's devices")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Cat and coffee crops of real photos: 26 training images, 6 validation (val_split 0.2)."""
    return cat_and_coffee(tmp_path_factory.mktemp("photos"), n=16, size=40)


def test_a_process_runs_the_prefix_on_its_rows_and_mixes_with_their_partners(photos):
    """With ``share=(i, 2)`` a PrefixSequence hands the prefix only its 4 rows of each batch
    of 8, and its part of every batch (augmented, mixed with mixup) equals that part of a
    one-process sequence: the partner rows it mixes with are read even where another process
    feeds them. The prefix here passes pixels through as float32, so the mixed pixels
    themselves are compared."""
    from kerascope.data import FolderSequence, scan_dataset
    from kerascope.data.affine import random_affine
    from kerascope.data.augment import AugmentConfig
    from kerascope.data.regularise import RegulariseConfig, sample_mix
    from kerascope.training.split import PrefixSequence

    dataset = scan_dataset(photos, 0.2, 0)
    items = dataset.splits["train"]
    sizes: list[int] = []

    def pixels(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return x.astype(np.float32)

    def sequence(share=None):
        images = FolderSequence(items, dataset.classes, 32, 8, shuffle=True, seed=0,
                                share=share)  # fmt: skip
        return PrefixSequence(images, pixels, random_affine(AugmentConfig(), 0),
                              regularise=RegulariseConfig(mixup=0.4), seed=0)  # fmt: skip

    everything = sequence()
    mixed_from_other_half = 0
    for index in (0, 1):
        shard = sequence((index, 2))
        sizes.clear()
        batches = [shard[b] for b in range(len(shard))]
        fed = list(sizes)
        for b, batch in enumerate(batches):
            got = placing.shard_rows(batch, index, 2)
            want = placing.shard_rows(everything[b], index, 2)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
        assert fed == [4] * len(shard)  # its own rows only
        for b in range(len(shard)):
            partner = sample_mix(RegulariseConfig(mixup=0.4), 0, 0, b, 8, 32, 32).partner
            mine = partner[index * 4 : (index + 1) * 4]
            mixed_from_other_half += int(np.sum((mine // 4) != index))
    assert mixed_from_other_half > 0  # the case the fix is about does occur here


@jax_only
@pytest.mark.slow
def test_the_jax_prefix_runs_on_each_device_for_its_shard(photos, tmp_path):
    """Two virtual CPU devices, prefix on the JAX engine: its outputs are split over both
    devices (4 rows each of a batch of 8, different rows) and equal the one-device forward;
    an odd batch (7 rows, the last of a precomputed pass) is padded and gives the same rows;
    one transfer epoch trains through the sharded prefix on two devices and through the
    plain forward on one, to the same weights within 1e-5. On onnxruntime the stage's line
    says why per-device does not apply."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "KERASCOPE_ENGINE": "keras",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    for name in placing.ENV.values():
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "devices_prefix_worker.py"), str(photos),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["jax_devices"] == 2
    prefix = out["prefix"]
    assert prefix["forward"] == "ShardedPrefix"
    assert prefix["devices"] == ["cpu:0", "cpu:1"] and prefix["shard rows"] == [4, 4]
    assert prefix["shards differ"]  # each device holds its own rows' features
    assert prefix["scale"] > 0.01  # real features, not zeros
    assert prefix["max diff"] <= 1e-6 and prefix["odd max diff"] <= 1e-6
    assert prefix["place"] == "frozen prefix on keras, on each of 2 devices for its shard"
    assert prefix["forward onnx"] == "Forward"
    assert "per-device does not apply" in prefix["place onnx"]
    transfer = out["transfer"]
    assert transfer["1"]["forwards"] == ["Forward"]
    assert transfer["all"]["forwards"] == ["ShardedPrefix"]
    import kerascope.zoo.preprocess  # noqa: F401  (registers the backbone's layer for loading)

    a, b = (keras.saving.load_model(Path(transfer[d]["run"]) / "model.keras") for d in ("1", "all"))
    pairs = list(zip(a.get_weights(), b.get_weights(), strict=True))
    assert max(float(np.abs(x - y).max()) for x, y in pairs) < 1e-5
    assert any(float(np.abs(x).max()) > 0 for x, _ in pairs)


def test_a_process_precomputes_the_prefix_for_its_rows_only(photos):
    """Without augmentation the prefix runs once per stage: with ``share=(i, 2)`` only over
    the rows process i feeds (its half of every padded batch: 14 or 13 of 26 in epoch 1,
    every time for validation's fixed batches), a later epoch's new rows when first met; its
    part of every batch, epoch after epoch, equals a one-process sequence's. Before, every
    process ran the prefix over every image."""
    from kerascope.data import FolderSequence, scan_dataset
    from kerascope.training.split import PrefixSequence

    dataset = scan_dataset(photos, 0.2, 0)
    seen: list[int] = []

    def pixels(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return x.astype(np.float32).mean(axis=(1, 2))  # per-image channel means

    for split, shuffle, fed in (("train", True, (14, 13)), ("validation", False, (4, 3))):
        items = dataset.splits[split]

        def sequence(share=None, items=items, shuffle=shuffle):
            images = FolderSequence(items, dataset.classes, 32, 8, shuffle=shuffle, seed=0,
                                    share=share)  # fmt: skip
            return PrefixSequence(images, pixels)

        for index in (0, 1):
            everything = sequence()
            seen.clear()
            shard = sequence((index, 2))
            assert sum(seen) == fed[index], (split, index)
            for _epoch in range(3):
                for b in range(len(shard)):
                    got = placing.shard_rows(shard[b], index, 2)
                    want = placing.shard_rows(everything[b], index, 2)
                    for g, w in zip(got, want, strict=True):
                        np.testing.assert_array_equal(g, w)
                shard.on_epoch_end()
                everything.on_epoch_end()
            if split == "validation":
                assert sum(seen) == fed[index]  # the same rows every epoch: nothing more
            else:
                assert fed[index] < sum(seen) <= len(items)  # new rows, each computed once


@jax_only
@pytest.mark.slow
@pytest.mark.keras_init  # the reference run draws its weights as a `kerascope` process does
def test_two_processes_train_split_with_mixup_as_one(photos, tmp_path, capsys, reap):
    """Two real processes on 127.0.0.1, the split trainer (transfer: frozen prefix on the CPU
    engine, augmentation and mixup before it, validation precomputed): each runs the prefix
    on its own rows, reads its rows' mixup partners, and precomputes validation for its rows;
    the history equals one process's run within 1e-5 (before, a partner fed by the other
    process was a black image). The one-process reference trains in this process while the
    pair runs (a third process cost ~5 s of imports)."""
    from kerascope.cli import main

    from .ports import free_port

    common = ["train", str(photos), "--recipe", "transfer", "--epochs", "2", "--batch-size",
              "8", "--image-size", "64", "--seed", "0", "--mixup", "0.4"]  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1"}
    for name in placing.ENV.values():
        env.pop(name, None)
    kerascope = [sys.executable, "-m", "kerascope"]
    single = tmp_path / "single"
    run, port = tmp_path / "pair", free_port()
    procs = [subprocess.Popen([*kerascope, *common, "-o", str(run), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                               str(i)], env={**env, "KERASCOPE_HOME": str(tmp_path / f"h{i}")},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]  # fmt: skip
    reap.extend(procs)
    assert main([*common, "-o", str(single)]) == 0, capsys.readouterr().err[-3000:]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    import csv

    def history(path: Path) -> list[dict[str, str]]:
        with open(path / "history.csv", newline="") as f:
            return list(csv.DictReader(f))

    pair, ref = history(run), history(single)
    assert len(pair) == len(ref) == 2
    for got, want in zip(pair, ref, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5), key


@jax_only
@pytest.mark.slow
@pytest.mark.keras_init  # the reference run draws its weights as a `kerascope` process does
def test_two_processes_with_two_devices_each_shard_the_jax_prefix(photos, tmp_path, monkeypatch,
                                                                  reap):  # fmt: skip
    """Two processes on 127.0.0.1, two virtual CPU devices each, the prefix on JAX: each
    process runs it sharded over its own two devices (weights copied from the global,
    four-device arrays onto its devices), and one transfer epoch ends within 1e-5 of the
    one-device weights (trained in this process, one CPU device, while the pair runs)."""
    from kerascope.training import epochs as stage_epochs
    from kerascope.training import run as training_run

    from . import devices_prefix_worker
    from .ports import free_port

    worker = str(ROOT / "tests" / "devices_prefix_worker.py")
    env = {**os.environ, "KERAS_BACKEND": "jax", "KERASCOPE_ENGINE": "keras",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    for name in placing.ENV.values():
        env.pop(name, None)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(photos), str(tmp_path / "pair"),
                               str(i), str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]  # fmt: skip
    reap.extend(procs)
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    for module, name in ((training_run, "use_split"), (stage_epochs, "prefix_forward")):
        monkeypatch.setattr(module, name, getattr(module, name))  # transfer_run replaces them
    single = devices_prefix_worker.transfer_run(str(photos), str(tmp_path / "one"), "1")
    assert single["forwards"] == ["Forward"]  # one device: the plain forward
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [(g["local"], g["all"]) for g in got] == [(2, 4), (2, 4)]
    assert [g["forwards"] for g in got] == [["ShardedPrefix"], ["ShardedPrefix"]]
    import kerascope.zoo.preprocess  # noqa: F401  (registers the backbone's layer for loading)

    a = keras.saving.load_model(Path(single["run"]) / "model.keras")
    b = keras.saving.load_model(Path(got[0]["run"]) / "model.keras")
    pairs = list(zip(a.get_weights(), b.get_weights(), strict=True))
    assert max(float(np.abs(x - y).max()) for x, y in pairs) < 1e-5
