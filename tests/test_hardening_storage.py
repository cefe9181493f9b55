"""Nothing lost, nothing wrong served: features on a full disk, the weights cache, explain and
video outputs (names, atomic writes), symbolic link loops.

Full disks are real (a small tmpfs from `tests.fulldisk`); where this process may not mount
one, the in-process cases inject ENOSPC instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fulldisk import small_disk

LITE0 = "efficientnet_lite0"


def _leave_free(folder: Path, free: int) -> None:
    """Use up a tmpfs but ``free`` bytes, so a write fails part-way through the job."""
    st = os.statvfs(folder)
    spare = st.f_bavail * st.f_frsize - free
    with open(folder / ".filler", "wb") as f:
        f.write(b"\0" * max(0, spare))


@pytest.fixture(scope="module")
def noise_dataset(tmp_path_factory) -> Path:
    """Two classes of 64 px noise, 10 train + 10 validation images each (40 rows)."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(10):
                pixels = rng.integers(0, 256, (64, 64, 3), np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg")
    return root


# -- features on a full disk ---------------------------------------------------------------


@pytest.mark.slow
def test_features_on_a_full_disk_stop_with_one_line_and_resume_once_freed(
    noise_dataset, tmp_path, capsys
):
    import kerascope.bottleneck as kf
    from kerascope.files import OutputError

    small = dict(image_size=64)  # the rows are pooled (1280 floats) at any size: 64 px is cheap
    reference = kf.extract_features(noise_dataset, [LITE0], output=tmp_path / "ref.h5", **small)
    with small_disk(4 << 20) as disk:
        if not disk.tmpfs:
            pytest.skip("needs a tmpfs (run as root)")
        out = disk.folder / "features.h5"
        _leave_free(disk.folder, 96 * 1024)  # 40 rows x 5 KB do not fit
        with pytest.raises(OutputError) as caught:
            kf.extract_features(noise_dataset, [LITE0], output=out, batch_size=8, **small)
        message = str(caught.value)
        assert "\n" not in message and str(out) in message and "no space left" in message
        assert "Traceback" not in capsys.readouterr().err  # h5py's own noise is kept quiet
        assert not out.exists(), "no final file after a failed write"
        assert not kf.partial_path(out).exists(), "a half-written work file is never resumed"
        with pytest.raises(kf.FeatureCacheError):
            kf.FeatureStore(out)

        disk.free()
        store = kf.extract_features(noise_dataset, [LITE0], output=out, batch_size=8, **small)
        got = store.load(LITE0, **small)
        assert store.info(store.keys()[0])["complete"]
        np.testing.assert_allclose(got.features, reference.load(LITE0, **small).features,
                                   atol=1e-5)  # fmt: skip


def test_features_completion_mark_only_after_verified_rows(noise_dataset, tmp_path, monkeypatch):
    """A check that reads back fewer rows than written refuses to mark or rename the file."""
    import kerascope.bottleneck as kf
    from kerascope.bottleneck import groups as groups_mod
    from kerascope.files import OutputError

    monkeypatch.setattr(
        groups_mod, "_compute", lambda f, g, spec, run, rows, todo, *a: 0
    )  # a write that "succeeded" but left every row missing
    monkeypatch.setattr(groups_mod, "forward_for", lambda spec: (None, (4,)))
    out = tmp_path / "f.h5"
    with pytest.raises(OutputError, match="holds 0/40 rows"):
        kf.extract_features(noise_dataset, [LITE0], output=out)
    assert not out.exists()


# -- the weights cache -----------------------------------------------------------------------


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _port_lite0() -> Path:
    from kerascope.zoo import registry, weights

    return weights.resolve(registry.get(LITE0))


def test_port_records_size_and_sha256_beside_the_file(private_cache):
    import hashlib

    from kerascope.zoo.weights import cache_problem, checksum_file

    path = _port_lite0()
    recorded = json.loads(checksum_file(path).read_text())
    assert recorded == {
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert cache_problem(path) is None
    assert not [p for p in private_cache.iterdir() if p.name.endswith(".partial")]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100_000])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _alter(path: Path) -> None:
    """A few changed values, same size: only the hash can tell."""
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64, 4):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _unrecorded(path: Path) -> None:
    from kerascope.zoo.weights import checksum_file

    checksum_file(path).unlink()


@pytest.mark.parametrize("damage", [_truncate, _empty, _alter, _unrecorded])
def test_damaged_or_unrecorded_cache_is_ported_again_with_one_line(
    private_cache, damage, caplog, chelsea
):
    """The zoo reports it as one warning on its logger (the command prints it as a note)."""
    from kerascope.zoo.models import build
    from kerascope.zoo.weights import cache_problem

    path = _port_lite0()
    good = path.read_bytes()
    damage(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        model = build(LITE0)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("kerascope")]
    assert len(said) == 1 and str(path) in said[0] and "porting them again" in said[0]
    assert "\n" not in said[0]
    assert path.read_bytes() == good and cache_problem(path) is None
    assert model.count_params() > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        assert _port_lite0() == path  # now intact: silent (the check build makes, no rebuild)
    assert not [r for r in caplog.records if r.name.startswith("kerascope")]


