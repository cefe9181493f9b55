"""Bottleneck features and the features ensemble, on real EfficientNet-Lite weights and photos.

Datasets are random crops of scikit-image's photos and textures: tiny for the cache behaviour,
six classes of small crops for accuracy (three whole photos would tie at 100%).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

LITE0, LITE1 = "efficientnet_lite0", "efficientnet_lite1"


def make_dataset(root: Path, data: Path, names, n_train, n_val, crop=(0.35, 0.7), seed=0) -> Path:
    """``root/{train,validation}/<name>/*.jpg``: random crops (and flips) of one photo per class."""
    rng = np.random.default_rng(seed)
    for name in names:
        image = Image.open(next(data.glob(f"{name}.*"))).convert("RGB")
        width, height = image.size
        for split, n in (("train", n_train), ("validation", n_val)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                f = rng.uniform(*crop)
                w, h = int(width * f), int(height * f)
                x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
                part = image.crop((x, y, x + w, y + h)).resize((128, 128), Image.BILINEAR)
                if rng.random() < 0.5:
                    part = part.transpose(Image.FLIP_LEFT_RIGHT)
                part.save(folder / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, skimage_data) -> Path:
    """Two classes, 3 train + 2 validation images each."""
    root = tmp_path_factory.mktemp("tiny")
    return make_dataset(root, skimage_data, ["chelsea", "coffee"], 3, 2)


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A private copy, for tests that change images."""
    return Path(shutil.copytree(tiny, tmp_path / "data"))


@pytest.fixture(scope="module")
def harder(tmp_path_factory, skimage_data) -> Path:
    """Six classes of small crops (10-25% of the side): textures, photos of similar colours."""
    root = tmp_path_factory.mktemp("harder")
    names = ["brick", "grass", "gravel", "astronaut", "coffee", "chelsea"]
    return make_dataset(root, skimage_data, names, 12, 6, crop=(0.1, 0.25))


def test_cache_equals_fresh_features_and_records_provenance(tiny, tmp_path):
    import kerascope
    import kerascope.bottleneck as kf
    from kerascope.zoo import registry, weights

    store = kf.extract_features(tiny, [LITE0], output=tmp_path / "f.h5")
    got = store.load(LITE0)
    assert got.features.shape == (10, 1280)
    assert got.classes == ["chelsea", "coffee"]
    assert sorted(set(got.splits)) == ["train", "validation"]
    assert all(
        Path(p).parent.name == got.classes[y] for p, y in zip(got.paths, got.labels, strict=True)
    )
    from kerascope.bottleneck import branches

    branches._FORWARDS.clear()  # computed afresh: a new model, a new engine
    fresh = kerascope.features(got.paths)
    np.testing.assert_allclose(got.features, fresh, atol=1e-5, rtol=0)
    info = store.info(store.keys()[0])
    weights_path = weights.resolve(registry.get(LITE0))
    assert info["weights_sha256"] == hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert (info["model"], info["layer"], info["pool"], info["input_size"]) == (
        LITE0,
        "",
        "avg",
        224,
    )
    assert info["kerascope_version"] == kerascope.__version__ and info["complete"]


def test_cache_recomputes_only_what_changed(tiny_copy, tmp_path, monkeypatch):
    import kerascope.bottleneck as kf

    out = tmp_path / "f.h5"
    key0, key1 = (kf.FeatureSpec.make(b).key for b in (LITE0, LITE1))
    first = kf.extract_features(tiny_copy, [LITE0], output=out)
    assert first.computed == {key0: 10}
    stamp = out.stat().st_mtime_ns
    assert kf.extract_features(tiny_copy, [LITE0], output=out).computed == {key0: 0}
    assert out.stat().st_mtime_ns == stamp  # nothing to do: the file is not even rewritten

    both = kf.extract_features(tiny_copy, [LITE0, LITE1], output=out)
    assert both.computed == {key0: 0, key1: 10}

    before = first.load(LITE0)
    os.utime(before.paths[0])  # touched, same bytes: still cached
    changed = before.paths[3]
    Image.open(changed).transpose(Image.FLIP_TOP_BOTTOM).save(changed, quality=90)
    again = kf.extract_features(tiny_copy, [LITE0, LITE1], output=out)
    assert again.computed == {key0: 1, key1: 1}
    after = again.load(LITE0)
    same = np.arange(10) != 3
    np.testing.assert_array_equal(after.features[same], before.features[same])
    np.testing.assert_allclose(after.features[3], kf.features(changed)[0], atol=1e-5)
    assert np.abs(after.features[3] - before.features[3]).max() > 1e-3

    real = kf.weights_checksum
    other = lambda p: "other-" + real(p)  # noqa: E731
    monkeypatch.setattr("kerascope.bottleneck.extract.weights_checksum", other)
    assert kf.extract_features(tiny_copy, [LITE0], output=out).computed == {key0: 10}
    monkeypatch.undo()

    pooled = kf.extract_features(tiny_copy, [LITE0], pool="max", output=out)
    key_max = kf.FeatureSpec.make(LITE0, pool="max").key
    assert pooled.computed == {key_max: 10}
    assert set(pooled.keys()) == {key0, key1, key_max}
    assert not np.allclose(pooled.load(LITE0, pool="max").features, after.features)


def test_interrupted_extraction_resumes_and_is_refused_until_done(tiny, tmp_path):
    import kerascope.bottleneck as kf

    reference = kf.extract_features(tiny, [LITE0], output=tmp_path / "ref.h5", batch_size=2)
    out = tmp_path / "f.h5"

    def stop_after_two_batches(backbone, done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kf.extract_features(
            tiny, [LITE0], output=out, batch_size=2, progress=stop_after_two_batches
        )
    assert not out.exists() and kf.partial_path(out).is_file()
    with pytest.raises(kf.FeatureCacheError, match="interrupted.*run extract_features again"):
        kf.FeatureStore(out)
    with pytest.raises(kf.FeatureCacheError, match=r"incomplete \(4/10 rows\)"):
        kf.FeatureStore(kf.partial_path(out)).load(LITE0)

    seen = []
    resumed = kf.extract_features(
        tiny, [LITE0], output=out, batch_size=2, progress=lambda *a: seen.append(a[1:])
    )
    assert resumed.computed == {kf.FeatureSpec.make(LITE0).key: 6}
    assert seen[0] == (4, 10) and seen[-1] == (10, 10)
    assert not kf.partial_path(out).exists()
    np.testing.assert_allclose(
        resumed.load(LITE0).features, reference.load(LITE0).features, atol=1e-6
    )

    kf.partial_path(out).write_bytes(b"killed while writing the HDF5 header")
    assert kf.extract_features(tiny, [LITE0], output=out).computed == {
        kf.FeatureSpec.make(LITE0).key: 0
    }
    assert not kf.partial_path(out).exists()


@pytest.fixture(scope="module")
def blocks_9_maps(tiny) -> tuple[list[str], np.ndarray]:
    """Two photos and their ``blocks_9_add`` maps from a hand-built Keras submodel (built once
    for the three poolings)."""
    import keras

    from kerascope.images import load_image, resize
    from kerascope.zoo.models import build

    paths = sorted(str(p) for p in (tiny / "train" / "chelsea").iterdir())[:2]
    base = build(LITE0, include_top=False)
    sub = keras.Model(base.input, base.get_layer("blocks_9_add").output)
    pixels = np.stack([resize(load_image(p), (224, 224)) for p in paths]).astype("float32")
    return paths, keras.ops.convert_to_numpy(sub(pixels, training=False))


@pytest.mark.parametrize("pool", ["none", "avg", "max"])
def test_intermediate_layer_matches_a_hand_built_submodel(blocks_9_maps, pool):
    import kerascope.bottleneck as kf

    paths, maps = blocks_9_maps
    got = kf.features(paths, layer="blocks_9_add", pool=pool)
    want = {"none": maps, "avg": maps.mean(axis=(1, 2)), "max": maps.max(axis=(1, 2))}[pool]
    assert got.shape == want.shape == ((2, 14, 14, 112) if pool == "none" else (2, 112))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_layer_setting_makes_its_own_group_and_wrong_names_suggest_close_ones(tiny, tmp_path):
    import kerascope.bottleneck as kf

    out = tmp_path / "f.h5"
    store = kf.extract_features(tiny, [LITE0], layer="blocks_9_add", output=out)
    assert store.keys() == [f"{LITE0},layer=blocks_9_add,pool=avg,size=224"]
    assert store.load(LITE0, layer="blocks_9_add").features.shape == (10, 112)
    with pytest.raises(kf.FeatureCacheError, match="no features for .*layer=last"):
        store.load(LITE0)
    with pytest.raises(kf.FeatureCacheError, match="no layer 'block_9_add'.*blocks_9_add"):
        kf.features(np.zeros((64, 64, 3), np.uint8), layer="block_9_add")


def test_features_recipe_model_equals_its_head_on_the_cache_and_beats_single_backbones(
    harder, tmp_path
):
    """The features recipe through ``train``: a standard run folder whose one raw-image model
    equals the trained head applied to the HDF5 cache's features of the same images."""
    import keras

    from kerascope.bottleneck import FeatureSpec, extract_features
    from kerascope.classification import classify, iter_batches
    from kerascope.inference import compiled
    from kerascope.training import train
    from kerascope.training.split import split_model
    from kerascope.zoo.models import load_model

    budget = dict(recipe="features", epochs=10, progress=False)
    run = train(harder, backbone=[LITE0, LITE1], output=tmp_path / "run", **budget)
    for name in ("model.keras", "labels.json", "config.yaml", "history.csv", "curves.png",
                 "report.md", "run_state.json"):  # fmt: skip
        assert (run.run_dir / name).is_file(), name
    classes = ["astronaut", "brick", "chelsea", "coffee", "grass", "gravel"]
    assert json.loads((run.run_dir / "labels.json").read_text())["classes"] == classes
    assert run.config["backbone"] == [LITE0, LITE1] and run.config["image_size"] == [240, 240]

    accuracy = {}
    for backbone in (LITE0, LITE1):  # each alone, on the same 240-px images
        single = train(harder, backbone=backbone, image_size=240, output=tmp_path / backbone,
                       **budget)  # fmt: skip
        accuracy[backbone] = single.val_accuracy
    accuracy["ensemble"] = run.val_accuracy
    print(f"\nvalidation accuracy (36 images, 6 classes): {accuracy}")
    assert accuracy["ensemble"] >= max(accuracy[LITE0], accuracy[LITE1])
    assert accuracy["ensemble"] >= 0.8

    store = extract_features(harder, [LITE0, LITE1], output=tmp_path / "f.h5", image_size=240)
    sets = [store.load(FeatureSpec.make(b, image_size=240).key, split="validation")
            for b in (LITE0, LITE1)]  # fmt: skip
    assert sets[0].paths == sets[1].paths
    x_val = np.concatenate([s.features for s in sets], axis=1)
    paths = sets[0].paths
    head = split_model(run.model).suffix  # boundary: the concatenated pooled features
    assert head.input_shape == (None, x_val.shape[1])
    expected = keras.ops.convert_to_numpy(head(x_val, training=False))
    clf = load_model(run.run_dir)
    assert clf.input_size == (240, 240) and [n for _, n in clf.labels] == classes
    pixels = np.concatenate(
        [np.stack([it.pixels for it in b]) for b in iter_batches(paths, clf.input_size, 32)]
    )
    probs = compiled(clf.model)(pixels)
    assert np.abs(probs - expected).max() <= 1e-4
    assert np.mean(probs.argmax(-1) == sets[0].labels) == pytest.approx(run.val_accuracy)
    top = [r.predictions[0].index for r in classify(paths[:6], model=clf, top=1)]
    assert top == list(expected[:6].argmax(-1))
