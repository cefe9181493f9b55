"""What `save_explanations` draws: the empty-map notice and the colour key, on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from kerascope.cam.save import save_explanations
from tests.conftest import load_rgb


@pytest.fixture(scope="module")
def for_and_against():
    """A small CNN with two classes: "cat" weighs every (ReLU, so non-negative) feature up and
    "void" weighs every one down, so Grad-CAM finds positive evidence for "cat" in any photo and
    none at all for "void": its map is all zeros."""
    import keras

    from kerascope.zoo.models import Classifier

    layers = keras.layers
    inputs = keras.Input((64, 64, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    head = layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(inputs, head(x))
    head.set_weights([np.tile([[0.5, -0.5]], (16, 1)).astype("float32"), np.zeros(2, "float32")])
    return Classifier(model, "for_and_against", (64, 64), [("0", "cat"), ("1", "void")])


def _text_end(bar: np.ndarray) -> int:
    """The last column of the label bar with bright (text) pixels."""
    return int(np.flatnonzero(bar.max(axis=(0, 2)) > 160)[-1])


def test_empty_map_is_flagged_and_written_on_the_picture(for_and_against, photo_paths, tmp_path):
    cat = str(photo_paths["chelsea"])
    empty = save_explanations(cat, tmp_path / "void", for_and_against, target="void")[0]
    normal = save_explanations(cat, tmp_path / "cat", for_and_against, target="cat")[0]
    assert empty.ok and empty.empty and empty.explanation.class_name == "void"
    assert normal.ok and not normal.empty
    photo = load_rgb(photo_paths["chelsea"])
    bar = ov.bar_height(photo.shape[0])
    with Image.open(empty.path) as img:
        picture = np.asarray(img.convert("RGB"))
    assert picture.shape == (photo.shape[0] + bar, 2 * photo.shape[1], 3)
    # Nothing to draw: the overlay half is the photo (up to JPEG), yet the label says why.
    overlay_half = picture[bar:, photo.shape[1] :].astype(int)
    assert np.abs(overlay_half - photo).mean() < 3
    label = f"void {empty.explanation.probability:.1%} (gradcam)"
    plain = ov.side_by_side(photo, photo, label)
    assert _text_end(picture[:bar]) > _text_end(plain[:bar]) + 100  # the notice follows it
    with Image.open(normal.path) as img:
        drawn = np.asarray(img.convert("RGB"))[bar:, photo.shape[1] :].astype(int)
    assert np.abs(drawn - photo).mean() > 3  # a real map does show


def test_colorbar_and_colormap_reach_the_picture(for_and_against, photo_paths, tmp_path):
    cat = str(photo_paths["chelsea"])
    saved = save_explanations(cat, tmp_path, for_and_against, target="cat", colorbar=True)[0]
    photo = load_rgb(photo_paths["chelsea"])
    height, width = photo.shape[:2]
    bar = ov.bar_height(height)
    with Image.open(saved.path) as img:
        picture = np.asarray(img.convert("RGB"))
    assert picture.shape == (height + 2 * bar, 2 * width, 3)
    row = picture[-bar // 2, width:].astype(int)  # the key's middle row, under the overlay
    lut = ov.colormap_lut(ov.DEFAULT_COLORMAP).astype(int)
    nearest = np.abs(row[:, None] - lut[None]).max(axis=-1)
    on_map = np.flatnonzero(nearest.min(axis=1) <= 12)  # JPEG moves colours a little
    index = nearest[on_map].argmin(axis=1)
    assert on_map.size > width // 2
    assert index[: len(index) // 10].mean() < 40 and index[-len(index) // 10 :].mean() > 215
    with pytest.raises(ValueError, match="colormap"):
        save_explanations(cat, tmp_path, for_and_against, colormap="no-such-map")


def test_smoothing_options_reach_the_explainer(for_and_against, photo_paths, tmp_path):
    """aug_smooth / eigen_smooth change the map itself, so they must reach the explainer."""
    cat = str(photo_paths["chelsea"])
    plain = save_explanations(cat, tmp_path / "plain", for_and_against, target="cat")[0]
    smooth = save_explanations(
        cat, tmp_path / "smooth", for_and_against, target="cat", eigen_smooth=True
    )[0]
    assert plain.ok and smooth.ok
    with Image.open(plain.path) as a, Image.open(smooth.path) as b:
        assert np.asarray(a).shape == np.asarray(b).shape
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # a different map was drawn


def test_a_tiny_picture_is_drawn_enlarged_with_a_readable_label(for_and_against, tmp_path):
    """Before: a 1x1 picture was 2x21 px, its label a smudge; now whole-pixel enlarged."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.array([[[200, 30, 30], [30, 30, 200]]], np.uint8)).save(tiny)  # 2x1
    saved = save_explanations(str(tiny), tmp_path / "out", for_and_against, target="cat")[0]
    with Image.open(saved.path) as img:
        picture = np.asarray(img.convert("RGB")).astype(int)
    bar = ov.bar_height(112)  # enlarged 112 times: 224 x 112
    assert picture.shape == (112 + bar, 2 * 224, 3)
    left, right = picture[bar + 10 :, 10:100], picture[bar + 10 :, 124:214]  # the two pixels
    assert np.abs(left - [200, 30, 30]).max() < 12 and np.abs(right - [30, 30, 200]).max() < 12
    assert _text_end(picture[:bar]) > 60  # the label's text spans many columns


def test_a_stopped_job_counts_every_picture_it_wrote(for_and_against, photo_paths, tmp_path):
    """Before: "interrupted after 4 of 30 images" with 10 pictures on disk: the pictures the
    pool finished after the stop were written but never counted."""
    import shutil

    for i in range(8):
        shutil.copy(photo_paths["chelsea"], tmp_path / f"c{i}.png")
    counted: list[int] = []

    def progress(n: int) -> None:
        counted.append(n)
        if len(counted) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the first picture is collected

    with pytest.raises(KeyboardInterrupt):
        save_explanations(str(tmp_path), tmp_path / "out", for_and_against, target="cat",
                          batch_size=1, workers=2, progress=progress)  # fmt: skip
    written = list((tmp_path / "out").glob("*-output.jpg"))
    assert len(counted) == 2 and sum(counted) == len(written) > 1
