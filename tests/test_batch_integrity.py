"""`kerascope batch` in this process (no Ray): outputs it must not take over, a read-only disk,
damaged shards, and explain picture names that are distinct by construction (issue 23)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pq = pytest.importorskip("pyarrow.parquet")

from kerascope.cli import main  # noqa: E402
from kerascope.scale import run_batch  # noqa: E402
from kerascope.scale.plan import explain_names  # noqa: E402

from .readonly import read_only  # noqa: E402


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("kerascope: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _table(folder: Path):
    return pq.read_table(folder).to_pandas().sort_values(["image", "rank"]).reset_index(drop=True)


def test_an_output_that_is_a_file_is_refused_in_one_line(lenet, pictures, tmp_path, capsys):
    """Before: FileExistsError traceback from the shard folder's mkdir."""
    taken = tmp_path / "results.csv"
    taken.write_text("precious\n")
    for out in (taken, taken / "sub"):
        assert main(["batch", "classify", str(pictures), "-m", str(lenet), "-o", str(out)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert str(taken) in line and ("is a file" in line or "under a file" in line)
    assert taken.read_text() == "precious\n"


def test_batch_on_a_read_only_file_system_is_one_line_and_a_finished_job_still_reads(
    lenet, pictures, capsys
):
    """Before: OSError (EROFS) traceback from the output folder's mkdir."""

    def fill(folder: Path) -> None:
        run_batch("classify", [str(pictures)], folder / "done", model=str(lenet), block_size=2)

    with read_only(fill) as disk:
        new = disk / "new"
        assert main(["batch", "classify", str(pictures), "-m", str(lenet), "-o", str(new)]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"'{new}'" in line and ("read-only" in line or "permission denied" in line)
        done = disk / "done"
        assert main(["batch", "classify", str(pictures), "-m", str(lenet), "-o", str(done),
                     "--block-size", "2"]) == 0  # fmt: skip
        assert "(3 done before)" in capsys.readouterr().err
        assert len(_table(done)) == 5 * 2  # top 2 of the two classes, nothing rewritten


def test_a_truncated_shard_is_computed_again(lenet, pictures, tmp_path, capsys):
    """Before: every re-run failed with pyarrow's ArrowInvalid traceback (the shard's name
    existed, so its block was taken as done)."""
    out = tmp_path / "out"
    run_batch("classify", [str(pictures)], out, model=str(lenet), block_size=2, top=1)
    want = _table(out)
    shards = sorted(out.glob("part-*.parquet"))
    assert len(shards) == 3
    kept = {p: p.stat().st_mtime_ns for p in shards[1:]}
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # a copy cut short
    args = ["batch", "classify", str(pictures), "-m", str(lenet), "-o", str(out), "--top", "1",
            "--block-size", "2"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"1 damaged shard(s) found and computed again: {shards[0].name}" in err
    assert "(2 done before)" in err
    got = _table(out)
    assert list(got["image"]) == list(want["image"]) and list(got["name"]) == list(want["name"])
    np.testing.assert_allclose(got["probability"], want["probability"], atol=1e-6)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # only the damaged one
    shards[1].write_text("not parquet at all")
    assert main(args) == 0 and "computed again" in capsys.readouterr().err
    assert len(_table(out)) == 5


def test_explain_picture_names_are_distinct_by_construction(tmp_path):
    """Before: ``a/pic.jpg`` and ``b/pic.jpg`` got ``pic-<hash>-output.jpg`` names, and the
    hash of ``a/pic.jpg`` as a file name (``c/pic-<hash>.jpg``) got the same picture."""
    a, b = str(tmp_path / "a" / "pic.jpg"), str(tmp_path / "b" / "pic.jpg")
    h = hashlib.sha1(a.encode()).hexdigest()[:8]
    c = str(tmp_path / "c" / f"pic-{h}.jpg")
    d = str(tmp_path / "d" / f"pic-{h}-2.jpg")  # the name a tie would fall back to
    for paths in ([a, b, c], [a, b, c, d], [a, c], [c, b, a]):
        names = explain_names(paths)
        assert len(set(names.values())) == len(paths), names
        assert all(n.endswith("-output.jpg") for n in names.values())
        assert names == explain_names(list(reversed(paths)))  # the same on a resume
    assert explain_names([a, c])[a] == "pic-output.jpg"  # no tie: the plain explain name


@pytest.mark.slow
def test_batch_explain_writes_one_picture_per_input_when_names_collide(lenet, skimage_data,
                                                                       tmp_path):  # fmt: skip
    src = skimage_data / "chelsea.png"
    inputs = [tmp_path / "in" / "a" / "pic.jpg", tmp_path / "in" / "b" / "pic.jpg"]
    h = hashlib.sha1(os.path.abspath(inputs[0]).encode()).hexdigest()[:8]
    inputs.append(tmp_path / "in" / "c" / f"pic-{h}.jpg")
    for i, path in enumerate(inputs):
        path.parent.mkdir(parents=True)
        with Image.open(src) as img:  # three different pictures, each its own size
            img.convert("RGB").resize((120 + 20 * i, 100)).save(path)
    out = tmp_path / "out"
    report = run_batch("explain", [str(p) for p in inputs], out, model=str(lenet))
    index = pq.read_table(out / "index").to_pandas()
    assert report.inputs == 3 and report.errors == 0 and index["output"].nunique() == 3
    pictures = sorted(out.glob("*-output.jpg"))
    assert len(pictures) == 3 and {p.name for p in pictures} == set(index["output"])
    widths = {p.name: Image.open(p).size[0] for p in pictures}
    inputs_by_width = sorted(index["image"], key=lambda p: Image.open(p).size[0])
    pictures_by_width = sorted(index["image"], key=lambda p: widths[
        index.set_index("image").loc[p, "output"]])  # fmt: skip
    assert inputs_by_width == pictures_by_width  # each picture is drawn from its own input
    shutil.rmtree(out)


def test_batch_explain_draws_each_picture_from_the_models_decode(lenet, pictures, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """Each file is read once: its picture is drawn from the decode the model's pass made (the
    whole picture, within the memory bound), byte for byte the picture of a second decode."""
    import kerascope.cam.save as save
    import kerascope.sources as sources

    opened = []
    load_image = save.load_image
    monkeypatch.setattr(save, "load_image", lambda p, **k: opened.append(p) or load_image(p, **k))
    once = run_batch("explain", [str(pictures)], tmp_path / "once", model=str(lenet))
    assert once.errors == 0 and opened == []
    monkeypatch.setattr(sources, "KEPT_BYTES", 0)  # over budget: each file read again
    twice = run_batch("explain", [str(pictures)], tmp_path / "twice", model=str(lenet))
    assert twice.errors == 0 and len(opened) == 5
    drawn = sorted((tmp_path / "once").glob("*-output.jpg"))
    assert len(drawn) == 5
    for picture in drawn:
        assert picture.read_bytes() == (tmp_path / "twice" / picture.name).read_bytes()


def test_the_memory_share_counts_the_actors_one_machine_can_hold():
    """Each actor takes a GPU (or a CPU): 8 one-GPU machines hold one actor each, not 8."""
    from kerascope.scale.run import actors_per_machine

    gpu_nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}} for _ in range(8)]
    assert actors_per_machine(gpu_nodes, 8, gpus=True) == 1
    cpu_nodes = [{"Alive": alive, "Resources": {"CPU": cpus}}
                 for alive, cpus in ((True, 2.0), (True, 4.0), (False, 64.0))]  # fmt: skip
    assert actors_per_machine(cpu_nodes, 6, gpus=False) == 4  # the largest live machine
    assert actors_per_machine(cpu_nodes, 3, gpus=False) == 3  # no more than the job has
    assert actors_per_machine([], 5, gpus=False) == 5  # nothing known: the whole job
