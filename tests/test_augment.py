"""Augmentation layers: the tutorial's settings, training-only behaviour, and the preview."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.data.augment import AugmentConfig, augment_preview, build_augmentation


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 32, 40, 3)).astype("uint8")


def test_default_config_is_the_tutorials():
    c = AugmentConfig()
    assert (c.rotation, c.width_shift, c.height_shift, c.shear, c.zoom) == (40, 0.2, 0.2, 0.2, 0.2)
    assert c.horizontal_flip and not c.vertical_flip and c.fill_mode == "nearest"
    assert c.rescale == pytest.approx(1 / 255)
    aug = build_augmentation(c)
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == [
        "RandomFlip",
        "RandomRotation",
        "RandomTranslation",
        "RandomShear",
        "RandomZoom",
    ]
    rotation = aug.layers[1]
    assert rotation.factor == pytest.approx((-40 / 360, 40 / 360))
    assert all(getattr(layer, "fill_mode", "nearest") == "nearest" for layer in aug.layers)


def test_zero_settings_leave_layers_out():
    off = AugmentConfig(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0)
    assert [type(x).__name__ for x in build_augmentation(off).layers] == ["RandomFlip"]
    none = AugmentConfig(0, 0, 0, 0, 0, horizontal_flip=False)
    assert [type(x).__name__ for x in build_augmentation(none).layers] == ["Identity"]


@pytest.mark.parametrize(
    "bad", [{"fill_mode": "edge"}, {"zoom": 1.0}, {"rotation": -5}, {"rotation": 360}]
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


@pytest.mark.backends
def test_training_only(batch):
    import keras

    aug = build_augmentation(seed=1)
    trained = keras.ops.convert_to_numpy(aug(batch, training=True))
    assert trained.shape == batch.shape
    assert np.abs(trained - batch).mean() > 5  # moved pixels around
    assert 0 <= trained.min() and trained.max() > 1  # 0..255 kept: rescale is the model's job
    inferred = keras.ops.convert_to_numpy(aug(batch, training=False))
    assert np.array_equal(inferred, batch)
    again = keras.ops.convert_to_numpy(build_augmentation(seed=1)(batch, training=True))
    assert np.allclose(again, trained)
    # Inside a model, predict() runs inference: the augmentation must be invisible there.
    inputs = keras.Input(batch.shape[1:], dtype="uint8")
    model = keras.Model(inputs, aug(inputs))
    assert np.array_equal(model.predict(batch, verbose=0), batch)


def test_preview_writes_samples_and_grid(photo_paths, tmp_path):
    out = tmp_path / "preview"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    paths = augment_preview(photo_paths["chelsea"], n=6, out_dir=out, seed=0)
    assert [p.name for p in paths] == [f"chelsea_{i}.jpg" for i in range(6)] + ["grid.jpg"]
    with Image.open(photo_paths["chelsea"]) as original:
        original.load()
    samples = [np.asarray(Image.open(p)) for p in paths[:-1]]
    assert all(s.shape == (original.height, original.width, 3) for s in samples)
    assert not np.array_equal(samples[0], samples[1])
    with Image.open(paths[-1]) as grid:
        assert grid.width > 2 * 192 and grid.height > 2 * 192
    assert (out / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == sorted(["mine.txt", *(p.name for p in paths)])


def test_bad_settings_are_one_line_from_the_cli(photo_paths, tmp_path, capsys):
    from kerascope.cli import main

    with pytest.raises(ValueError, match="zoom must be below 1"):
        AugmentConfig(zoom=1.5)
    out = tmp_path / "preview"
    assert main(["augment", str(photo_paths["chelsea"]), "--zoom", "1.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "zoom must be below 1 (a fraction), got 1.5" in err and "Traceback" not in err
    assert not out.exists()
