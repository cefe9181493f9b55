"""Inference at the device's speed (issue 18): fixed batch shapes, top-k in the compiled
forward, a decode pool on every core running ahead, and reduced precision."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import kerascope
from kerascope import inference, sources
from kerascope.classification import classify_sources
from kerascope.cli import main
from kerascope.zoo.models import Classifier

CATS = {"tabby", "tiger_cat", "Egyptian_cat"}
# bfloat16 against float32 on the four real photos with EfficientNet-Lite0 (measured on CPU,
# JAX 0.10: largest difference of any of the 1000 probabilities 0.017, top-5 ordered alike).
PROBABILITY_TOLERANCE = 0.04


def _tiny_classifier(seed: int = 0) -> Classifier:
    """16x16 RGB -> 7 classes, NumPy weights (outputs O(1), reproducible)."""
    import keras

    L = keras.layers
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = L.Rescaling(1 / 255.0, name="scale")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(7, name="logits")(x)
    outputs = L.Activation("softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=f"tiny{seed}")
    _randomize(model, seed)
    labels = [(str(i), f"class_{i}") for i in range(7)]
    return Classifier(model=model, name=model.name, input_size=(16, 16), labels=labels)


def _randomize(model, seed: int) -> None:
    """Weights in [-1, 1] (variances in [0.5, 1.5]: a batch norm needs them positive)."""
    rng = np.random.default_rng(seed)
    model.set_weights([
        rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in w.path
        else rng.uniform(-1.0, 1.0, w.shape).astype("float32")
        for w in model.weights
    ])  # fmt: skip


def _pixels(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_buckets():
    assert [inference.bucket(n, 16) for n in (1, 2, 3, 5, 8, 9, 15, 16)] == [
        1, 2, 4, 8, 8, 16, 16, 16]  # fmt: skip
    assert inference.bucket(24, 24) == 24 and inference.bucket(13, 24) == 16
    assert inference.bucket(40) == 64 and inference.bucket(40, 16) == 64  # more than a batch
    assert inference.bucket(3, 256, smallest=8) == 8
    with pytest.raises(ValueError):
        inference.bucket(0)


def test_odd_job_sizes_compile_once_per_bucket(monkeypatch, jax_compiles):
    """37 images at batch 16 run as 16, 16 and 16 rows (a long job's last batch runs at the
    batch size); later jobs of 21 and 30 reuse that shape: one compilation in all, where one
    per bucket of the last batches (8, 16) compiled twice, and one per last batch three times."""
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    clf = _tiny_classifier(seed=1)
    pixels = _pixels(37)
    first = list(classify_sources(clf, list(pixels), top=3, batch_size=16))
    forward = inference.compiled(clf.model)
    assert forward.engine == "keras" and forward.pads
    assert forward.compilations == 1
    after_first = len(jax_compiles.names)
    assert after_first == 1
    for n in (21, 30):
        again = list(classify_sources(clf, list(pixels[:n]), top=3, batch_size=16))
        assert [r.predictions for r in again] == [r.predictions for r in first[:n]]
    assert forward.compilations == 1
    assert len(jax_compiles.names) == after_first  # JAX compiled nothing more


@pytest.mark.backends  # on torch: top-k selected on its device (`topk.torch_top_k`)
def test_padded_rows_never_come_back_and_results_match_the_model(monkeypatch):
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    clf = _tiny_classifier(seed=2)
    pixels = _pixels(11, seed=3)
    expected = clf.model.predict(pixels.astype("float32"), verbose=0)
    forward = inference.compiled(clf.model)
    got = forward(pixels, batch_size=16)  # padded to 16 rows on the device
    assert got.shape == (11, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    values, indices = forward.top_k(pixels, 3, batch_size=16)
    assert values.shape == indices.shape == (11, 3) and indices.dtype == np.int32
    np.testing.assert_array_equal(indices, np.argsort(-expected, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(values, np.sort(expected, axis=1)[:, ::-1][:, :3], atol=1e-5)
    host_v, host_i = inference.host_top_k(expected, 3)
    np.testing.assert_array_equal(host_i, indices)
    assert inference.host_top_k(expected, 50)[1].shape == (11, 7)  # k above the classes
    results = list(classify_sources(clf, list(pixels), top=2, batch_size=4, threshold=0.0))
    for r, row in zip(results, expected, strict=True):
        assert [p.index for p in r.predictions] == list(np.argsort(-row, kind="stable")[:2])
        assert r.predictions[0].probability == pytest.approx(float(row.max()), abs=1e-5)


def test_top_k_on_the_host_picks_ties_as_jax_does_whatever_k():
    """A tie at the cut of k: argpartition takes either, so rank 1 of ``-k 1`` once differed
    from rank 1 of ``-k 2`` (two classes of chelsea.png equal in bfloat16). NaN ranks last."""
    import jax

    from kerascope.topk import host_top_k

    rng = np.random.default_rng(0)
    scores = rng.choice([0.0, 0.25, 0.5, 1.0], size=(16, 40)).astype(np.float32)
    for k in (1, 2, 3, 12, 39, 40, 99):
        values, indices = host_top_k(scores, k)
        want_v, want_i = jax.lax.top_k(scores, min(k, 40))
        assert indices.dtype == np.int32 and indices.shape == (16, min(k, 40))
        np.testing.assert_array_equal(indices, np.asarray(want_i))
        np.testing.assert_array_equal(values, np.asarray(want_v))
    row = rng.random(1000, dtype=np.float32)
    row[[10, 20]] = 2.0
    assert host_top_k(row, 1)[1].tolist() == [10] and host_top_k(row, 2)[1].tolist() == [10, 20]
    row[[3, 500]] = np.nan
    assert host_top_k(row, 1000)[1][-2:].tolist() == [3, 500]
    assert host_top_k(np.full((2, 3, 5), 0.5, np.float32), 2)[1].tolist() == [[[0, 1]] * 3] * 2


def test_top_k_on_the_torch_device_picks_ties_as_jax_does():
    """Equal scores: the lower class index first, on torch's device as in JAX's compiled top-k
    (torch.topk does not say which it picks), and only k per row."""
    import jax
    import torch

    from kerascope.topk import torch_top_k

    rng = np.random.default_rng(0)
    scores = rng.choice([0.0, 0.25, 0.5, 1.0], size=(16, 40)).astype(np.float32)
    top = torch_top_k(lambda xs: [torch.as_tensor(xs[0])])
    for k in (1, 3, 12, 40, 99):
        values, indices = (t.numpy() for t in top([scores], k))
        want_v, want_i = jax.lax.top_k(scores, min(k, 40))
        assert indices.dtype == np.int32 and indices.shape == (16, min(k, 40))
        np.testing.assert_array_equal(indices, np.asarray(want_i))
        np.testing.assert_array_equal(values, np.asarray(want_v))


def test_engines_agree_on_top_k_and_failed_inputs_keep_their_place(monkeypatch, tmp_path):
    clf = _tiny_classifier(seed=4)
    good = _pixels(5, seed=5)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    from PIL import Image

    paths = []
    for i, p in enumerate(good):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(p).save(path)
        paths.append(str(path))
    paths.insert(2, str(broken))
    paths.append(sources.Missing(str(tmp_path / "gone.png")))
    by_engine = {}
    for engine in ("keras", "onnx"):
        monkeypatch.setenv("KERASCOPE_ENGINE", engine)
        by_engine[engine] = list(classify_sources(clf, paths, top=3, batch_size=4))
    keras_results, onnx_results = by_engine["keras"], by_engine["onnx"]
    assert [r.source for r in keras_results] == [str(p) for p in paths]
    assert [r.ok for r in keras_results] == [True, True, False, True, True, True, False]
    assert keras_results[6].error == sources.MISSING_INPUT
    for a, b in zip(keras_results, onnx_results, strict=True):
        assert a.error == b.error
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        for p, q in zip(a.predictions, b.predictions, strict=True):
            assert p.probability == pytest.approx(q.probability, abs=1e-4)


def test_decode_pool_uses_every_core(monkeypatch):
    monkeypatch.delenv(sources.WORKERS_VAR, raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert sources.decode_workers() == cores  # not capped at 8
    monkeypatch.setenv(sources.WORKERS_VAR, "16")
    assert sources.decode_workers() == 16
    monkeypatch.setenv(sources.WORKERS_VAR, "many")
    with pytest.raises(kerascope.errors.KerascopeError, match="KERASCOPE_DECODE_WORKERS"):
        sources.decode_workers()


def test_decoding_runs_two_batches_ahead(monkeypatch):
    """While the consumer holds batch 0, batches 1 and 2 are decoded (prefetch depth 2)."""
    monkeypatch.setenv(sources.WORKERS_VAR, "4")
    seen: set[int] = set()
    lock = threading.Lock()
    load = sources.load_source

    def recording(source, size=None):
        with lock:
            seen.add(int(source[0, 0, 0]))
        return load(source, size)

    monkeypatch.setattr(sources, "load_source", recording)
    arrays = [np.full((8, 8, 3), i, np.uint8) for i in range(20)]  # row i holds value i
    batches = sources.iter_pixel_batches(arrays, (8, 8), 4, rows=lambda n: 8)
    first = next(batches)
    deadline = time.monotonic() + 10
    while len(seen) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(range(12)) <= seen  # batches 0, 1 and 2 ...
    assert first.pixels.shape == (8, 8, 8, 3) and first.n == 4  # padded to the engine's rows
    assert not first.pixels[4:].any()
    rest = list(batches)
    assert [b.n for b in rest] == [4, 4, 4, 4]
    stacked = np.concatenate([b.pixels[: b.n] for b in [first, *rest]])
    np.testing.assert_array_equal(stacked[:, 0, 0, 0], np.arange(20))  # in input order


def test_in_memory_batch_at_model_size_classifies_like_a_list(monkeypatch):
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    clf = _tiny_classifier(seed=6)
    pixels = _pixels(9, seed=7)
    as_batch = kerascope.classify(pixels, model=clf, top=2, batch_size=4)
    as_list = kerascope.classify(list(pixels), model=clf, top=2, batch_size=8)
    assert [r.source for r in as_batch] == ["<array>"] * 9
    for a, b in zip(as_batch, as_list, strict=True):  # other batch shapes: float rounding only
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        assert [p.probability for p in a.predictions] == pytest.approx(
            [p.probability for p in b.predictions], abs=1e-6)  # fmt: skip


def test_mixed_clone_keeps_outputs_float32_and_follows_weight_updates(monkeypatch):
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    clf = _tiny_classifier(seed=8)
    clone = inference.mixed_clone(clf.model, "bfloat16")
    policies = {layer.name: layer.dtype_policy.name for layer in clone.layers}
    assert policies["conv"] == policies["logits"] == "mixed_bfloat16"
    assert policies["probs"] == "float32"  # the softmax: float32 probabilities
    assert all(v.dtype == "float32" for v in clone.weights)  # float32 weights
    forward = inference.compiled(clf.model, precision="bfloat16")
    assert forward.precision == "bfloat16" and forward.engine == "keras"
    assert inference.compiled(clf.model, precision="bf16") is forward
    x = _pixels(6, seed=9)
    got = forward(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, clf.model.predict(x.astype("float32"), verbose=0), atol=0.03)
    _randomize(clf.model, seed=10)  # as a trainer would between two calls
    expected = clf.model.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(forward(x), expected, atol=0.03)


def test_reduced_precision_is_refused_on_onnx_in_one_line(monkeypatch, no_cpu_bf16):
    clf = _tiny_classifier(seed=11)
    from kerascope.precision import PrecisionError

    with pytest.raises(PrecisionError, match="onnx engine computes in float32 only"):
        inference.compiled(clf.model, "onnx", precision="bfloat16")
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    assert inference.compiled(clf.model, precision="bfloat16").engine == "keras"  # auto
    assert inference.compiled(clf.model).precision == "float32"  # callers' default


def test_bfloat16_agrees_with_float32_on_real_photos(lite0, photo_paths, monkeypatch):
    """The tolerance stated above: same top-1 for every photo, probabilities within it."""
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    paths = [str(p) for p in photo_paths.values()]
    full = kerascope.classify(paths, model=lite0, top=5, batch_size=4, precision="float32")
    half = kerascope.classify(paths, model=lite0, top=5, batch_size=4, precision="bfloat16")
    assert full[0].predictions[0].name in CATS and half[0].predictions[0].name in CATS
    for f, h in zip(full, half, strict=True):
        assert f.predictions[0].index == h.predictions[0].index
        by_class = {p.index: p.probability for p in h.predictions}
        for p in f.predictions:
            if p.index in by_class:
                assert abs(p.probability - by_class[p.index]) <= PROBABILITY_TOLERANCE
    forward = inference.compiled(lite0.model, precision="bfloat16")
    x = np.stack([
        sources.decode_item(p, lite0.input_size, convention=lite0.convention).pixels
        for p in paths
    ])  # fmt: skip
    difference = np.abs(forward(x) - inference.compiled(lite0.model, "keras")(x)).max()
    print(f"\nbfloat16 vs float32, largest probability difference: {difference:.4f}")
    assert difference <= PROBABILITY_TOLERANCE


def test_cli_says_which_precision_ran(photo_paths, monkeypatch, capsys, no_cpu_bf16):
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    chelsea = str(photo_paths["chelsea"])
    assert main(["classify", chelsea, "-k", "1", "--precision", "bfloat16", "-f", "json"]) == 0
    captured = capsys.readouterr()
    assert "computing in bfloat16 (mixed: float32 weights and outputs) on the keras engine" in (
        captured.err)  # fmt: skip
    import json

    assert json.loads(captured.out)[0]["predictions"][0]["name"] in CATS
    monkeypatch.setenv("KERASCOPE_ENGINE", "onnx")
    assert main(["classify", chelsea, "--precision", "bf16"]) == 2  # alias, refused on onnx
    err = capsys.readouterr().err.strip()
    assert "onnx engine computes in float32 only" in err and "\n" not in err
    with pytest.raises(SystemExit) as exited:
        main(["classify", chelsea, "--precision", "fp8"])
    assert exited.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_load_model_takes_a_precision(lite0, monkeypatch):
    from kerascope.classification import run_precision
    from kerascope.errors import ConfigError

    with pytest.raises(ConfigError, match="precision must be one of .*; got 'fp8'$"):
        kerascope.load_model("efficientnet_lite0", precision="fp8")
    monkeypatch.setenv("KERASCOPE_PRECISION", "foo")  # the default's own name, not "None"
    with pytest.raises(ConfigError, match="; got KERASCOPE_PRECISION='foo'$"):
        run_precision(lite0)
    monkeypatch.delenv("KERASCOPE_PRECISION")
    clf = Classifier(**{**vars(lite0), "extra": {"precision": "bfloat16"}})
    assert run_precision(clf) == "bfloat16" and run_precision(clf, "float32") == "float32"
    assert run_precision(lite0) == "float32"  # auto on a CPU


def test_features_in_bfloat16_are_their_own_group_and_close_to_float32(photo_paths):
    from kerascope.bottleneck import FeatureSpec

    plain = FeatureSpec.make("efficientnet_lite0")
    assert plain.key == "efficientnet_lite0,layer=last,pool=avg,size=224"  # unchanged
    half = FeatureSpec.make("efficientnet_lite0", precision="bf16")
    assert half.key == plain.key + ",precision=bfloat16" and half != plain
    paths = [str(photo_paths[n]) for n in ("chelsea", "coffee", "rocket")]
    full = kerascope.features(paths, precision="float32", batch_size=2)
    reduced = kerascope.features(paths, precision="bfloat16", batch_size=2)
    assert full.shape == reduced.shape == (3, 1280) and reduced.dtype == np.float32
    cosine = (
        (full * reduced).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(reduced, axis=1)
    )
    assert cosine.min() > 0.99


def test_a_picture_batch_is_fitted_on_the_device_like_pillow_fits_it(lite0, photo_paths,
                                                                     monkeypatch):  # fmt: skip
    """An (N, H, W, 3) uint8 array on the keras engine: crop and resize run in the compiled
    forward (no per-picture host work; the default on a GPU, asked for here on the CPU); same
    top-1 as Pillow's fit in the decode threads."""
    from PIL import Image

    pictures = np.stack([
        np.asarray(Image.open(p).convert("RGB").resize((400, 300))) for p in photo_paths.values()
    ])  # fmt: skip
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    forward = inference.compiled(lite0.model)
    assert forward.fits_on_device
    on_device = list(classify_sources(lite0, pictures, top=3, batch_size=4, device_fit=True))
    compiles = forward.compilations
    again = list(classify_sources(lite0, pictures[:3], top=3, batch_size=4, device_fit=True))
    assert forward.compilations == compiles  # 3 rows padded to the same 4
    assert [r.predictions for r in again] == [r.predictions for r in on_device[:3]]
    by_pillow = kerascope.classify(list(pictures), model=lite0, top=3, batch_size=4)
    assert on_device[0].predictions[0].name in CATS
    for a, b in zip(on_device, by_pillow, strict=True):
        assert a.source == b.source == "<array>"
        assert a.predictions[0].index == b.predictions[0].index
        # measured on CPU: top-5 probabilities at most 0.018 apart (rocket), 0.001 (chelsea)
        assert a.predictions[0].probability == pytest.approx(b.predictions[0].probability,
                                                             abs=0.03)  # fmt: skip


