"""classify, predict and features over jobs whose lengths are not multiples of the batch
size compile one shape per model on the JAX engine a GPU runs: a long job's last batch runs at
the batch size (`kerascope.sources.bucket`), for files and for one (N, H, W, 3) array."""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.testing.compiles import count_compiles


@pytest.fixture
def keras_engine(monkeypatch):
    monkeypatch.setenv("KERASCOPE_ENGINE", "keras")


def _files(folder, skimage_data, n):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(skimage_data / "chelsea.png") as img:
        picture = img.convert("RGB")
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        picture.crop((8 * i, 4 * i, 8 * i + 120, 4 * i + 100)).save(path)
        paths.append(str(path))
    return paths


def test_classify_jobs_of_odd_lengths_compile_once(tiny_clf, tmp_path, skimage_data, keras_engine):
    import kerascope

    files = _files(tmp_path / "in", skimage_data, 11)
    counts = []
    for n in (8, 9, 10, 11, 5):  # last batches of 4, 1, 2, 3, 1 at batch 4
        with count_compiles() as c:
            found = kerascope.classify(files[:n], model=tiny_clf, batch_size=4, top=2)
        assert len(found) == n and all(r.ok for r in found)
        counts.append(len(c.names))
    assert counts == [1, 0, 0, 0, 0], counts  # before: 1, 1, 1, 0, 0 (shapes 1 and 2)


def test_classify_arrays_of_odd_lengths_compile_once(tiny_clf, chelsea, keras_engine):
    from kerascope.classification import classify_sources

    pictures = np.stack([chelsea[i : i + 90, i : i + 120] for i in range(11)])
    counts = []
    for n in (8, 9, 10, 11):
        with count_compiles() as c:
            found = list(classify_sources(tiny_clf, pictures[:n], top=2, batch_size=4,
                                          device_fit=True))  # fmt: skip
        assert len(found) == n
        counts.append(len(c.names))
    assert counts == [1, 0, 0, 0], counts
