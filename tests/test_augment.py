"""Augmentation: the tutorial's settings, the one definition (sample_matrices) and its two
executors (Pillow on the host, keras.ops on the device) agreeing, fill modes, the preview, and
the legacy Keras layers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.data.affine import random_affine, warp_pillow
from kerascope.data.augment import (
    FILL_MODES,
    AugmentConfig,
    build_augmentation,
    identity_matrices,
    sample_matrices,
    warp,
)
from kerascope.data.preview import augment_preview


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


def _device(images: np.ndarray, matrices: np.ndarray, fill_mode: str) -> np.ndarray:
    """The device executor as the train step runs it: compiled (jit on JAX)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.jit(lambda x, m: warp(x, m, fill_mode))(images, matrices))
    return keras.ops.convert_to_numpy(warp(images, matrices, fill_mode))


@pytest.fixture(scope="module")
def cats(chelsea) -> np.ndarray:
    from kerascope.images import resize

    return np.repeat(resize(chelsea, (96, 128))[None], 12, axis=0)


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_both_executors_draw_the_same_views_on_a_photo(cats, fill_mode):
    """Same seed, same matrices, same pictures: Pillow (CPU trainer) and the jitted keras.ops
    warp (whole-graph trainer) differ by rounding only, for every fill mode."""
    config = AugmentConfig(fill_mode=fill_mode)
    matrices = sample_matrices(config, 7, 2, 5, len(cats), 96, 128)
    host = warp_pillow(cats, matrices, fill_mode).astype(np.float32)
    device = _device(cats, matrices, fill_mode)
    assert host.shape == device.shape == cats.shape
    difference = np.abs(host - device)
    assert difference.mean() < 1.0 and np.percentile(difference, 99.9) <= 2.0
    assert np.abs(host - cats).mean() > 15  # the views really are transformed
    again = random_affine(config, 7)(cats, 2, 5)  # the CPU trainer's call: the same draws
    np.testing.assert_array_equal(again, host.astype(np.uint8))


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_fill_modes_read_outside_the_picture_as_keras_does(fill_mode):
    """A shift by 3 pixels reads columns w..w+2 past the right edge: nearest repeats the
    edge, reflect mirrors it, wrap comes round from the left, constant is black."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (1, 4, 6, 3)).astype(np.uint8)
    shift = identity_matrices(1)
    shift[0, 0, 2] = 3.0
    pad = {"nearest": "edge", "reflect": "symmetric", "wrap": "wrap", "constant": "constant"}
    expected = np.pad(x, ((0, 0), (0, 0), (0, 3), (0, 0)), mode=pad[fill_mode])[:, :, 3:]
    np.testing.assert_allclose(_device(x, shift, fill_mode), expected, atol=1e-3)
    np.testing.assert_array_equal(warp_pillow(x, shift, fill_mode), expected)


def test_matrices_are_seeded_and_follow_the_config():
    c = AugmentConfig()
    a = sample_matrices(c, 3, 0, 0, 8, 64, 48)
    assert a.shape == (8, 2, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, sample_matrices(c, 3, 0, 0, 8, 64, 48))
    assert not np.array_equal(a, sample_matrices(c, 3, 1, 0, 8, 64, 48))  # a new epoch
    assert not np.array_equal(a, sample_matrices(c, 3, 0, 1, 8, 64, 48))  # another batch
    none = AugmentConfig(0, 0, 0, 0, 0, horizontal_flip=False)
    assert none.is_identity and not c.is_identity
    np.testing.assert_array_equal(sample_matrices(none, 0, 0, 0, 4, 8, 8), identity_matrices(4))
    flips = sample_matrices(AugmentConfig(0, 0, 0, 0, 0), 0, 0, 0, 32, 8, 10)
    mirror = np.array([[-1, 0, 9], [0, 1, 0]], np.float32)
    is_mirror = [np.array_equal(m, mirror) for m in flips]
    assert all(is_mirror[i] or np.array_equal(m, identity_matrices(1)[0])
               for i, m in enumerate(flips)) and 4 < sum(is_mirror) < 28  # fmt: skip
    # rotation only: a pure rotation about the centre, within the range
    turn = sample_matrices(AugmentConfig(30, 0, 0, 0, 0, horizontal_flip=False), 0, 0, 0, 64, 9, 9)
    angles = np.degrees(np.arctan2(turn[:, 1, 0], turn[:, 0, 0]))
    assert np.abs(angles).max() <= 30 and np.abs(angles).max() > 20
    np.testing.assert_allclose(turn[:, :, :2] @ [4, 4] + turn[:, :, 2], 4, atol=1e-4)
