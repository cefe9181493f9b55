"""The whole-graph trainer (``--engine keras``): augmentation inside the one compiled step, one
compilation per step function whatever the last batch, the feed, and mixed precision."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.data.affine import random_affine
from kerascope.data.augment import AugmentConfig, sample_matrices, warp
from kerascope.data.loader import FolderSequence
from kerascope.report import read_history
from kerascope.testing import cat_and_coffee
from kerascope.training import train
from kerascope.training.whole import DeviceFeed

from .test_train import make_shapes

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="counts JAX compiles")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), n=15, size=40)


def test_one_compilation_per_step_function_with_a_partial_last_batch(shapes, tmp_path,
                                                                     jax_compiles):  # fmt: skip
    """36 training images in batches of 16 (the last one 4): augmented on the device inside
    the train step, which compiles once for three epochs; evaluation once too."""
    run = train(shapes, recipe="lenet", output=tmp_path / "run", epochs=3, batch_size=16,
                image_size=32, engine="keras", progress=False)  # fmt: skip
    steps = [n for n in jax_compiles.names if "train_step" in n or "test_step" in n]
    assert sorted(steps) == ["jit(test_step)", "jit(train_step)"], jax_compiles.names
    history = read_history(run.run_dir / "history.csv")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # accuracy counts the 36 (9) real images, not the padding: k / 36 (k / 9), never k / 48
    for r in history:
        assert r["accuracy"] * 36 == pytest.approx(round(r["accuracy"] * 36), abs=1e-3)
        assert r["val_accuracy"] * 9 == pytest.approx(round(r["val_accuracy"] * 9), abs=1e-3)
    assert all(r["images_per_second"] > 0 and 0 < r["train_seconds"] <= r["seconds"]
               for r in history)  # fmt: skip
    assert run.config["precision"] == "float32"  # auto, on a CPU


def test_batches_put_on_the_device_compile_the_step_once(shapes, tmp_path, monkeypatch,
                                                         jax_compiles):  # fmt: skip
    """The accelerator feed (batches put on the device in its threads): a batch committed to
    the named device made the step compile three times per stage (committed batches, then
    the state coming back committed, then the metrics reset). Forced here on the CPU."""
    import kerascope.training.whole as whole

    monkeypatch.setattr(whole, "on_accelerator", lambda: True)
    train(shapes, recipe="lenet", output=tmp_path / "run", epochs=3, batch_size=16,
          image_size=32, engine="keras", progress=False)  # fmt: skip
    assert jax_compiles.names.count("jit(train_step)") == 1, jax_compiles.names


def test_feed_pads_weighs_and_draws_the_cpu_trainers_views(shapes, tmp_path):
    """Every batch has the full shape; padding weighs 0 and real rows weigh B/real (class
    weights folded in), so each step's loss is its real rows' mean; the matrices are the ones
    the Pillow trainer draws for the same (seed, epoch, batch), so both trainers see the same
    views."""
    items = [(str(p), i % 3) for i, p in enumerate(sorted(shapes.rglob("*.png")))][:20]
    images = FolderSequence(items, ["a", "b", "c"], 32, batch_size=8, shuffle=True, seed=4,
                            cache=tmp_path / "cache")  # fmt: skip
    images.set_epoch(2)
    feed = DeviceFeed(images, AugmentConfig(), seed=9, class_weight={1: 2.0})
    assert len(feed) == 3
    batches = [feed[i] for i in range(3)]
    for inputs, labels, weights in batches:
        assert inputs["image"].shape == (8, 32, 32, 3) and inputs["image"].dtype == np.uint8
        assert inputs["matrices"].shape == (8, 2, 3) and labels.shape == weights.shape == (8,)
    last_rows, real = images.padded_rows(2)
    assert real == 4 and np.array_equal(batches[2][1][:4], images.labels[last_rows[:4]])
    weights = np.concatenate([w for _, _, w in batches])
    labels = np.concatenate([y for _, y, _ in batches])
    np.testing.assert_array_equal(weights[-4:], 0)
    scale = np.repeat([1.0, 1.0, 8 / 4], 8)[:20]  # two full batches, then 4 real rows of 8
    np.testing.assert_allclose(weights[:20], np.where(labels[:20] == 1, 2 * scale, scale))
    inputs = batches[1][0]
    np.testing.assert_array_equal(inputs["matrices"],
                                  sample_matrices(AugmentConfig(), 9, 2, 1, 8, 32, 32))  # fmt: skip
    device = keras.ops.convert_to_numpy(warp(inputs["image"], inputs["matrices"]))
    host = random_affine(AugmentConfig(), 9)(inputs["image"], 2, 1)
    assert np.abs(device - host).mean() < 1.0
    plain = DeviceFeed(images, None)[0][0]  # validation: plain uint8 images
    assert isinstance(plain, np.ndarray) and plain.shape == (8, 32, 32, 3)


def test_feed_transfers_each_batch_in_its_worker_with_batches_queued_ahead(shapes, tmp_path):
    """On an accelerator the worker that prepares a batch also puts it on the device, and
    several batches are prepared ahead (prefetch depth >= 2) while the step runs, on the
    feed's own threads: Keras reads it on one thread, so it has no enqueuer (and none of its
    0.1 s waits at the end of every pass)."""
    import threading

    import jax
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    made: dict[int, str] = {}

    class Recording(DeviceFeed):
        def make_batch(self, index):
            made[index] = threading.current_thread().name
            return super().make_batch(index)

    items = [(str(p), i % 3) for i, p in enumerate(sorted(shapes.rglob("*.png")))][:12]
    images = FolderSequence(items, ["a", "b", "c"], 32, batch_size=8)
    feed = Recording(images, AugmentConfig(), transfer=True)
    feed[0]
    inputs, labels, weights = feed[1]
    assert made[0] == threading.current_thread().name  # the first read: made on the spot
    assert made[1].startswith("kerascope-batches")  # made ahead, and transferred there
    assert isinstance(inputs["image"], jax.Array) and isinstance(weights, jax.Array)
    assert inputs["image"].dtype == "uint8" and inputs["image"].shape == (8, 32, 32, 3)
    assert feed.threads >= 2 and feed.ahead >= 2
    assert feed.workers == 1 and PyDatasetAdapter(feed).enqueuer is None


def test_bfloat16_training_learns_real_photos(tmp_path):
    """A short bfloat16 run of the whole graph on a CPU (cat vs coffee crops) learns: the
    layers compute in bfloat16 while it trains, and the saved model is float32 again."""
    data = cat_and_coffee(tmp_path / "data")
    seen: dict[str, str] = {}

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            network = self.model.network
            seen["conv"] = network.get_layer("conv1").compute_dtype
            seen["out"] = network.get_layer("predictions").compute_dtype

    run = train(data, recipe="lenet", output=tmp_path / "run", epochs=6, batch_size=16,
                image_size=32, engine="keras", precision="bfloat16", lr=3e-3, progress=False,
                callbacks=[Watch()], val_split=0.25)  # fmt: skip
    assert seen == {"conv": "bfloat16", "out": "float32"}
    assert run.config["precision"] == "bfloat16"
    assert "precision bfloat16" in (run.run_dir / "report.md").read_text()
    assert max(r["accuracy"] for r in run.history) > 0.75  # chance is 0.5
    assert run.val_accuracy > 0.6
    saved = keras.saving.load_model(run.model_path)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}


_ON_DEVICE_1 = """
import sys
from pathlib import Path
from kerascope.data.augment import AugmentConfig
from kerascope.data.loader import FolderSequence
from kerascope.training.devices import data_parallel
from kerascope.training.whole import DeviceFeed
items = [(str(p), i % 3) for i, p in enumerate(sorted(Path(sys.argv[1]).rglob("*.png")))][:12]
with data_parallel([1], 8):
    feed = DeviceFeed(FolderSequence(items, ["a", "b", "c"], 32, batch_size=8), AugmentConfig(),
                      transfer=True)
    feed[0]
    inputs, labels, weights = feed[1]  # made ahead, in the feed's thread
    print(sorted(str(d) for d in inputs["image"].devices() | weights.devices()))
