"""evaluate / predict on a saved (untrained, so fast) recipe model and generated folders.

The numbers are checked against an independent computation from ``kerascope.classify``, so a
wrong confusion matrix or a dropped file cannot pass by being self-consistent.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kerascope.classification import classify
from kerascope.evaluation import Evaluation, evaluate, format_confusion, metrics_from
from kerascope.prediction import PredictedLabel, predict

CLASSES = ["disc", "plain"]


def _images(folder: Path, kind: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(0, 255, 3)))
        if kind == "disc":
            ImageDraw.Draw(image).ellipse([8, 8, 32, 32], fill=(250, 250, 250))
        image.save(folder / f"{i:02d}.png")


def untrained_run(run: Path, classes: list[str]) -> Path:
    """A LeNet run directory as ``train`` leaves it (model.keras + labels.json), untrained."""
    import keras

    from kerascope.training.recipes import build_model, get_recipe, inference_model

    keras.utils.set_random_seed(0)
    recipe = get_recipe("lenet")
    model = inference_model(build_model(recipe, len(classes), (32, 32), None, seed=0))
    model.save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps({"classes": classes}))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("run"), CLASSES)


@pytest.fixture()
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    for k, name in enumerate(CLASSES):
        _images(root / name, name, 7 + k, seed=k)
    (root / "disc" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_evaluate_numbers_match_classify(run_dir, data, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate(run_dir, data, batch_size=4, output=out)
    assert isinstance(metrics, Evaluation) and metrics.output == out
    # independent reference: classify every readable file, compare with its folder
    readable = [p for c in CLASSES for p in sorted((data / c).iterdir()) if p.suffix == ".png"]
    results = classify(readable, model=run_dir, top=1)
    truth = [CLASSES.index(p.parent.name) for p in readable]
    guess = [r.predictions[0].index for r in results]
    expected = np.zeros((2, 2), int)
    for t, g in zip(truth, guess, strict=True):
        expected[t, g] += 1
    confusion = np.array(metrics.confusion)
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.sum() == metrics.n == len(readable) == 15
    assert metrics.accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
    assert metrics.split == "all"
    assert [Path(p).name for p, _ in metrics.unreadable] == ["broken.jpg"]
    assert {c: metrics.per_class[c].support for c in CLASSES} == {"disc": 7, "plain": 8}
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics.to_dict()))
    assert written["top5_accuracy"] is None  # two classes: top-5 would always be right
    assert list(written) == ["n", "accuracy", "top5_accuracy", "macro_f1", "per_class",
                             "classes", "confusion",
                             "data", "split", "split_source", "trained_on", "unreadable",
                             "model", "precision", "top1_interval", "top5_interval",
                             "confusion_nonzero", "most_confused", "images_per_second",
                             "tta"]  # fmt: skip
    assert written["precision"] == "float32"  # auto on a CPU
    assert written["data"] == str(data.resolve()) and written["unreadable"][0][1]
    for name in ("confusion.png", "top_losses.png", "predictions.png"):
        assert (out / name).stat().st_size > 1000
    table = format_confusion(metrics)
    assert "disc" in table and f"accuracy {metrics.accuracy:.4f} on 15 images" in table


def test_evaluate_prefers_the_test_split(run_dir, tmp_path):
    root = tmp_path / "split"
    for k, name in enumerate(CLASSES):
        _images(root / "train" / name, name, 3, seed=k)
        _images(root / "test" / name, name, 2, seed=10 + k)
    (run_dir / "metrics.json").write_text("the run's own")
    metrics = evaluate(run_dir, root, top_losses=0)
    assert metrics.split == "test" and metrics.n == 4
    # another folder than the run trained from: its own sub-folder (before: the run's own
    # metrics.json and confusion.png were replaced), and a second one never replaces the first
    assert metrics.output == run_dir / "evaluations" / "split"
    assert (metrics.output / "metrics.json").is_file()
    assert not (metrics.output / "top_losses.png").exists()
    assert (run_dir / "metrics.json").read_text() == "the run's own"
    again = evaluate(run_dir, root, top_losses=0)
    assert again.output == run_dir / "evaluations" / "split-1"
    assert json.loads((metrics.output / "metrics.json").read_text())["n"] == 4
    (run_dir / "metrics.json").unlink()


def test_evaluate_rejects_unknown_class_folder(run_dir, tmp_path):
    from kerascope.data import DatasetError

    _images(tmp_path / "d" / "zebra", "plain", 1, seed=0)
    _images(tmp_path / "d" / "disc", "disc", 1, seed=0)
    with pytest.raises(DatasetError, match="1 folder.* match no class of the model: .zebra.;"):
        evaluate(run_dir, tmp_path / "d")


# --- a zoo model on ImageNet-layout and class-name folders (real photos, offline Lite0) ---------
# chelsea.png is a tabby (n02123045; Lite0 says tiger_cat, tabby in its top 5), coffee.png an
# espresso (n07920052; Lite0 right): top-1 1/2, top-5 2/2 whichever way the folders are named.
PHOTOS = {"chelsea.png": ("n02123045", "Tabby"), "coffee.png": ("n07920052", "espresso")}


def _zoo_folder(root: Path, skimage_data: Path, column: int) -> Path:
    import shutil

    for photo, names in PHOTOS.items():
        (root / names[column]).mkdir(parents=True)
        shutil.copy(skimage_data / photo, root / names[column] / photo)
    return root


@pytest.mark.parametrize("column", [0, 1], ids=["wordnet-ids", "class-names"])
def test_evaluate_a_zoo_model_on_wordnet_id_or_class_name_folders(lite0, skimage_data,
                                                                  tmp_path, column):  # fmt: skip
    data = _zoo_folder(tmp_path / "val", skimage_data, column)
    r = evaluate(lite0, data, output=tmp_path / "out", heatmaps=False, top_losses=0)
    assert (r.n, r.accuracy, r.top5_accuracy) == (2, 0.5, 1.0)
    assert r.per_class["tabby"].support == 1 and r.per_class["espresso"].recall == 1.0
    tabby, tiger_cat = r.classes.index("tabby"), r.classes.index("tiger_cat")
    assert r.confusion[tabby][tiger_cat] == 1


def test_cli_evaluate_of_a_zoo_model_names_every_unknown_folder_in_one_line(
    skimage_data, tmp_path, capsys, shared_zoo_models
):
    from kerascope.cli import main

    data = _zoo_folder(tmp_path / "val", skimage_data, 0)
    assert main(["evaluate", "efficientnet_lite0", str(data), "-o", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["accuracy"] == 0.5
    capsys.readouterr()
    (data / "zebras").mkdir()
    (data / "crane").mkdir()
    assert main(["evaluate", "efficientnet_lite0", str(data), "-o", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err
    assert "name the folder by its WordNet id (n02012849 or n03126707)" in err
    (data / "crane").rmdir()
    assert main(["evaluate", "efficientnet_lite0", str(data), "-o", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err.strip()
    assert "'zebras'; rename each to a WordNet id (n02123045) or a class name" in err
    assert "\n" not in err and "goldfish" in err and "toilet_tissue" not in err  # not all 1000


@pytest.mark.slow  # 19 s
def test_top5_accuracy_is_reported_beside_top1_with_more_than_five_classes(tmp_path, capsys):
    from kerascope.cli import main

    classes = [f"c{i}" for i in range(7)]
    (tmp_path / "run").mkdir()
    run = untrained_run(tmp_path / "run", classes)
    data = tmp_path / "seven"
    for k, name in enumerate(classes):
        _images(data / name, "disc" if k % 2 else "plain", 3, seed=k)
    assert main(["evaluate", str(run), str(data), "-o", str(tmp_path / "eval")]) == 0
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # independent reference: the rank of the true class in classify's full ranking
    paths = sorted(data.rglob("*.png"))
    results = classify(paths, model=run, top=7)
    ranks = [[p.name for p in r.predictions].index(path.parent.name)
             for r, path in zip(results, paths, strict=True)]  # fmt: skip
    assert written["top5_accuracy"] == pytest.approx(np.mean(np.array(ranks) < 5))
    assert written["accuracy"] == pytest.approx(np.mean(np.array(ranks) == 0))
    err = capsys.readouterr().err
    assert f"accuracy {written['accuracy']:.4f}, top-5 {written['top5_accuracy']:.4f} on 21" in err


def test_top_k_accuracy_by_hand():
    from kerascope.evaluation import top_k_accuracy

    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6]])
    labels = np.array([1, 0, 1])
    assert top_k_accuracy(probs, labels, 1) == 0.0
    assert top_k_accuracy(probs, labels, 2) == pytest.approx(1 / 3)  # a tie ranks it after
    assert top_k_accuracy(probs, labels, 3) == 1.0


def test_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    m = metrics_from(labels, predicted, ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)


def test_predict_writes_one_row_per_file(run_dir, data, tmp_path):
    out = tmp_path / "sub" / "predictions.csv"
    rows = predict(run_dir, data, out)
    assert all(isinstance(r, PredictedLabel) for r in rows)
    assert [r.ok for r in rows].count(False) == 1
    with out.open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) == 16  # 15 images + the broken one
    assert list(written[0]) == ["path", "label", "probability", "error"]
    assert [p.name for p in out.parent.iterdir()] == ["predictions.csv"]  # no temp file left
    broken = [r for r in written if r["path"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["label"] == ""
    good = [r for r in written if not r["error"]]
    reference = {r.source: r.predictions[0] for r in classify(data, model=run_dir, top=1) if r.ok}
    for r in good:
        assert r["label"] == reference[r["path"]].name
        assert float(r["probability"]) == pytest.approx(reference[r["path"]].probability, abs=1e-6)


def test_predict_writes_json_for_a_json_name_and_csv_to_standard_output(
    run_dir, data, tmp_path, capsys
):
    """Before: -o out.json got CSV, and -o - made a file named '-'."""
    from kerascope.cli import main

    rows = predict(run_dir, data, tmp_path / "out.json")
    written = json.loads((tmp_path / "out.json").read_text())
    assert [r["path"] for r in written] == [r.source for r in rows]
    broken = next(r for r in written if r["path"].endswith("broken.jpg"))
    assert broken["label"] == "" and broken["probability"] is None and broken["error"]
    good = next(r for r in written if not r["error"])
    assert isinstance(good["probability"], float) and good["label"] in CLASSES
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(data), "-o", "-"]) == 1  # the broken file
    out, err = capsys.readouterr()
    assert [r["path"] for r in csv.DictReader(io.StringIO(out))] == [r["path"] for r in written]
    assert "rows to standard output" in err and not os.path.exists("-")


@pytest.mark.slow  # 13 s
def test_evaluate_and_predict_in_bfloat16_on_a_saved_run(run_dir, data, tmp_path, monkeypatch):
    """A .keras run (not a zoo model) runs under the mixed policy too, on the keras engine."""
    monkeypatch.delenv("KERASCOPE_ENGINE", raising=False)
    full = evaluate(run_dir, data, batch_size=4, output=tmp_path / "f32", top_losses=0)
    half = evaluate(run_dir, data, batch_size=4, output=tmp_path / "bf16", top_losses=0,
                    precision="bfloat16")  # fmt: skip
    assert (full.precision, half.precision) == ("float32", "bfloat16")
    assert json.loads((tmp_path / "bf16" / "metrics.json").read_text())["precision"] == "bfloat16"
    assert half.n == full.n == 15
    rows32 = predict(run_dir, data, batch_size=4)
    rows16 = predict(run_dir, data, batch_size=4, precision="bf16")
    assert [r.source for r in rows16] == [r.source for r in rows32]
    for a, b in zip(rows32, rows16, strict=True):
        assert a.ok == b.ok
        if a.ok:
            p16 = b.probability if b.label == a.label else 1.0 - b.probability  # two classes
            assert p16 == pytest.approx(a.probability, abs=0.02)


def test_the_printed_tables_stay_aligned_with_an_escaped_class_name():
    """A class named with ESC prints escaped (four characters for one): its columns were
    measured before the escape, so every row after it was shifted."""
    import numpy as np

    from kerascope.evaluation import ClassScores

    classes = ["cat", "co\x1bffee"]
    m = metrics_from(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), classes)
    result = Evaluation(n=m["n"], accuracy=m["accuracy"], macro_f1=m["macro_f1"],
                        per_class={c: ClassScores(**v) for c, v in m["per_class"].items()},
                        classes=m["classes"], confusion=m["confusion"])  # fmt: skip
    lines = format_confusion(result).splitlines()
    assert "\x1b" not in "".join(lines) and "co\\x1bffee" in lines[0]
    matrix, scores = lines[:3], lines[4:7]
    assert len({len(line) for line in matrix}) == 1, matrix
    assert len({len(line) for line in scores}) == 1, scores


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_a_batch_size_below_one_is_one_line_in_every_api(run_dir, data, tmp_path, batch_size):
    """Before: predict(batch_size=0) gave no rows (exit 0), evaluate said no image could be
    read, features and a negative size raised NumPy/range tracebacks."""
    import kerascope
    from kerascope.bottleneck import extract_features
    from kerascope.errors import ConfigError
    from kerascope.evaluation import evaluate

    said = f"batch_size must be a whole number of at least 1, got {batch_size!r}"
    calls = [
        lambda: kerascope.predict(run_dir, data / CLASSES[0], batch_size=batch_size),
        lambda: evaluate(run_dir, data, output=tmp_path / "ev", batch_size=batch_size),
        lambda: extract_features(data, output=tmp_path / "f.h5", batch_size=batch_size),
        lambda: kerascope.classify(data / CLASSES[0], model=run_dir, batch_size=batch_size),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match=re.escape(said)):
            call()
    assert not (tmp_path / "f.h5").exists()


def test_tta_true_means_the_default_views_and_other_values_are_named(run_dir, data, tmp_path):
    """Before: tta=True was "'bool' object has no attribute 'make_views'", grid=-1 a NumPy
    error; --top-losses -1 was taken in silence."""
    from kerascope.errors import ConfigError
    from kerascope.evaluation import evaluate
    from kerascope.tta import TTA

    rows = predict(run_dir, data / CLASSES[0], tta=True)
    assert [r.label for r in rows] == [r.label for r in predict(run_dir, data / CLASSES[0],
                                                                 tta=TTA())]  # fmt: skip
    with pytest.raises(TypeError, match="tta is a kerascope.tta.TTA"):
        predict(run_dir, data / CLASSES[0], tta="flip")
    with pytest.raises(ConfigError, match="top_losses must be a whole number of at least 0"):
        evaluate(run_dir, data, output=tmp_path / "ev", top_losses=-1)


def test_split_all_scores_the_images_of_every_split_folder_even_with_an_empty_one(tmp_path):
    """``--split all`` over train/ (images) and test/ (class folders, no images yet): the
    review caught a version that refused test/ alone."""
    from kerascope.data import DatasetError
    from kerascope.evaluation import evaluation_items

    for c in ("cat", "dog"):
        (tmp_path / "test" / c).mkdir(parents=True)
        _images(tmp_path / "train" / c, c, 2, seed=len(c))
    split, items, source = evaluation_items(tmp_path, ["cat", "dog"], "all")
    assert (split, source, sorted(label for _, label in items)) == ("all", "folder", [0, 0, 1, 1])
    with pytest.raises(DatasetError, match="has no test/ folder of class folders"):
        evaluation_items(tmp_path, ["cat", "dog"], "test")


@pytest.mark.parametrize("layout", ["classes", "split"])
def test_the_runs_held_out_files_keep_their_class_folder_however_deep(tmp_path, layout):
    """Before: a held-out file in a sub-folder of its class folder was labelled by its parent
    folder's name (``cat/coffee/x.png`` scored as coffee; ``cat/sub/x.png`` refused)."""
    from kerascope.evaluation import evaluation_items

    root = tmp_path / "data"
    base = root / "validation" if layout == "split" else root
    for c in ("cat", "coffee"):
        _images(base / c, c, 1, seed=len(c))
    _images(base / "cat" / "coffee", "cat", 1, seed=1)
    _images(base / "cat" / "sub" / "deeper", "cat", 1, seed=2)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    record = {"data": str(root), "splits": {"train": [], "validation": files}}
    split, items, source = evaluation_items(root, ["cat", "coffee"], "validation", record)
    assert (split, source) == ("validation", "run")
    labels = {Path(p).relative_to(base).as_posix(): label for p, label in items}
    assert labels == {"cat/00.png": 0, "cat/coffee/00.png": 0, "cat/sub/deeper/00.png": 0,
                      "coffee/00.png": 1}  # fmt: skip


