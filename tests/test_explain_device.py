"""Explain at device speed (issue 18): the whole Grad-CAM map in one compiled call per batch,
one compilation per job whatever its size, pictures written by a pool whose errors reach the
caller, and reduced precision that agrees with float32 on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.cam.base import as_classifier, normalise
from kerascope.cam.explain import Explainer
from kerascope.cam.save import save_explanations
from kerascope.files import OutputError

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")


def _tiny(head: str = "gap", classes: int = 5, size: int = 32):
    """A small CNN (NumPy-drawn weights): GAP -> Dropout -> Dense, or Flatten -> Dense. Seeded:
    the same weights in every session, so their compiled functions come from the JAX cache."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    if head == "gap":
        x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D(name="gap")(x))
    else:
        x = layers.Flatten()(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{head}")


def _pixels(n: int, size: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _photos(folder, chelsea: np.ndarray, count: int) -> list[str]:
    """``count`` PNG crops of the real cat photo, each a little different."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        crop = chelsea[i % 40 : 200 + i % 40, 2 * i : 260 + 2 * i]
        path = folder / f"cat{i:02d}.png"
        Image.fromarray(crop).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.slow  # 16 s per head
@pytest.mark.backends  # the fused path is written for JAX (one jit) and torch (one call)
@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_device_maps_equal_the_host_path(head, monkeypatch):
    """Each gradient method's device equation is its host equation: same maps, classes and
    probabilities (float32), on a head with the closed-form gradient and one without."""
    model = _tiny(head)
    pixels = _pixels(5)
    for method in GRADIENT_METHODS + (("cam",) if head == "gap" else ()):
        monkeypatch.setenv("KERASCOPE_ENGINE", "onnx")
        host = Explainer(model, method, precision="float32")
        monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
        device = Explainer(model, method, precision="float32")
        assert device.on_device and not host.on_device, method
        maps, classes, probs = device.explain_batch(pixels, pad_to=8)
        raw, host_classes, host_probs = host.cam.raw_maps(pixels, np.full(5, -1))
        np.testing.assert_allclose(maps, normalise(raw), atol=1e-4, err_msg=method)
        np.testing.assert_array_equal(classes, host_classes)
        np.testing.assert_allclose(probs, host_probs, atol=1e-5)
        up, _, _ = device.explain_batch(pixels[:3], upsample=True)  # to the input, on device
        assert up.shape == (3, 32, 32) and np.allclose(up.max(axis=(1, 2)), 1.0)


def test_a_ragged_job_compiles_once_and_writes_every_picture(chelsea, tmp_path, monkeypatch):
    """37 files at batch 16 (16 + 16 + 5): the last batch is padded to the job's batch size,
    so the device function is compiled once; pictures come back in input order."""
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    clf = as_classifier(_tiny())
    paths = _photos(tmp_path / "in", chelsea, 37)
    saved = save_explanations(paths, tmp_path / "out", clf, "gradcam", batch_size=16)
    explainer = clf.extra["explainers"][("gradcam", None)]
    assert explainer.on_device
    assert explainer.compilations() == 1
    assert [s.source for s in saved] == paths
    assert all(s.ok and s.path.is_file() for s in saved)
    with Image.open(saved[-1].path) as picture:  # original | overlay under a label bar
        assert picture.size[0] == 2 * 260
    save_explanations(paths[:9], tmp_path / "again", clf, "gradcam", batch_size=16)
    assert explainer.compilations() == 1  # a second, smaller job reuses the same shape


def test_a_failed_write_in_the_pool_stops_the_job_with_one_error(chelsea, tmp_path):
    """A picture that cannot be written (its folder is blocked by a file) is an OutputError
    raised to the caller, not a silently missing picture."""
    clf = as_classifier(_tiny())
    a = _photos(tmp_path / "in" / "a", chelsea, 3)
    b = _photos(tmp_path / "in" / "b", chelsea, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").write_text("a file where the sub-folder b/ should go")
    with pytest.raises(OutputError, match="could not write"):
        save_explanations(a + b, out, clf, "gradcam", batch_size=2, workers=2)
    assert (out / "b").read_text().startswith("a file")


@pytest.mark.slow  # Lite0 compiled twice by XLA on the CPU (float32 and bfloat16)
def test_bfloat16_gradcam_agrees_with_float32_on_real_photos(lite0, photo_paths):
    """bfloat16 mixed precision (forced on the CPU, where auto means float32: the device path on
    Keras/JAX) gives the top class, probabilities within 0.03 and Grad-CAM maps that correlate
    with the float32 maps of the host path. Measured on the four photos: r >= 0.9995,
    probabilities within 0.012, maps within 0.021."""
    from kerascope.images import fit

    from .conftest import load_rgb

    names = ["chelsea", "coffee", "astronaut", "rocket"]
    pixels = np.stack(
        [fit(load_rgb(photo_paths[n]), lite0.input_size, lite0.convention) for n in names]
    )
    results = {}
    for precision in ("float32", "bfloat16"):
        explainer = Explainer(lite0, "gradcam", precision=precision)
        results[precision] = explainer.explain_batch(pixels, upsample=True)
        assert explainer.precision == precision
        assert explainer.on_device == (precision == "bfloat16")  # float32: the onnx host path
    (m32, c32, p32), (m16, c16, p16) = results["float32"], results["bfloat16"]
    np.testing.assert_array_equal(c32, c16)
    assert lite0.labels[int(c32[0])][1] in ("tabby", "tiger_cat")  # chelsea
    np.testing.assert_allclose(p16, p32, atol=0.03)
    for i, name in enumerate(names):
        r = float(np.corrcoef(m32[i].ravel(), m16[i].ravel())[0, 1])
        assert r > 0.99, (name, r)
    assert not np.array_equal(m32, m16)  # it did run in another precision


def test_auto_is_float32_on_a_cpu_and_methods_without_a_device_path_stay_float32():
    from kerascope.inference import on_cpu

    model = _tiny()
    if on_cpu():
        assert Explainer(model, "gradcam", precision="auto").precision == "float32"
    scorecam = Explainer(model, "scorecam", precision="bfloat16")
    assert not scorecam.on_device and scorecam.precision == "float32"
    assert Explainer(model, "gradcam", precision="bf16").precision == "bfloat16"


def test_the_cli_says_which_precision_ran_and_refuses_an_unknown_one(chelsea, tmp_path, capsys):
    from kerascope.cli import main

    model = tmp_path / "tiny.keras"
    _tiny().save(model)
    photo = tmp_path / "cat.png"
    Image.fromarray(chelsea).save(photo)
    argv = ["explain", str(photo), "-o", str(tmp_path / "out"), "--model", str(model)]
    assert main([*argv, "--precision", "bf16"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "gradcam: computing in bfloat16 (mixed: float32 weights and outputs)" in err
    assert (tmp_path / "out" / "cat-output.jpg").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--precision", "fp8"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--precision" in lines[0] and "bfloat16" in lines[0]


def test_small_files_are_decoded_once_and_give_the_same_pictures(chelsea, tmp_path, monkeypatch):
    """A file the model's pass decodes whole (not reduced, within the memory bound) is drawn
    from that decode instead of being read again, file by file: in a job with one photo the
    model sees reduced, only that one is read again. The pictures are byte for byte those of
    the second decode, and `kerascope.explain` reuses the decode the same way."""
    import kerascope.cam.explain as explain_module
    import kerascope.cam.save as save
    import kerascope.sources as sources

    clf = as_classifier(_tiny(size=64))  # 200 x 260 crops: no reduced decode below 4 x 64
    paths = _photos(tmp_path / "in", chelsea, 5)
    large = tmp_path / "in" / "large.png"  # 300 x 451: the model's decode is reduced
    Image.fromarray(chelsea).save(large)
    paths.insert(2, str(large))
    opened = []
    load_image = save.load_image
    monkeypatch.setattr(save, "load_image", lambda p, **k: opened.append(p) or load_image(p, **k))
    once = save_explanations(paths, tmp_path / "once", clf, batch_size=2)
    assert opened == [str(large)]
    monkeypatch.setattr(sources, "KEPT_BYTES", 0)  # over budget: each file read again
    twice = save_explanations(paths, tmp_path / "twice", clf, batch_size=2)
    assert len(opened) == 1 + 6
    for a, b in zip(once, twice, strict=True):
        assert a.ok and a.path.read_bytes() == b.path.read_bytes()

    monkeypatch.undo()
    again = []
    load_source = sources.load_source
    monkeypatch.setattr(sources, "load_source", lambda s, *a: again.append(s) or load_source(s, *a))
    explainer = explain_module._cached_explainer(clf, "gradcam", None)
    found = list(explain_module.iter_explanations(clf, explainer, paths, batch_size=2))
    assert again == [str(large)]
    for path, (e, original) in zip(paths, found, strict=True):
        np.testing.assert_array_equal(original, load_source(path))
        assert e.heatmap.shape == original.shape[:2]


def test_pictures_drawn_in_processes_are_those_drawn_in_threads(chelsea, tmp_path):
    """pool="processes" (spawned workers, each file decoded there, maps sent small) writes the
    same bytes as the threads, and a write error there still stops the job in one error."""
    clf = as_classifier(_tiny())
    paths = _photos(tmp_path / "in" / "a", chelsea, 4) + _photos(tmp_path / "in" / "b", chelsea, 2)
    threads = save_explanations(paths, tmp_path / "threads", clf, batch_size=4, workers=2)
    spawned = save_explanations(paths, tmp_path / "spawned", clf, batch_size=4, workers=2,
                                pool="processes")  # fmt: skip
    for a, b in zip(threads, spawned, strict=True):
        assert a.ok and b.ok and a.path.read_bytes() == b.path.read_bytes()
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "b").write_text("a file where the sub-folder b/ should go")
    with pytest.raises(OutputError, match="could not write"):
        save_explanations(paths, blocked, clf, batch_size=4, workers=2, pool="processes")


@pytest.mark.backends  # JAX dispatches asynchronously; torch's Pending copies from its tensors
@pytest.mark.parametrize("gpu", [True, False])
def test_batch_i_plus_1_is_on_the_device_before_batch_i_is_given_out(gpu, monkeypatch):
    """On a GPU the device is never idle while the host hands out a batch: explain dispatches
    the next batch before it copies a batch's maps back (on a CPU, whose cores are the host's,
    one batch at a time), and the maps are those of one call per batch."""
    from kerascope.cam.explain import iter_unplaced

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    monkeypatch.setattr("kerascope.inference.on_cpu", lambda: not gpu)
    clf = as_classifier(_tiny())
    explainer = Explainer(clf, "gradcam", precision="float32")
    pixels = list(_pixels(5))  # batches of 2, 2, 1
    events, dispatch = [], explainer.start_batch

    def start_batch(*args, **kwargs):
        k = sum(e[0] == "start" for e in events)
        events.append(("start", k))
        running = dispatch(*args, **kwargs)
        copy_back = running.result
        running.result = lambda: events.append(("result", k)) or copy_back()
        return running

    monkeypatch.setattr(explainer, "start_batch", start_batch)
    found = []
    for e, m, _ in iter_unplaced(clf, explainer, pixels, None, 2, upsample=False):
        events.append(("out", len(found)))
        found.append((e.class_index, m))
    if gpu:
        assert events == [("start", 0), ("start", 1), ("result", 0), ("out", 0), ("out", 1),
                          ("start", 2), ("result", 1), ("out", 2), ("out", 3),
                          ("result", 2), ("out", 4)]  # fmt: skip
    else:
        assert events == [("start", 0), ("result", 0), ("out", 0), ("out", 1),
                          ("start", 1), ("result", 1), ("out", 2), ("out", 3),
                          ("start", 2), ("result", 2), ("out", 4)]  # fmt: skip
    monkeypatch.undo()
    for lo in (0, 2, 4):
        maps, classes, _ = explainer.explain_batch(np.stack(pixels[lo : lo + 2]), pad_to=2)
        for r, (c, m) in enumerate(found[lo : lo + 2]):
            assert c == classes[r]
            np.testing.assert_array_equal(m, maps[r])


@pytest.mark.backends
def test_a_batch_that_fails_to_dispatch_comes_after_the_batch_before_it(monkeypatch):
    """Pipelining loses nothing: when batch i + 1 cannot be dispatched, batch i (already on
    the device) is given out first, then the error is raised."""
    from kerascope.cam.explain import iter_unplaced

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    monkeypatch.setattr("kerascope.inference.on_cpu", lambda: False)  # as on a GPU
    clf = as_classifier(_tiny())
    explainer = Explainer(clf, "gradcam", precision="float32")
    dispatch, calls = explainer.start_batch, []

    def start_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device out of memory")
        return dispatch(*args, **kwargs)

    monkeypatch.setattr(explainer, "start_batch", start_batch)
    found = []
    with pytest.raises(RuntimeError, match="out of memory"):
        for e, _, _ in iter_unplaced(clf, explainer, list(_pixels(6)), None, 2):
            found.append(e)
    assert len(found) == 2 and all(e.ok for e in found)


def test_only_a_method_whose_device_call_runs_on_dispatches_ahead(monkeypatch):
    """The pixel methods compute their maps before `start_batch` returns: dispatching their
    next batch first would only hold one more batch (and hand each out later)."""
    from kerascope.cam.explain import _dispatch_ahead

    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")
    monkeypatch.setattr("kerascope.inference.on_cpu", lambda: False)  # as on a GPU
    clf = as_classifier(_tiny())
    gradcam, saliency = Explainer(clf, "gradcam"), Explainer(clf, "saliency")
    assert gradcam.on_device and saliency.on_device
    assert _dispatch_ahead(gradcam) and not _dispatch_ahead(saliency)
    monkeypatch.setattr("kerascope.inference.on_cpu", lambda: True)
    assert not _dispatch_ahead(gradcam)