def test_unrecorded_cache_without_its_package_is_trusted_and_recorded(private_cache, monkeypatch):
    from kerascope.zoo import registry, weights

    path = _port_lite0()
    _unrecorded(path)
    monkeypatch.setattr(weights, "package_file", lambda spec: None)
    assert weights.resolve(registry.get(LITE0)) == path
    assert weights.cache_problem(path) is None


def test_damaged_cache_without_its_package_is_one_clear_error(private_cache, monkeypatch):
    from kerascope.zoo import registry, weights

    path = _port_lite0()
    _truncate(path)
    monkeypatch.setattr(weights, "package_file", lambda spec: None)
    with pytest.raises(weights.WeightsError, match="are damaged: it is 100,000 bytes") as caught:
        weights.resolve(registry.get(LITE0))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def lite1_weights() -> Path:
    """Lite1's ported weights from the session's cache: ported once, not once per case."""
    from kerascope.zoo import registry, weights

    return weights.resolve(registry.get("efficientnet_lite1"))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda good, f: f.write_bytes(good.read_bytes()[:100_000]), "truncated"),
        (lambda good, f: f.write_bytes(b""), "not a Keras weights file"),
        (lambda good, f: shutil.copyfile(good, f), "belongs to another model"),
    ],
)
def test_bad_explicit_weights_file_is_one_line_naming_file_and_model(
    lite1_weights, private_cache, tmp_path, make, reason
):
    from kerascope.zoo import weights
    from kerascope.zoo.models import build

    given = tmp_path / "mine.weights.h5"
    make(lite1_weights, given)
    model = "efficientnet_lite1" if reason != "belongs to another model" else LITE0
    with pytest.raises(weights.WeightsError) as caught:
        build(model, weights=given)
    message = str(caught.value)
    assert "\n" not in message and f"'{given}'" in message and f"'{model}'" in message
    assert reason in message


# -- explain: unique output names ----------------------------------------------------------


