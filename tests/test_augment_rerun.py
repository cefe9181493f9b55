"""``kerascope augment`` run again into the same folder: the samples an earlier run wrote beyond
the new ``-n`` go (they would pass for part of the new run); nothing else in the folder does."""

from __future__ import annotations

import logging

from PIL import Image

from kerascope.data.preview import augment_preview


def _names(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_smaller_n_removes_the_earlier_runs_extra_samples_only(photo_paths, tmp_path, caplog):
    out = tmp_path / "preview"
    augment_preview(photo_paths["coffee"], n=3, out_dir=out, seed=0, max_side=64)
    augment_preview(photo_paths["chelsea"], n=8, out_dir=out, seed=0, max_side=64)
    # the user's own files, some named exactly as samples are: never touched
    Image.new("RGB", (8, 8)).save(out / "chelsea_9.jpg")  # a JPEG without the mark
    (out / "chelsea_10.jpg").write_bytes(b"not a picture")
    (out / "notes.txt").write_text("mine")
    (out / "chelsea_11.jpg").mkdir()
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        paths = augment_preview(photo_paths["chelsea"], n=4, out_dir=out, seed=0, max_side=64)
    assert [p.name for p in paths] == [f"chelsea_{i}.jpg" for i in range(4)] + ["grid.jpg"]
    assert _names(out) == {f"chelsea_{i}.jpg" for i in range(4)} | {
        "coffee_0.jpg", "coffee_1.jpg", "coffee_2.jpg",  # another picture's samples stay
        "chelsea_9.jpg", "chelsea_10.jpg", "chelsea_11.jpg", "notes.txt", "grid.jpg",
    }  # fmt: skip
    [record] = caplog.records
    assert "removed 4 sample(s) of 'chelsea'" in record.getMessage()


def test_a_run_with_other_padding_replaces_the_whole_earlier_run(photo_paths, tmp_path, caplog):
    out = tmp_path / "preview"
    augment_preview(photo_paths["chelsea"], n=12, out_dir=out, seed=0, max_side=64)
    assert "chelsea_07.jpg" in _names(out)
    augment_preview(photo_paths["chelsea"], n=2, out_dir=out, seed=0, max_side=64)
    assert _names(out) == {"chelsea_0.jpg", "chelsea_1.jpg", "grid.jpg"}
    augment_preview(photo_paths["chelsea"], n=2, out_dir=out, seed=1, max_side=64)
    assert _names(out) == {"chelsea_0.jpg", "chelsea_1.jpg", "grid.jpg"}  # same n: nothing gone


def test_cli_says_what_it_removed(photo_paths, tmp_path, capsys):
    from kerascope.cli import main

    out = tmp_path / "preview"
    image = str(photo_paths["chelsea"])
    assert main(["augment", image, "-n", "8", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["augment", image, "-n", "4", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "removed 4 sample(s) of 'chelsea'" in err and "chelsea_4.jpg" in err
    assert sorted(_names(out)) == ["chelsea_0.jpg", "chelsea_1.jpg", "chelsea_2.jpg",
                                   "chelsea_3.jpg", "grid.jpg"]  # fmt: skip
