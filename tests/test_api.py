"""The Python API: one name per step, typed results, and the same inputs everywhere.

``kerascope.classify / evaluate / predict / train / explain / features`` must be the functions
whatever was imported before (a submodule of the same name used to replace the function), and
every step takes paths, folders, globs, arrays or PIL Images through one mechanism
(``classification.normalise_inputs``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kerascope
from kerascope.classification import normalise_inputs
from kerascope.errors import ConfigError
from kerascope.evaluation import Evaluation
from kerascope.prediction import PredictedLabel

from .test_evaluate import CLASSES, _images, run_dir  # noqa: F401 (run_dir is a fixture)

PUBLIC = ("classify", "evaluate", "predict", "train", "explain", "features")


def test_public_names_are_functions_whatever_was_imported_first():
    code = (
        "import inspect, kerascope.classification, kerascope.evaluation, "
        "kerascope.prediction, kerascope.training.run, kerascope.training, kerascope.bottleneck, "
        "kerascope.cam.explain\n"
        "import kerascope\n"
        f"for name in {PUBLIC!r}:\n"
        "    f = getattr(kerascope, name)\n"
        "    assert inspect.isfunction(f) and f.__name__ == name, (name, f)\n"
        "from kerascope.training import recipes, train\n"  # the subpackage is still importable
        "assert train is kerascope.train and recipes.get_recipe\n"
        "print('ok')\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ok"


def test_public_names_in_this_process():
    for name in PUBLIC:
        assert callable(getattr(kerascope, name)) and name in kerascope.__all__


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (40, 30, 3), dtype=np.uint8)


def test_normalise_inputs_takes_pil_images_and_arrays_but_not_mixed_with_paths(tmp_path):
    pil = Image.fromarray(_photo(0)).convert("L")
    assert normalise_inputs(pil) == ([pil], [], [])
    arrays = [_photo(1), pil]
    sources, skipped, missing = normalise_inputs(arrays)
    assert sources == arrays and not skipped and not missing
    assert len(normalise_inputs(np.stack([_photo(2), _photo(3)]))[0]) == 2
    with pytest.raises(ValueError, match="not both"):
        normalise_inputs([pil, str(tmp_path)])


def test_classify_predict_evaluate_take_arrays_and_pil_images(run_dir, tmp_path):  # noqa: F811
    files = tmp_path / "files"
    _images(files, "disc", 3, seed=5)
    paths = sorted(str(p) for p in files.iterdir())
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    pils = [Image.open(p) for p in paths]

    by_path = kerascope.classify(paths, model=run_dir, top=2)
    for inputs in (arrays, pils):
        other = kerascope.classify(inputs, model=run_dir, top=2)
        assert [r.predictions[0].index for r in other] == [r.predictions[0].index for r in by_path]
    assert kerascope.classify(pils[0], model=run_dir)[0].source == "<image>"

    rows = kerascope.predict(run_dir, pils + [Image.new("CMYK", (8, 8))])
    assert all(isinstance(r, PredictedLabel) and r.ok for r in rows) and len(rows) == 4
    assert [r.label for r in rows[:3]] == [r.predictions[0].name for r in by_path]
    assert kerascope.predict(run_dir, arrays[0])[0].probability == pytest.approx(
        by_path[0].predictions[0].probability, abs=1e-5
    )
    bad = kerascope.predict(run_dir, [np.zeros((3, 4, 5))], tmp_path / "p.csv")
    assert not bad[0].ok and "shape" in bad[0].error
    assert "shape" in (tmp_path / "p.csv").read_text()

    truth = ["disc", 1, "plain"]
    result = kerascope.evaluate(run_dir, pils, truth, output=tmp_path / "ev", top_losses=3)
    assert isinstance(result, Evaluation) and result.split == "labels" and result.n == 3
    assert result.data is None and sum(map(sum, result.confusion)) == 3
    guessed = [r.predictions[0].index for r in by_path]
    assert result.accuracy == pytest.approx(np.mean(np.array(guessed) == [0, 1, 1]))
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert (tmp_path / "ev" / "top_losses.png").is_file()
    with pytest.raises(ValueError, match="2 labels given for 3 images"):
        kerascope.evaluate(run_dir, arrays, ["disc", "plain"])
    with pytest.raises(ValueError, match="'zebra' is not a class"):
        kerascope.evaluate(run_dir, arrays, ["disc", "plain", "zebra"])


def test_save_explanations_names_files_and_leaves_no_temp_files(run_dir, tmp_path):  # noqa: F811
    from kerascope.cam.save import save_explanations

    files = tmp_path / "in"
    _images(files, "disc", 2, seed=7)
    (files / "broken.png").write_bytes(b"\x89PNG nope")
    out = tmp_path / "out"
    saved = save_explanations([str(files), str(tmp_path / "nope.png")], out, model=run_dir)
    assert [Path(s.source).name for s in saved] == ["00.png", "01.png", "broken.png", "nope.png"]
    assert [s.ok for s in saved] == [True, True, False, False]
    assert saved[0].path == out / "00-output.jpg" and saved[0].explanation.heatmap is None
    assert sorted(p.name for p in out.iterdir()) == ["00-output.jpg", "01-output.jpg"]
    with Image.open(out / "00-output.jpg") as im:
        assert im.size[0] == 2 * 40 * 6  # original | overlay, a 40 px picture drawn 6x (>= 224)

    pil = Image.open(files / "01.png")
    again = save_explanations([pil, _photo(0)], out, model=run_dir, target=["disc", "plain"])
    assert [s.path.name for s in again] == ["image-0-output.jpg", "image-1-output.jpg"]
    assert [s.explanation.class_name for s in again] == CLASSES
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "said"),
    [(None, {}, TypeError, "got NoneType"), (b"cat.png", {}, TypeError, "got bytes"),
     (["a.png", None], {}, TypeError, "got NoneType None"), ([1, 2], {}, TypeError, "got int 1"),
     ("a.png", {"top": 0}, ValueError, "top must be a whole number of at least 1, got 0"),
     ("a.png", {"top": None}, ValueError, "top must be a whole number of at least 1, got None"),
     ("a.png", {"threshold": 2}, ValueError, "threshold must be a number from 0 to 1, got 2"),
     ("a.png", {"threshold": "0.1"}, ValueError, "from 0 to 1, got '0.1'")],
)  # fmt: skip
def test_classify_names_a_wrong_argument(run_dir, inputs, kwargs, error, said):  # noqa: F811
    """Before: top=0 and threshold=2 gave one class in silence, None an obscure "NoneType is
    not iterable", raw bytes "expected str, bytes or os.PathLike object, not int"."""
    with pytest.raises(error, match=re.escape(said)):
        kerascope.classify(inputs, model=run_dir, **kwargs)


