"""Test-time augmentation: the probabilities are the mean of the model's outputs over the views
kerascope.tta documents, each view rebuilt here independently (NumPy slicing, Pillow's crop
and resize) from the picture as classify fits it, and run through the Keras model itself."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kerascope.inference import compiled
from kerascope.sources import iter_batches
from kerascope.tta import TTA, iter_tta_outputs


def _fitted(clf, paths) -> np.ndarray:
    """The pictures as the model sees them without TTA (decoded, fitted to its input)."""
    items = next(iter_batches(paths, clf.input_size, len(paths), convention=clf.convention))
    return np.stack([it.pixels for it in items])


def _documented_views(picture: np.ndarray, crops: int, flip: bool) -> list[np.ndarray]:
    """The views as the module docstring states them: the picture, with crops=5 its four
    corner boxes of round(0.875 * side) resized back (bilinear), and every one mirrored."""
    h, w, _ = picture.shape
    ch, cw = round(0.875 * h), round(0.875 * w)
    views = [picture]
    if crops == 5:
        image = Image.fromarray(picture)
        for left, top in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)):
            box = image.crop((left, top, left + cw, top + ch))
            views.append(np.asarray(box.resize((w, h), Image.Resampling.BILINEAR)))
    if flip:
        views += [np.asarray(Image.fromarray(v).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
                  for v in views]  # fmt: skip
    return views


@pytest.mark.parametrize(("crops", "flip", "views"), [(1, True, 2), (5, True, 10), (5, False, 5)])
def test_tta_is_the_mean_over_the_stated_views(lite0, photo_paths, crops, flip, views):
    paths = [str(photo_paths["chelsea"]), str(photo_paths["coffee"])]
    tta = TTA(flip=flip, crops=crops)
    assert tta.views == views
    (batch, probs), = list(iter_tta_outputs(lite0, paths, tta, batch_size=2))  # fmt: skip
    assert batch.names == paths and probs.shape == (2, 1000)
    model = compiled(lite0.model)  # the forward pass alone: the views are what is tested
    changed = 0.0
    for row, picture in enumerate(_fitted(lite0, paths)):
        stack = np.stack(_documented_views(picture, crops, flip))
        assert len(stack) == views
        expected = np.asarray(model(stack)).mean(axis=0)
        np.testing.assert_allclose(probs[row], expected, atol=1e-6)
        single = np.asarray(model(picture[None]))[0]
        changed = max(changed, float(np.abs(probs[row] - single).max()))
    assert changed > 1e-2  # the views changed the answer (chelsea's cat classes move)


def test_evaluate_predict_and_classify_say_tta_was_used(
    lite0, photo_paths, tmp_path, capsys, shared_zoo_models
):
    from kerascope.cli import main
    from kerascope.evaluation import evaluate
    from kerascope.prediction import predict
    from kerascope.tta import classify_tta

    paths = [str(photo_paths["chelsea"]), str(photo_paths["coffee"])]
    tta = TTA(flip=True, crops=1)
    (_, probs), = list(iter_tta_outputs(lite0, paths, tta))  # fmt: skip
    labels = ["tabby", "espresso"]
    result = evaluate(lite0, paths, labels, output=tmp_path, top_losses=0, tta=tta)
    assert result.tta == {"flip": True, "crops": 1, "views": 2, "crop_share": None}
    assert '"views": 2' in (tmp_path / "metrics.json").read_text()
    names = [name for _, name in lite0.labels]
    assert result.confusion[names.index("espresso")][int(probs[1].argmax())] == 1
    rows = predict(lite0, paths, tta=tta)
    assert [r.class_index for r in rows] == probs.argmax(axis=1).tolist()
    assert [r.probability for r in rows] == pytest.approx(probs.max(axis=1).tolist(), abs=1e-6)
    top = list(classify_tta(lite0, paths, tta, top=3))
    assert [p.index for p in top[0].predictions] == np.argsort(-probs[0])[:3].tolist()

    assert main(["classify", paths[1], "--tta", "--top", "1", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "mean of 2 views per image (TTA: flip)" in err and "espresso" in out