def test_only_the_default_split_without_tta_writes_the_runs_own_metrics(tmp_path):
    """Before: ``--split validation`` or ``--tta`` on the run's own data replaced the run's
    metrics.json (the test split's scores) without a word."""
    from kerascope.rundir import write_split

    run = tmp_path / "run"
    run.mkdir()
    untrained_run(run, CLASSES)
    root = tmp_path / "data"
    splits = {}
    for s, n in (("train", 2), ("validation", 1), ("test", 1)):
        for k, name in enumerate(CLASSES):
            _images(root / s / name, name, n, seed=10 * n + k)
        splits[s] = [(str(p), 0) for p in sorted((root / s).rglob("*.png"))]
    write_split(run, root, splits)
    assert evaluate(run, root, top_losses=0, heatmaps=False).output == run
    assert evaluate(run, root, split="test", top_losses=0, heatmaps=False).output == run
    kept = (run / "metrics.json").read_text()
    other = evaluate(run, root, split="validation", top_losses=0, heatmaps=False)
    assert other.output == run / "evaluations" / "data-validation"
    tta = evaluate(run, root, tta=True, top_losses=0, heatmaps=False)
    assert tta.output == run / "evaluations" / "data-test-tta"
    assert (run / "metrics.json").read_text() == kept and json.loads(kept)["split"] == "test"


def test_kaggles_unlabelled_test_folder_is_left_out_of_evaluate_too(tmp_path):
    """Training leaves a test/ of loose pictures out; evaluate refused the whole folder
    ("no class folders in .../test"), --split validation included (the review's find)."""
    from kerascope.evaluation import evaluation_items

    for c in CLASSES:
        _images(tmp_path / "train" / c, c, 2, seed=len(c))
    _images(tmp_path / "test", "plain", 2, seed=5)  # loose pictures, no class folders
    (tmp_path / "test" / "disc").mkdir()  # and class folders holding no picture (the review's)
    (tmp_path / "test" / "disc" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "test" / "plain" / "empty").mkdir(parents=True)
    split, items, _ = evaluation_items(tmp_path, CLASSES, "auto")
    assert split == "all" and len(items) == 4
    record = {"data": str(tmp_path), "splits": {
        "train": [f"train/{c}/00.png" for c in CLASSES],
        "validation": [f"train/{c}/01.png" for c in CLASSES]}}  # fmt: skip
    assert evaluation_items(tmp_path, CLASSES, "auto", record)[0] == "validation"
    assert len(evaluation_items(tmp_path, CLASSES, "validation", record)[1]) == 2