"""


def test_batches_made_ahead_go_to_the_one_device_chosen(shapes):
    """``devices=[1]``: the feed's threads put each batch on device 1, not on JAX's default
    device 0 (`jax.default_device` is the main thread's alone)."""
    import os
    import subprocess
    import sys

    from .test_train_devices import _env

    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", _ON_DEVICE_1, str(shapes)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=os.getcwd())  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['cpu:1']", done.stdout


_SPLIT_AHEAD = """
import sys
from pathlib import Path
import numpy as np
import keras
import kerascope.training.whole as whole
from kerascope.data.augment import AugmentConfig
from kerascope.data.loader import FolderSequence
from kerascope.training import train
from kerascope.training.devices import data_parallel
from kerascope.zoo.fast_init import numpy_init
items = [(str(p), i % 3) for i, p in enumerate(sorted(Path(sys.argv[1]).rglob("*.png")))][:12]
weights = {}
for accelerator in (False, True):  # Keras places each batch / the feed's threads did
    whole.on_accelerator = lambda: accelerator
    with data_parallel("all", 8):
        feed = whole.DeviceFeed(FolderSequence(items, ["a", "b", "c"], 32, batch_size=8),
                                AugmentConfig())
        feed[0]
        inputs, labels, w = feed[1]  # made ahead, in the feed's thread
        layout = keras.distribution.distribution().get_data_layout((8, 32, 32, 3))
        if accelerator:
            for a in (inputs["image"], inputs["matrices"], labels, w):
                assert a.sharding.is_equivalent_to(layout.backend_layout, a.ndim), a.sharding
            print("split", sorted(str(d) for d in inputs["image"].devices()))
        else:
            assert isinstance(inputs["image"], np.ndarray)
    with numpy_init():
        run = train(sys.argv[1], recipe="lenet", output=Path(sys.argv[2]) / str(accelerator),
                    epochs=2, batch_size=8, image_size=32, engine="keras", seed=0,
                    progress=False, devices="all")
    weights[accelerator] = [np.asarray(v) for v in keras.saving.load_model(run.model_path).weights]
print("same", all(np.array_equal(a, b) for a, b in zip(weights[False], weights[True])))
"""


def test_batches_made_ahead_are_split_over_the_devices_as_keras_lays_them_out(shapes, tmp_path):
    """On several devices of one process the feed's threads put each batch there already
    split by rows as Keras's ``DataParallel`` would (before: handed over as NumPy, copied
    in the step loop); training gives the same weights as when Keras places the batches."""
    import os
    import subprocess
    import sys

    from .test_train_devices import _env

    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", _SPLIT_AHEAD, str(shapes), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.getcwd())  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "split ['cpu:0', 'cpu:1']" in lines, lines
    assert lines[-1] == "same True", lines
