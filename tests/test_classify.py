"""classify on real photos and on broken inputs: the API and the CLI."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import kerascope
from kerascope.cli import main

CATS = {"tabby", "tiger_cat", "Egyptian_cat"}


@pytest.mark.backends
def test_chelsea_is_a_cat(lite0, photo_paths):
    [result] = kerascope.classify(str(photo_paths["chelsea"]), model=lite0, top=5)
    assert result.ok
    assert result.predictions[0].name in CATS
    assert result.predictions[0].class_id in {"n02123045", "n02123159", "n02124075"}
    probs = [p.probability for p in result.predictions]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_coffee_is_coffee_and_arrays_equal_files(lite0, photo_paths):
    from kerascope.images import load_image

    by_path = kerascope.classify(str(photo_paths["coffee"]), model=lite0, top=3)[0]
    by_array = kerascope.classify(load_image(photo_paths["coffee"]), model=lite0, top=3)[0]
    assert by_path.predictions[0].name in {"espresso", "cup", "coffee_mug"}
    assert [p.index for p in by_path.predictions] == [p.index for p in by_array.predictions]
    assert np.allclose(
        [p.probability for p in by_path.predictions],
        [p.probability for p in by_array.predictions],
        atol=1e-5,
    )


def test_iter_classify_yields_each_result_as_its_batch_finishes(lite0, photo_paths):
    from kerascope.classification import iter_classify

    paths = [str(p) for p in photo_paths.values()]
    stream = iter_classify(paths, model=lite0, top=1, batch_size=1)
    first = next(stream)  # the first batch only: nothing else computed yet
    assert first.source == paths[0] and first.predictions[0].name in CATS
    rest = list(stream)
    assert [r.source for r in rest] == paths[1:]
    assert [r.predictions[0].index for r in [first, *rest]] == [
        r.predictions[0].index for r in kerascope.classify(paths, model=lite0, top=1)
    ]


def test_batch_size_does_not_change_results(lite0, photo_paths):
    paths = [str(p) for p in photo_paths.values()]
    one = kerascope.classify(paths, model=lite0, top=2, batch_size=1)
    many = kerascope.classify(paths, model=lite0, top=2, batch_size=3)
    for a, b in zip(one, many, strict=True):
        assert a.source == b.source
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        assert abs(a.predictions[0].probability - b.predictions[0].probability) < 1e-4


@pytest.mark.parametrize("batch_size", [1, 3])
def test_missing_inputs_keep_their_place(lite0, photo_paths, tmp_path, batch_size):
    from kerascope.classification import MISSING_INPUT

    cat, coffee = str(photo_paths["chelsea"]), str(photo_paths["coffee"])
    inputs = [str(tmp_path / "a_missing.png"), cat, str(tmp_path / "b_missing.png"), coffee]
    results = kerascope.classify(inputs, model=lite0, top=1, batch_size=batch_size)
    assert [r.source for r in results] == inputs
    assert [r.ok for r in results] == [False, True, False, True]
    assert results[0].error == results[2].error == MISSING_INPUT
    assert results[1].predictions[0].name in CATS
    rows = kerascope.predict(lite0, inputs, tmp_path / "rows.csv", batch_size=batch_size)
    assert [r.source for r in rows] == inputs
    assert [r.ok for r in rows] == [False, True, False, True]
    assert rows[0].error == rows[2].error == MISSING_INPUT
    assert [r.label for r in rows] == [None, results[1].predictions[0].name, None,
                                       results[3].predictions[0].name]  # fmt: skip
    with open(tmp_path / "rows.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == inputs


@pytest.fixture
def messy_folder(tmp_path, photo_paths):
    """Good photos beside every kind of broken file, nested, with hidden clutter."""
    (tmp_path / "sub").mkdir()
    shutil.copy(photo_paths["chelsea"], tmp_path / "cat.png")
    Image.open(photo_paths["coffee"]).convert("L").save(tmp_path / "sub" / "coffee_gray.jpg")
    jpeg = io.BytesIO()
    Image.open(photo_paths["chelsea"]).convert("RGB").save(jpeg, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not really a picture")
    (tmp_path / "readme.txt").write_text("skipped: not an image suffix")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    return tmp_path


def test_bad_files_get_their_own_row_and_the_rest_is_classified(lite0, messy_folder):
    results = {r.source.split("/")[-1]: r for r in kerascope.classify(str(messy_folder), lite0)}
    assert set(results) == {"cat.png", "coffee_gray.jpg", "truncated.jpg", "empty.png", "notes.jpg"}
    assert results["cat.png"].predictions[0].name in CATS
    assert results["coffee_gray.jpg"].ok
    assert "truncated" in results["truncated.jpg"].error
    assert "empty" in results["empty.png"].error
    assert "not an image" in results["notes.jpg"].error


def test_cli_json_reports_failures_and_exits_nonzero(messy_folder, capsys, shared_zoo_models):
    code = main(["classify", str(messy_folder), "--format", "json", "--top", "2"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert code == 1
    assert len(data) == 5
    errors = [d for d in data if d["error"]]
    assert len(errors) == 3 and all(not d["predictions"] for d in errors)
    assert all(len(d["predictions"]) == 2 for d in data if not d["error"])
    assert "skipped 1 non-image file" in captured.err
    assert "3 of 5" in captured.err


def test_cli_csv_to_file_glob_and_threshold(tmp_path, photo_paths, capsys, shared_zoo_models):
    out = tmp_path / "out.csv"
    pattern = str(photo_paths["chelsea"].parent / "c*e*.png")  # chelsea, coffee
    code = main(["classify", pattern, "-f", "csv", "-o", str(out), "--threshold", "0.05"])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    images = {r["image"].split("/")[-1] for r in rows}
    assert {"chelsea.png", "coffee.png"} <= images
    assert all(float(r["probability"]) >= 0.05 or r["rank"] == "1" for r in rows)
    assert {"image", "rank", "class_id", "name", "probability", "error"} == set(rows[0])


def test_cli_table_and_missing_path(photo_paths, capsys, shared_zoo_models):
    code = main(["classify", str(photo_paths["chelsea"]), "/no/such/photo.jpg", "-k", "1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "n021" in out and "no such file" in out


def test_cli_unknown_model_is_one_line(capsys):
    code = main(["classify", "x.jpg", "--model", "resnet5O"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("kerascope: error: unknown model 'resnet5O'") and "\n" not in err


def test_cli_missing_weights_offline_names_the_file(photo_paths, capsys):
    code = main(["classify", str(photo_paths["chelsea"]), "--model", "vgg16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in err
    assert "efficientnet_lite0" in err  # which models work offline
    assert "Traceback" not in err
