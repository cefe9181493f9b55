"""What a model file's output means: probabilities as they are, logits read through their
softmax (or sigmoid), one sigmoid unit as two classes, and NaN as an error, never a number."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from kerascope.cli import main


def head_model(path, units: int, activation: str | None, bias, kernel=0.0):
    """GAP -> Dense(units, activation) with a constant kernel and the given bias, saved."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(units, activation=activation, name="head")
    model = keras.Model(inputs, dense(x), name="head_model")
    dense.set_weights([np.full((3, units), kernel, np.float32), np.asarray(bias, np.float32)])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("pics") / "grey.png"
    Image.new("RGB", (16, 16), (128, 128, 128)).save(path)
    return path


def classified(capsys, picture, model) -> tuple[int, list[dict], str]:
    code = main(["classify", str(picture), "-m", str(model), "-k", "5", "-f", "json"])
    out, err = capsys.readouterr()
    return code, json.loads(out)[0]["predictions"], err


def test_logits_are_read_through_their_softmax(tmp_path, capsys, picture):
    """Before: a logit of 4 printed as 400.0%, and the negative one was left out."""
    model = head_model(tmp_path / "logits.keras", 3, None, [4.0, -2.0, 1.5])
    code, rows, err = classified(capsys, picture, model)
    expected = np.exp([4.0, -2.0, 1.5]) / np.exp([4.0, -2.0, 1.5]).sum()
    assert code == 0 and [r["name"] for r in rows] == ["class_0", "class_2", "class_1"]
    assert [r["probability"] for r in rows] == pytest.approx(sorted(expected)[::-1], abs=1e-6)
    assert "its outputs are logits, their softmax gives the probabilities" in err


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_one_output_unit_is_two_classes(tmp_path, capsys, picture, activation):
    """Before: one sigmoid unit without labels.json was one class, 'class_0 48.4%', the
    probability of class 1 under class 0's name; one logit printed as it was."""
    model = head_model(tmp_path / "one.keras", 1, activation, [0.5])
    code, rows, _ = classified(capsys, picture, model)
    p = 1 / (1 + np.exp(-0.5))
    assert code == 0 and [(r["name"], r["probability"]) for r in rows] == [
        ("class_1", pytest.approx(p, abs=1e-6)),
        ("class_0", pytest.approx(1 - p, abs=1e-6)),
    ]


def test_a_model_that_outputs_nan_is_an_error_row(tmp_path, capsys, picture):
    """Before: 'n/a' in the table, bare NaN in JSON (no JSON parser's), exit 0."""
    model = head_model(tmp_path / "nan.keras", 3, "softmax", [0.0, 0.0, 0.0], kernel=np.nan)
    code = main(["classify", str(picture), "-m", str(model), "-f", "json"])
    out, _ = capsys.readouterr()
    (row,) = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert code == 1 and row["predictions"] == []
    assert "output for this image is not a number" in row["error"]


def test_a_binary_view_saved_again_stays_probabilities(tmp_path, capsys, picture):
    """The review's find: a binary run's two-class view ([1 - p, p], a Dense without
    activation), exported and loaded again, was read as logits: 100 % became 73 %."""
    from kerascope.zoo.models import load_model
    from kerascope.zoo.sigmoid_heads import two_class_view

    one = keras.saving.load_model(head_model(tmp_path / "one.keras", 1, "sigmoid", [4.0]))
    two_class_view(one).save(tmp_path / "exported.keras")
    code, rows, err = classified(capsys, picture, tmp_path / "exported.keras")
    p = 1 / (1 + np.exp(-4.0))
    assert code == 0 and rows[0]["probability"] == pytest.approx(p, abs=1e-6)
    assert "logits" not in err
    assert load_model(tmp_path / "exported.keras").num_classes == 2
