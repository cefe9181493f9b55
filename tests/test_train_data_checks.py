"""What `train` says of its data before the first epoch and writes in report.md: validation
images that are byte copies of training images, archive leftovers, and every choice made."""

from __future__ import annotations

import shutil

import pytest

from kerascope.data import scan_dataset
from kerascope.data.augment import AugmentConfig
from kerascope.errors import ConfigError
from kerascope.testing.photos import cat_and_coffee
from kerascope.training import heads, train


def test_validation_copies_of_training_images_are_said_and_only_size_twins_hashed(
    tmp_path, monkeypatch
):
    from kerascope.training import run_data

    root = tmp_path / "data"
    cat_and_coffee(root / "train", n=6, size=32)
    cat_and_coffee(root / "validation", n=3, size=32, seed=9)
    shutil.copy(root / "train/cat/000.jpg", root / "validation/cat/000_copy.jpg")
    shutil.copy(root / "train/coffee/004.jpg", root / "validation/coffee/x.jpg")
    dataset = scan_dataset(root)
    hashed = []
    real = run_data.file_digest
    monkeypatch.setattr(run_data, "file_digest", lambda p: hashed.append(p) or real(p))
    run_data.note_copies(dataset)
    [warning] = [w for w in dataset.warnings if "byte copies" in w]
    assert warning.startswith("2 validation/test image(s) are byte copies of training images")
    assert "'validation/cat/000_copy.jpg' = 'train/cat/000.jpg'" in warning
    assert len(hashed) < 8  # the two copies and their twins (and any chance size collision)


def test_train_warns_of_copies_and_reports_augmentation_and_class_weights(tmp_path, capsys):
    data = cat_and_coffee(tmp_path / "data", n=16, size=32)
    for i in range(4, 16):  # imbalanced: 32 cats, 4 coffees
        (data / "coffee" / f"{i:03d}.jpg").unlink()
    for i in range(16):  # x.jpg + x_copy.jpg: the split holds some pairs apart
        shutil.copy(data / f"cat/{i:03d}.jpg", data / f"cat/{i:03d}_copy.jpg")
    run = tmp_path / "run"
    augment = AugmentConfig(rotation=7, horizontal_flip=False)
    train(data, recipe="lenet", output=run, epochs=1, image_size=32, class_weight="auto",
          augment=augment, seed=3, progress=True)  # fmt: skip
    err = capsys.readouterr().err
    report = (run / "report.md").read_text()
    assert "Augmentation: rotation 7°, shift 0.2 x 0.2, shear 0.2, zoom 0.2, flips none" in report
    assert "Class weights: auto" in report
    assert "classes are imbalanced" in report and "consider --class-weight auto" not in report
    # said at train time (before: no word), in one line
    copies = [line for line in err.splitlines() if "byte copies of training images" in line]
    assert len(copies) == 1 and "_copy.jpg" in copies[0], err


def test_macos_archive_folders_are_not_classes(tmp_path):
    data = cat_and_coffee(tmp_path / "data", n=3, size=32)
    junk = data / "__MACOSX" / "cat"
    junk.mkdir(parents=True)
    (junk / "._000.jpg").write_bytes(b"\0\5\26\7 resource fork")
    (data / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    dataset = scan_dataset(data)  # before: "class folder ... __MACOSX has no images"
    assert dataset.classes == ["cat", "coffee"]
    assert any("__MACOSX" in w and "macOS archive metadata" in w for w in dataset.warnings)


def test_a_second_pooling_in_the_head_names_the_head_not_pool():
    with pytest.raises(ConfigError) as refused:
        heads.check_head(["gap", "gap"], spatial=True)
    assert "--pool" not in str(refused.value)
    assert "the head's gap before it made vectors already" in str(refused.value)
    with pytest.raises(ConfigError, match="pooled by --pool"):  # features: still --pool's
        heads.check_head(["gap"], spatial=False)


def test_train_says_what_it_trains_on_before_the_first_epoch(tmp_path, capsys):
    """README promised counts per class at scan time; they were only in report.md."""
    from kerascope.testing.photos import cat_and_coffee
    from kerascope.training import train

    data = cat_and_coffee(tmp_path / "data", n=6, size=32)
    train(data, recipe="lenet", output=tmp_path / "run", epochs=1, image_size=32)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("dataset: 2 classes; train ") and "(cat " in first
    assert "; validation " in first
