"""One compile per model and shape across jobs, on the JAX engine a GPU runs: repeated
``predict``/``evaluate`` calls reuse the loaded model (`kerascope.zoo.shared`), and the last
batch of a job longer than one batch runs at the full batch size (`kerascope.sources.bucket`),
so jobs whose lengths are not multiples of the batch size compile nothing new."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kerascope.testing.compiles import count_compiles


@pytest.fixture
def keras_engine(monkeypatch):
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")  # the JAX engine a GPU runs


def _photos(folder, skimage_data, n: int) -> list[str]:
    """``n`` small crops of real photos (cat and coffee), as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        name = ("chelsea.png", "coffee.png")[i % 2]
        with Image.open(skimage_data / name) as img:
            box = (10 * i, 5 * i, 10 * i + 200, 5 * i + 200)
            path = folder / f"{i:02d}.jpg"
            img.convert("RGB").crop(box).resize((48, 48)).save(path)
        paths.append(str(path))
    return paths


def _run(folder, seed: int):
    """A LeNet run folder as ``train`` leaves it, random weights from ``seed``."""
    import keras

    from kerascope.training.recipes import build_model, get_recipe, inference_model

    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = inference_model(build_model(get_recipe("lenet"), 2, (32, 32), None, seed=seed))
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps({"classes": ["cat", "coffee"]}))
    return folder


def test_repeated_predict_compiles_nothing_new_and_a_rewritten_run_is_reloaded(
    tmp_path, skimage_data, keras_engine
):
    import kerascope
    from kerascope.zoo.models import load_model

    files = _photos(tmp_path / "in", skimage_data, 8)
    run = _run(tmp_path / "run", seed=0)
    kerascope.predict(str(run), files, batch_size=4)
    with count_compiles() as again:
        first = kerascope.predict(str(run), files, batch_size=4)
    assert again.names == []  # before: the run loaded and compiled again on every call

    _run(tmp_path / "run", seed=5)  # a later train rewrites the folder: never served stale
    after = kerascope.predict(str(run), files, batch_size=4)
    fresh = kerascope.predict(load_model(str(run)), files, batch_size=4)
    assert [r.probability for r in after] == pytest.approx([r.probability for r in fresh])
    assert [r.probability for r in after] != pytest.approx([r.probability for r in first])


def test_repeated_evaluate_compiles_nothing_new(tmp_path, skimage_data, keras_engine):
    import kerascope

    files = _photos(tmp_path / "in", skimage_data, 8)
    labels = ["cat", "coffee"] * 4
    run = _run(tmp_path / "run", seed=0)
    options = {"labels": labels, "batch_size": 4, "heatmaps": False, "top_losses": 0}
    kerascope.evaluate(str(run), files, output=str(tmp_path / "e1"), **options)
    with count_compiles() as again:
        kerascope.evaluate(str(run), files, output=str(tmp_path / "e2"), **options)
    assert again.names == []


def test_bucket_pads_a_long_jobs_last_batch_to_the_batch_size():
    from kerascope.sources import bucket

    for job in (33, 34, 36, 40, 63):  # every last batch of a job of 32s: one shape
        assert [bucket(min(32, job - lo), 32, job=job) for lo in range(0, job, 32)] == [32, 32]
    # jobs shorter than one batch: powers of two, so a 1-image job does not run 256 rows
    assert [bucket(n, 256, job=n) for n in (1, 2, 3, 5, 60, 200)] == [1, 2, 4, 8, 64, 256]
    assert bucket(60, 100) == 64 and bucket(70, 100) == 100  # as its docstring says


def _tiny():
    import keras

    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="tiny_job")


def test_jobs_of_odd_lengths_compile_one_shape(skimage_data):
    """Jobs of 9, 10, 11, 13 images at batch 4 (last batches of 1, 2, 3, 1) through the
    forward with the job's length: one compile for the first job, none after."""
    from kerascope.inference import compiled

    with Image.open(skimage_data / "astronaut.png") as img:
        pixels = np.stack([np.asarray(img.convert("RGB").resize((24, 24)))] * 13)
    forward = compiled(_tiny(), "keras")
    counts, results = [], []
    for n in (9, 10, 11, 13):
        with count_compiles() as c:
            out = np.concatenate([forward(pixels[lo : min(n, lo + 4)], 4, n)
                                  for lo in range(0, n, 4)])  # fmt: skip
        counts.append(len(c.names))
        results.append(out)
    assert counts == [1, 0, 0, 0], counts  # before: 2 (4 and 1 rows), 1 (2 rows), 0, 0
    assert all(len(r) == n for r, n in zip(results, (9, 10, 11, 13), strict=True))
    np.testing.assert_allclose(results[3], forward(pixels), rtol=1e-5, atol=1e-6)


def test_faithfulness_chunks_compile_one_shape(skimage_data):
    from kerascope.cam.faithfulness import _class_probabilities
    from kerascope.inference import compiled

    with Image.open(skimage_data / "coffee.png") as img:
        pixels = np.stack([np.asarray(img.convert("RGB").resize((24, 24)))] * 10)
    forward = compiled(_tiny(), "keras")
    _class_probabilities(forward, {"a": pixels[:8]}, None, 4)
    with count_compiles() as c:
        _class_probabilities(forward, {"a": pixels[:9], "b": pixels[:1]}, None, 4)
        _class_probabilities(forward, {"a": pixels[:7]}, None, 4)
    assert c.names == []  # before: the last chunk of 2 rows compiled a shape of its own
