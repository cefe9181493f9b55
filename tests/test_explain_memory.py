"""Memory of `explain` is flat in the number of images and bounded in their size.

The measurement runs in a fresh process (peak RSS, ``ru_maxrss``, is per process and never
goes down: the two job sizes run there in turn, the larger second); nothing is timed. The
bound is generous: between 16 and 40 images of 6 MP the old pipeline's peak grew by 320 MB
(two batches of full-size originals, a cache of wide label bars), this one's by 29 MB. Both
runs keep the decode pool busy, so in-flight decodes count in both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

_SCRIPT = r"""
import json, resource, sys
from kerascope.cam.save import save_explanations
from kerascope.zoo.models import load_model

folder, out, counts = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]]
clf = load_model("efficientnet_lite0")
paths = sorted(str(p) for p in __import__("pathlib").Path(folder).glob("*.jpg"))
save_explanations(paths[:2], out + "-warm", clf)  # compile and warm up first
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {}
for n in counts:  # peak RSS never goes down: each job's peak is measured above the base
    saved = save_explanations(paths[:n], f"{out}-{n}", clf)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result[n] = {"grew_mb": (peak - base) / 1024, "ok": sum(s.ok for s in saved)}
print(json.dumps(result))
"""


def _photo(height: int, width: int) -> Image.Image:
    """A smooth picture (small JPEG file, full-size decode) with a bright blob."""
    y = np.arange(height, dtype=np.float32)[:, None]  # broadcast, not np.mgrid's full planes
    x = np.arange(width, dtype=np.float32)[None, :]
    r = np.hypot(y - height / 3, x - width / 2) / max(height, width)
    planes = np.broadcast_arrays(255 * (1 - r), 128 + 100 * np.sin(x / 97), y / height * 255)
    pixels = np.stack(planes, -1)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _grown_mb(folder: Path, out: Path, counts: list[int]) -> list[float]:
    """Peak RSS growth over the warmed-up base after explaining the first n files, for each n
    in turn, in one fresh process (one import and model load, not one per count)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(folder), str(out), *map(str, counts)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [result[str(n)]["ok"] for n in counts] == counts
    return [result[str(n)]["grew_mb"] for n in counts]


def test_explain_memory_is_flat_in_the_number_of_images(tmp_path):
    """16 images, then 40 in the same process: a pipeline whose peak grows with the count (or
    that keeps anything from the first job) peaks higher on the second."""
    folder = tmp_path / "in"
    folder.mkdir()
    _photo(2000, 3000).save(folder / "000.jpg", quality=85)  # 6 MP: 18 MB decoded
    for i in range(1, 40):
        os.link(folder / "000.jpg", folder / f"{i:03d}.jpg")
    few, many = _grown_mb(folder, tmp_path / "out", [16, 40])
    assert many - few < 120, f"peak RSS grew {few:.0f} MB over 16 images, {many:.0f} MB over 40"
    with Image.open(tmp_path / "out-40" / "039-output.jpg") as im:
        assert im.width == 2 * 3000  # written at the original size (under the cap)


def test_explain_writes_huge_images_at_the_documented_cap(tmp_path, lite0):
    from kerascope.cam.save import OUTPUT_MAX_SIDE, save_explanations

    _photo(3000, 6000).save(tmp_path / "wide.jpg", quality=80)
    saved = save_explanations([str(tmp_path / "wide.jpg")], tmp_path / "out", lite0)
    with Image.open(saved[0].path) as im:
        assert im.width == 2 * OUTPUT_MAX_SIDE == 8192
        assert abs(im.height - (OUTPUT_MAX_SIDE // 2 + 144)) <= 2  # half as high, + label bar


def _rss_mb() -> float:
    """Resident memory after a full collection and malloc's trim: what is held, not garbage
    waiting for a collection (this worker's earlier test files leave varying amounts)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _tiny(head: str):
    """A small random CNN: GAP + Dense (closed forms) or Flatten + Dense (autodiff, tails).
    Seeded: the same weights in every session, so the compiled functions (which hold the head's
    weights) come from the JAX compilation cache, not 35 s of XLA compiles."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D()(x) if head == "gap" else layers.Flatten()(x)
    outputs = layers.Dense(5, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"tiny_{head}")


# The many-pass methods loop over their steps or samples inside one compiled function
# (cam/pixel_device.py: a fori_loop), so what a call holds does not grow with the count: fewer
# passes test the same thing (at the defaults they were most of this test's minute).
FEWER_PASSES = {
    "ig": "ig:steps=4",
    "ig-blur": "ig-blur:steps=4",
    "smoothgrad": "smoothgrad:samples=4",
}


def test_every_method_keeps_memory_flat_over_200_images():
    """Each method, on both kinds of head, explains 200 images in batches of 20 after a
    warm-up; nothing per call may stay behind (models, sessions, traces, arrays)."""
    from kerascope.cam.explain import Explainer
    from kerascope.cam.methods import METHODS
    from kerascope.cam.pixel import PIXEL_METHODS

    pixels = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    explainers = [
        Explainer(
            model,
            FEWER_PASSES.get(method, method),
            aug_smooth=method == "gradcam",
            eigen_smooth=method == "hirescam",
        )  # fmt: skip
        for model in (_tiny("gap"), _tiny("flatten"))
        for method in METHODS
        if not (method == "cam" and model.name == "tiny_flatten")
    ]
    assert len({ex.method.split(":")[0] for ex in explainers}) == len(METHODS)
    for _ in range(3):  # warm-up: sessions, compilation, allocator pools
        for ex in explainers:
            ex.explain_batch(pixels)
            ex.explain_batch(pixels[:7])
    before = _rss_mb()
    for i in range(10):  # 200 images per explainer
        for ex in explainers:
            maps, _, _ = ex.explain_batch(pixels, targets=i % 5)
            pixel = ex.method.split(":")[0] in PIXEL_METHODS
            side = 32 if pixel else 16  # pixel maps: the input's size
            assert np.isfinite(maps).all() and maps.shape == (20, side, side)
    grown = _rss_mb() - before
    assert grown < 60, f"resident memory grew by {grown:.0f} MB over 200 images per method"
