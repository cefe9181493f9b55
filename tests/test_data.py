"""Folder datasets: layouts, splits, bad files, the loader, its decoded cache, and a real fit."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kerascope.data import folders, loader
from kerascope.data.folders import DatasetError, scan_dataset
from kerascope.data.loader import FolderSequence, make_sequences

COLOURS = {"blue": (30, 60, 220), "red": (220, 40, 30), "green": (40, 200, 60)}


def draw(path: Path, colour: tuple[int, int, int], k: int = 0, size: int = 24) -> Path:
    """A coloured shape on grey, position varying with ``k`` (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size + k % 5, size), (128, 128, 128))
    o = k % 6
    ImageDraw.Draw(img).ellipse([o, o, o + size // 2 + 4, o + size // 2 + 4], fill=colour)
    img.save(path, quality=95)
    return path


def class_tree(root: Path, sizes: dict[str, int]) -> Path:
    for name, n in sizes.items():
        for k in range(n):
            draw(root / name / f"{name}_{k:03d}.{'png' if k % 3 == 0 else 'jpg'}", COLOURS[name], k)
    return root


def split_tree(root: Path, val_name: str = "validation", test: bool = False) -> Path:
    class_tree(root / "train", {"blue": 6, "red": 5})
    class_tree(root / val_name, {"blue": 2, "red": 3})
    if test:
        class_tree(root / "test", {"blue": 1, "red": 1})
    return root


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under root -> (content hash, mtime_ns): proves nothing was touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            data = p.read_bytes() if p.is_file() else b""
            out[str(p)] = (hashlib.sha256(data).hexdigest(), p.stat().st_mtime_ns)
    return out


@pytest.mark.parametrize("val_name", ["validation", "val", "Valid"])
def test_split_layout(tmp_path, val_name):
    ds = scan_dataset(split_tree(tmp_path / "d", val_name, test=True))
    assert ds.layout == "split" and ds.classes == ["blue", "red"]
    assert list(ds.splits) == ["train", "validation", "test"]
    assert ds.counts == {
        "train": {"blue": 6, "red": 5},
        "validation": {"blue": 2, "red": 3},
        "test": {"blue": 1, "red": 1},
    }
    for items in ds.splits.values():
        assert all(Path(p).parent.name == ds.classes[label] for p, label in items)
    assert ds.bad == [] and ds.warnings == []
    text = ds.summary()
    assert "blue" in text and "validation" in text and "total" in text


@pytest.mark.parametrize("test_dir", ["empty", "class folders, no images", "unlabelled"])
def test_a_test_folder_without_labelled_images_is_left_out_saying_so(tmp_path, test_dir):
    """Kaggle's layout (train/<class>/ + test/*.jpg) or an empty test/: before, the split was
    kept with no rows and training ended in a ValueError traceback."""
    root = split_tree(tmp_path / "d")
    (root / "test").mkdir()
    if test_dir == "class folders, no images":
        (root / "test" / "blue").mkdir()
    elif test_dir == "unlabelled":
        draw(root / "test" / "0001.jpg", COLOURS["red"])
    ds = scan_dataset(root)
    assert list(ds.splits) == ["train", "validation"]
    (note,) = [w for w in ds.warnings if "no test split" in w]
    assert f"'{root / 'test'}' holds no images in class folders" in note
    assert "kerascope predict RUN" in note


def test_split_layout_without_validation_holds_out_train(tmp_path):
    class_tree(tmp_path / "d" / "train", {"blue": 5, "red": 5})
    ds = scan_dataset(tmp_path / "d", val_split=0.4)
    assert ds.counts["validation"] == {"blue": 2, "red": 2}
    assert any("no validation folder" in w for w in ds.warnings)


def test_class_layout_stratified_and_seeded(tmp_path):
    root = class_tree(tmp_path / "d", {"blue": 10, "red": 20, "green": 5})
    ds = scan_dataset(root, val_split=0.2, seed=3)
    assert ds.layout == "classes" and ds.classes == ["blue", "green", "red"]
    assert ds.counts["validation"] == {"blue": 2, "green": 1, "red": 4}
    assert ds.counts["train"] == {"blue": 8, "green": 4, "red": 16}
    train = {p for p, _ in ds.splits["train"]}
    val = {p for p, _ in ds.splits["validation"]}
    assert not train & val and len(train | val) == 35
    assert scan_dataset(root, val_split=0.2, seed=3).splits == ds.splits
    other = scan_dataset(root, val_split=0.2, seed=4)
    assert {p for p, _ in other.splits["validation"]} != val


def test_hidden_and_non_image_files_ignored(tmp_path):
    root = class_tree(tmp_path / "d", {"blue": 3, "red": 3})
    draw(root / ".ipynb_checkpoints" / "x.jpg", COLOURS["red"])  # hidden "class" at the top
    draw(root / "red" / ".ipynb_checkpoints" / "red_000-checkpoint.jpg", COLOURS["red"])
    (root / "blue" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "blue" / "._blue_001.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "red" / "notes.txt").write_text("not a picture")
    ds = scan_dataset(root, val_split=0.34)
    assert ds.classes == ["blue", "red"]
    every = [p for items in ds.splits.values() for p, _ in items]
    assert len(every) == 6 and all("/." not in p for p in every)
    assert ds.bad == [] and ds.skipped == [str(root / "red" / "notes.txt")]
    assert any("non-image" in w for w in ds.warnings)


def test_bad_files_fail_or_are_skipped(tmp_path):
    root = class_tree(tmp_path / "d", {"blue": 4, "red": 4})
    good = (root / "red" / "red_001.jpg").read_bytes()
    (root / "red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "blue" / "text.jpg").write_text("hello, I am not a JPEG")
    (root / "blue" / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        scan_dataset(root)
    message = str(err.value)
    assert "3 unreadable" in message and "truncated.jpg" in message and "skip-bad" in message
    seen = []
    ds = scan_dataset(root, skip_bad=True, val_split=0.25, progress=lambda d, t: seen.append(t))
    reasons = {Path(p).name: r for p, r in ds.bad}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "empty.png"}
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["text.jpg"]
    assert "empty" in reasons["empty.png"]
    assert sum(sum(c.values()) for c in ds.counts.values()) == 8
    assert seen and seen[-1] == 11
    assert "unreadable" in ds.summary()
    # check_images=False trusts the suffixes: the bad files stay in.
    assert sum(len(v) for v in scan_dataset(root, check_images=False).splits.values()) == 11


def test_dataset_errors(tmp_path):
    def fails(root, match, **kwargs):
        with pytest.raises(DatasetError, match=match):
            scan_dataset(root, **kwargs)

    fails(tmp_path / "missing", "does not exist")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "is empty")
    draw(tmp_path / "loose" / "a.jpg", COLOURS["red"])
    fails(tmp_path / "loose", "no class folders .* holds 1 images")
    fails(class_tree(tmp_path / "one", {"red": 4}), "only one class")
    noimg = class_tree(tmp_path / "noimg", {"red": 4, "blue": 4})
    (noimg / "green").mkdir()
    (noimg / "green" / "readme.txt").write_text("x")
    fails(noimg, "green' has no images")
    fails(class_tree(tmp_path / "single", {"red": 4, "blue": 1}), "'blue' .* at least 2")
    nval = split_tree(tmp_path / "nval")
    for f in (nval / "validation" / "red").iterdir():
        f.unlink()
    fails(nval, "'red' has no validation images")
    mixed = class_tree(tmp_path / "mixed", {"red": 2, "blue": 2})
    class_tree(mixed / "train", {"red": 2, "blue": 2})
    fails(mixed, "mixes split folders")
    extra = split_tree(tmp_path / "extra")
    class_tree(extra / "validation", {"green": 1})
    fails(extra, "no matching folder")
    fails(class_tree(tmp_path / "vs", {"red": 3, "blue": 3}), "val_split", val_split=0.0)


def test_imbalance_warning(tmp_path):
    ds = scan_dataset(class_tree(tmp_path / "d", {"red": 20, "blue": 5}))
    assert any("imbalanced" in w and "'red'" in w for w in ds.warnings)


def test_a_file_two_classes_hold_is_said(tmp_path):
    """A linked class folder (or a hard link) trained one picture under two labels, in
    silence; the warning names a file and its classes. Distinct files are not flagged."""
    root = class_tree(tmp_path / "d", {"blue": 6, "red": 5})
    assert not any("more than one class" in w for w in scan_dataset(root).warnings)
    (root / "navy").symlink_to(root / "blue", target_is_directory=True)
    os.link(root / "red" / "red_001.jpg", root / "navy" / "hard.jpg")  # inside blue/ too
    (warning,) = [w for w in scan_dataset(root).warnings if "more than one class" in w]
    assert warning.startswith("7 file(s) belong to more than one class"), warning
    assert "'blue', 'navy'" in warning and "one class" in warning


def test_user_files_untouched(tmp_path):
    root = split_tree(tmp_path / "d", test=True)
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    before = tree_digest(root)
    ds = scan_dataset(root, skip_bad=True)
    seqs = make_sequences(ds, 16, batch_size=4, cache=tmp_path / "cache")
    for seq in seqs.values():
        seq.fill_cache()
        for i in range(len(seq)):
            seq[i]
        seq.on_epoch_end()
    assert tree_digest(root) == before


def test_a_batch_larger_than_the_split_is_the_split(tmp_path):
    """Batches are padded to their full size: 24 images padded to --batch-size 3000 took 24 GB
    and the OOM killer. A split smaller than the batch gets its own size (rounded up to the
    devices' multiple); a larger one keeps the batch asked."""
    ds = scan_dataset(class_tree(tmp_path / "d", {"blue": 6, "red": 5}), val_split=0.2)
    n_train, n_val = len(ds.splits["train"]), len(ds.splits["validation"])
    seqs = make_sequences(ds, 16, batch_size=1000)
    assert (seqs["train"].batch_size, seqs["validation"].batch_size) == (n_train, n_val)
    assert len(seqs["train"]) == 1 and len(seqs["train"].padded_rows(0)[0]) == n_train
    seqs = make_sequences(ds, 16, batch_size=1000, multiple=4)
    assert seqs["train"].batch_size == -(-n_train // 4) * 4
    assert make_sequences(ds, 16, batch_size=4)["train"].batch_size == 4


@pytest.fixture
def colour_items(tmp_path) -> tuple[list[tuple[str, int]], list[str]]:
    ds = scan_dataset(class_tree(tmp_path / "d", {"blue": 6, "red": 5}), val_split=0.2)
    return ds.splits["train"] + ds.splits["validation"], ds.classes


def test_sequence_batches(colour_items):
    items, classes = colour_items
    seq = FolderSequence(items, classes, (20, 28), batch_size=4, workers=1)
    assert len(seq) == 3
    x, y = seq[0]
    assert x.shape == (4, 20, 28, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert seq[2][0].shape == (3, 20, 28, 3)
    for i in range(len(seq)):
        x, y = seq[i]
        for image, label in zip(
            x, y, strict=True
        ):  # the corner is grey, the shape has the class colour
            colours = image.reshape(-1, 3).astype(int)
            want = np.array(COLOURS[classes[label]])
            assert np.abs(colours - want).sum(axis=1).min() < 60
    xf, _ = FolderSequence(items, classes, 16, batch_size=4, dtype="float32")[0]
    assert xf.dtype == np.float32 and xf.shape == (4, 16, 16, 3) and xf.max() > 1
    with pytest.raises(IndexError):
        seq[3]


def test_sequence_shuffles_per_epoch_reproducibly(colour_items):
    items, classes = colour_items

    def epochs(seq, n=3):
        out = []
        for _ in range(n):
            out.append([int(i) for i in seq._order])
            seq.on_epoch_end()
        return out

    a = epochs(FolderSequence(items, classes, 8, batch_size=4, shuffle=True, seed=7))
    b = epochs(FolderSequence(items, classes, 8, batch_size=4, shuffle=True, seed=7))
    c = epochs(FolderSequence(items, classes, 8, batch_size=4, shuffle=True, seed=8))
    assert a == b and a != c
    assert a[0] != a[1] and all(sorted(order) == list(range(len(items))) for order in a)
    s1 = FolderSequence(items, classes, 8, batch_size=4, shuffle=True, seed=7)
    s2 = FolderSequence(items, classes, 8, batch_size=4, shuffle=True, seed=7)
    s2.on_epoch_end()
    s1.set_epoch(1)
    assert np.array_equal(s1[0][1], s2[0][1]) and np.array_equal(s1[0][0], s2[0][0])
    plain = FolderSequence(items, classes, 8, batch_size=4)
    assert list(plain[0][1]) == [label for _, label in items[:4]]


def test_memmap_cache_is_reused(colour_items, tmp_path, monkeypatch):
    items, classes = colour_items
    calls = []

    def counting(path):
        calls.append(path)
        return folders.load_image(path)

    monkeypatch.setattr(loader, "load_image", counting)
    cache = tmp_path / "cache"
    first = FolderSequence(items, classes, 12, batch_size=4, shuffle=True, cache=cache)
    assert first.cache_path.parent == cache and first.cached_count == 0
    batches = [first[i] for i in range(len(first))]
    assert len(calls) == len(items) and first.cached_count == len(items)
    first.on_epoch_end()
    epoch2 = np.concatenate([first[i][1] for i in range(len(first))])
    assert sorted(epoch2) == sorted(np.concatenate([y for _, y in batches]))
    assert len(calls) == len(items)  # epoch 2 reads the cache

    second = FolderSequence(items, classes, 12, batch_size=4, shuffle=True, cache=cache)
    assert second.cache_path == first.cache_path and second.fill_cache() == 0
    again = [second[i] for i in range(len(second))]
    assert len(calls) == len(items)  # a new run decodes nothing
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)

    uncached = FolderSequence(items, classes, 12, batch_size=4, shuffle=True)
    assert all(np.array_equal(uncached[i][0], batches[i][0]) for i in range(3))
    calls.clear()
    other_size = FolderSequence(items, classes, 10, batch_size=4, shuffle=True, cache=cache)
    part = other_size[1]  # an interrupted first epoch leaves a partly filled cache
    progress = []
    assert other_size.fill_cache(progress=lambda d, t: progress.append((d, t))) == len(items) - 4
    assert other_size.cache_path != first.cache_path and progress[-1] == (7, 7)
    assert len(calls) == len(items)
    # Worker processes get a pickled copy that maps the same file instead of a frozen array.
    clone = pickle.loads(pickle.dumps(other_size))
    assert np.array_equal(clone[1][0], part[0]) and len(calls) == len(items)


def test_cache_key_follows_file_changes(colour_items, tmp_path):
    items, classes = colour_items
    paths = [p for p, _ in items]
    key = loader.cache_key(paths, (12, 12))
    assert key == loader.cache_key(paths, (12, 12)) != loader.cache_key(paths, (12, 13))
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # generated test file
    assert loader.cache_key(paths, (12, 12)) != key


@pytest.mark.backends
def test_tiny_cnn_trains_through_folder_sequence(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    root = class_tree(tmp_path / "d", {"blue": 16, "red": 16})
    ds = scan_dataset(root, val_split=0.25)
    seqs = make_sequences(ds, 24, batch_size=4, cache=tmp_path / "cache", workers=2)
    inputs = keras.Input((24, 24, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        seqs["train"], validation_data=seqs["validation"], epochs=2, shuffle=False, verbose=0
    )
    loss = history.history["loss"]
    assert len(loss) == 2 and loss[1] < loss[0]
    assert seqs["train"].epoch >= 2 and seqs["train"].cached_count == 24