def test_other_api_calls_name_a_wrong_argument(run_dir, tmp_path):  # noqa: F811
    """Before: features(model=[a, b]) "'list' object has no attribute 'strip'", predict(run,
    []) "no images found in " (nothing after it), evaluate(labels="circle") split the name
    into six labels."""
    from kerascope.data.folders import DatasetError

    picture = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(picture)
    with pytest.raises(TypeError, match="a model name is one string"):
        kerascope.features(str(picture), model=["efficientnet_lite0", "efficientnet_lite1"])
    with pytest.raises(DatasetError, match="no inputs given"):
        kerascope.predict(run_dir, [])
    scored = kerascope.evaluate(run_dir, str(picture), labels=CLASSES[0],
                                output=tmp_path / "ev", top_losses=0)  # fmt: skip
    assert scored.n == 1
    # Before: "expected str, bytes or os.PathLike object, not list", "invalid literal for int()"
    with pytest.raises(TypeError, match="validate's data is one folder of class folders"):
        kerascope.validate(run_dir, [str(tmp_path)])
    with pytest.raises(ConfigError, match="image_size must be a whole number of at least 1"):
        kerascope.features(str(picture), image_size="x")
    assert kerascope.features(str(picture), image_size=np.int64(40)).shape == (1, 1280)


def test_group_and_target_of_the_wrong_type_are_named(photo_paths):
    """Before: group=1 "'int' object is not iterable", target=3.0 "object of type 'float' has
    no len()"; a whole float is its class now."""
    with pytest.raises(TypeError, match="group is True"):
        kerascope.classify(str(photo_paths["chelsea"]), group=1)
    assert kerascope.explain(str(photo_paths["chelsea"]), target=285.0).class_index == 285
    with pytest.raises(TypeError, match="target is a class"):
        kerascope.explain(str(photo_paths["chelsea"]), target=2.5)