def test_output_names_keep_sub_folders_then_extensions_then_count(tmp_path):
    from kerascope.cam.outputs import output_names
    from kerascope.sources import Missing

    for rel in ("a/pic.jpg", "b/pic.png", "b/pic.jpg", "b/Pic.JPG", "c/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    paths = [str(tmp_path / r) for r in ("a/pic.jpg", "b/pic.png", "b/pic.jpg", "b/Pic.JPG")]
    names = output_names([*paths, Missing("gone.jpg")])
    assert names == [
        "a/pic-output.jpg",
        "b/pic.png-output.jpg",
        "b/pic.jpg-output.jpg",
        "b/Pic.JPG-2-output.jpg",  # meets pic.jpg on a case-insensitive disk
        None,
    ]
    assert output_names([str(tmp_path / "c/x.png")]) == ["x-output.jpg"]  # one folder: as before
    arrays = [np.zeros((4, 4, 3), np.uint8)] * 2
    assert output_names(arrays) == ["image-0-output.jpg", "image-1-output.jpg"]
    same = [str(tmp_path / "b/pic.jpg"), str(tmp_path / "b/../b/pic.jpg")]
    assert len(set(output_names(same))) == 2  # never the same name twice in one run
    # POSIX keeps a leading // through abspath: the name still lands inside the output folder
    assert output_names(["//a/x.jpg", "/b/y.jpg"]) == ["a/x-output.jpg", "b/y-output.jpg"]
    assert output_names(["//x.jpg"]) == ["x-output.jpg"]


def test_explain_same_stem_in_two_folders_writes_every_picture(tmp_path, lite0, chelsea):
    from kerascope.cam.save import save_explanations

    # at least 224 px: drawn at their own size (a smaller picture is drawn enlarged)
    sizes = {"a/pic.jpg": (320, 240), "b/pic.png": (300, 230), "b/pic.jpg": (260, 225)}
    for rel, size in sizes.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(chelsea).resize(size).save(tmp_path / rel)
    out = tmp_path / "D"
    saved = save_explanations([str(tmp_path / r) for r in sizes], out, lite0)
    written = [s.path for s in saved]
    assert all(s.ok for s in saved) and len(set(written)) == 3
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == sorted(
        str(p.relative_to(out)) for p in written
    )
    for s, (width, _) in zip(saved, sizes.values(), strict=True):
        with Image.open(s.path) as im:
            assert im.width == 2 * width  # each picture is its own input's


# -- symbolic link loops: one reason everywhere ----------------------------------------------


@pytest.fixture
def loops(tmp_path, photo_paths) -> Path:
    folder = tmp_path / "loops"
    folder.mkdir()
    shutil.copy(photo_paths["chelsea"], folder / "cat.png")
    os.symlink("self.jpg", folder / "self.jpg")
    os.symlink("b.jpg", folder / "a.jpg")
    os.symlink("a.jpg", folder / "b.jpg")
    return folder


def test_file_problem_names_a_symlink_loop(loops):
    from kerascope.images import LINK_LOOP, ImageError, file_problem, load_image

    assert file_problem(str(loops / "self.jpg"), "an image file") == LINK_LOOP
    with pytest.raises(ImageError, match="symbolic link loop"):
        load_image(loops / "a.jpg")


def test_classify_reports_symlink_loops_given_walked_or_globbed(loops, capsys, shared_zoo_models):
    from kerascope.cli import main

    for inputs in ([str(loops / "self.jpg"), str(loops / "cat.png")], [str(loops)],
                   [str(loops / "*")]):  # fmt: skip
        code = main(["classify", *inputs, "--format", "json", "-k", "1"])
        rows = json.loads(capsys.readouterr().out)
        rows = rows if isinstance(rows, list) else rows["results"]
        errors = {Path(r["image"]).name: r["error"] for r in rows if r.get("error")}
        assert code == 1
        assert "self.jpg" in errors and all("symbolic link loop" in e for e in errors.values())
        assert len(rows) - len(errors) == 1  # the cat is still classified


def test_loops_without_an_image_suffix_are_reported_as_loops_not_skipped(
    loops, capsys, shared_zoo_models
):
    """A link loop has no kind: walking a folder or a glob must not count it as a non-image."""
    from kerascope.cli import main
    from kerascope.images import expand_inputs

    os.symlink("y", loops / "x")
    os.symlink("x", loops / "y")
    os.symlink("me", loops / "me")
    (loops / "notes.txt").write_text("a real non-image file")
    found = expand_inputs([str(loops)])
    assert sorted(Path(p).name for p in found.paths) == [
        "a.jpg", "b.jpg", "cat.png", "me", "self.jpg", "x", "y"]  # fmt: skip
    assert [Path(p).name for p in found.skipped] == ["notes.txt"]
    for inputs in ([str(loops)], [str(loops / "*")]):
        code = main(["classify", *inputs, "--format", "json", "-k", "1"])
        captured = capsys.readouterr()
        rows = json.loads(captured.out)
        errors = {Path(r["image"]).name: r["error"] for r in rows if r.get("error")}
        assert code == 1
        assert set(errors) == {"a.jpg", "b.jpg", "self.jpg", "me", "x", "y"}
        assert all(e.startswith("symbolic link loop") for e in errors.values())
        assert "skipped 1 non-image file(s): " in captured.err and "notes.txt" in captured.err


def test_explain_reports_symlink_loops(loops, lite0, tmp_path):
    from kerascope.cam.save import save_explanations

    saved = save_explanations([str(loops / "a.jpg"), str(loops / "cat.png")], tmp_path / "o", lite0)
    assert [s.ok for s in saved] == [False, True]
    assert saved[0].error.startswith("symbolic link loop")


# -- large images: reduced decoding, a pixel budget ----------------------------------------

_DECODE_RSS = r"""
import json, resource, sys
from kerascope.images import load_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
a = load_image(sys.argv[1], min_size=(224, 224))
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"grew_mb": grew, "shape": list(a.shape)}))
"""


def test_model_size_decode_of_a_large_jpeg_never_holds_the_full_image(tmp_path):
    import subprocess
    import sys

    from kerascope.images import load_image, resize

    # Written channel by channel from broadcast uint16 ramps: np.mgrid's int64 planes and their
    # stack moved ~3 GB and took most of this test's time (34 s of 35 on the shared machine).
    x, y = np.arange(8000, dtype=np.uint16)[None, :], np.arange(6000, dtype=np.uint16)[:, None]
    pixels = np.empty((6000, 8000, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = x % 256, y % 256, (x + y) // 64 % 256
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=80)  # 48 MP: 144 MB as RGB
    del pixels
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", _DECODE_RSS, str(tmp_path / "big.jpg")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["grew_mb"] < 60, result  # a full decode grows by ~480 MB (10 bytes/pixel)
    assert min(result["shape"][:2]) >= 448  # still at least twice the model input
    small = load_image(tmp_path / "big.jpg", min_size=(224, 224))
    full = load_image(tmp_path / "big.jpg")
    diff = np.abs(resize(small, (224, 224)).astype(int) - resize(full, (224, 224)).astype(int))
    assert diff.mean() < 3  # what the model sees is the same picture


def test_pixel_budget_makes_large_decodes_wait_for_each_other():
    import threading

    from kerascope.images import _PixelBudget

    budget = _PixelBudget(100)
    holding, release, entered = threading.Event(), threading.Event(), threading.Event()

    def first():
        with budget.take(80):
            holding.set()
            release.wait(10)

    def second():
        with budget.take(500):  # over the budget: still runs, alone
            entered.set()

    a = threading.Thread(target=first)
    a.start()
    holding.wait(10)
    b = threading.Thread(target=second)
    b.start()
    assert not entered.wait(0.3)  # waits while the first decode holds 80 of 100 pixels
    with budget.take(20):  # a small decode still fits beside the first one
        pass
    release.set()
    assert entered.wait(10)
    a.join(10)
    b.join(10)
    assert budget.used == 0