def test_mixed_clone_of_a_model_holding_a_model(monkeypatch):
    """A backbone nested as one layer (how transfer models are built) is rebuilt mixed too."""
    import keras

    inner = _tiny_classifier(seed=12).model
    backbone = keras.Model(inner.input, inner.get_layer("gap").output, name="backbone")
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs, name="transfer")
    clone = inference.mixed_clone(model, "bfloat16")
    nested = next(layer for layer in clone.layers if isinstance(layer, keras.Model))
    assert nested.get_layer("conv").dtype_policy.name == "mixed_bfloat16"
    assert clone.get_layer("head").dtype_policy.name == "float32"
    x = _pixels(5, seed=13)
    expected = model.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(inference.compiled(model, "keras", "bfloat16")(x), expected,
                               atol=0.03)  # fmt: skip


def test_a_cuda_result_is_copied_back_behind_its_own_kernels(monkeypatch):
    """On CUDA the copy back is queued when the batch is dispatched, with an event that
    `result()` waits on: queued later, it would wait for the next batch too (one stream)."""
    import torch

    events = []

    class Event:  # torch.cuda.Event, without a GPU
        def record(self, stream):
            events.append(("record", stream))

        def synchronize(self):
            events.append("wait")

    class CudaTensor:
        is_cuda = True
        device = "cuda:1"  # Keras's device (KERAS_TORCH_DEVICE), not the current one

        def __init__(self, value):
            self.value = value

        def detach(self):
            return self

        def to(self, device, non_blocking=False):
            events.append(("copy", device, non_blocking))
            return np.asarray(self.value)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    pending = inference.Pending([CudaTensor([[1.0, 2.0], [3.0, 4.0]]), np.arange(2)], 1, False)
    assert events == [("copy", "cpu", True), ("record", "stream of cuda:1")]  # at dispatch
    values, indices = pending.result()
    assert events[-1] == "wait"
    np.testing.assert_array_equal(values, [[1.0, 2.0]])
    np.testing.assert_array_equal(indices, [0])
