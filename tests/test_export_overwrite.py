"""`kerascope export`'s overwrite rule, explain's: an existing output is replaced only with
--overwrite, and a file the export reads (the model, a run's labels.json, --check images) never
is, even with it. Refused in one line, before the model loads."""

from __future__ import annotations

import json
import os

import keras
import pytest

from kerascope.export import ExportError, export_model

from .test_export import run_cli, tiny_model


def test_an_existing_output_is_kept_without_overwrite(tmp_path, monkeypatch, capsys):
    """Explain's rule: before, `export -o old.keras` replaced the file in silence. Refused in
    one line naming it, before the model loads; --overwrite replaces it."""
    clf = tiny_model()
    clf.model.save(tmp_path / "tiny.keras")
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["ant", "bee", "cat"]}))
    out = tmp_path / "out.keras"
    out.write_bytes(b"an earlier export")
    code, err = run_cli(["export", str(tmp_path / "tiny.keras"), "-o", str(out)],
                        monkeypatch, capsys)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"'{out}' already exists; add --overwrite" in err
    assert out.read_bytes() == b"an earlier export"
    with pytest.raises(ExportError, match="already exists"):
        export_model(clf, out)
    assert out.read_bytes() == b"an earlier export"
    code, err = run_cli(["export", str(tmp_path / "tiny.keras"), "-o", str(out), "--overwrite"],
                        monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert keras.saving.load_model(out, compile=False).output_shape == (None, 3)


def test_an_input_is_never_replaced_even_with_overwrite(tmp_path, monkeypatch, capsys):
    """`export run/ -o run/model.keras --overwrite` would replace the model it reads."""
    import kerascope.zoo.models as models

    run = tmp_path / "run"
    run.mkdir()
    tiny_model().model.save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps({"classes": ["ant", "bee", "cat"]}))
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (30, 30), (200, 10, 10)).save(photo)
    before = {p: p.read_bytes() for p in (run / "model.keras", run / "labels.json", photo)}
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    for model, out, extra in ((run, run / "model.keras", []),
                              (run / "model.keras", run / "model.keras", []),
                              (run, photo.with_suffix(".keras"), []),
                              (run, photo, ["--check", str(photo), "-f", "onnx"])):  # fmt: skip
        if out.suffix == ".keras" and out.parent == tmp_path:
            os.symlink(run / "labels.json", out)  # another name for an input
        code, err = run_cli(["export", str(model), "-o", str(out), "--overwrite", *extra],
                            monkeypatch, capsys)  # fmt: skip
        assert code == 2 and "inputs are never replaced" in err, (model, out, err)
    assert {p: p.read_bytes() for p in before} == before


def test_check_takes_folders_and_globs(tmp_path):
    """The new-user walkthrough found `--check data/cat/` refused ("is a directory")."""
    from PIL import Image

    photos = tmp_path / "photos" / "cat"
    photos.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (30, 30), (60 * i, 10, 200)).save(photos / f"{i}.png")
    clf = tiny_model()
    result = export_model(clf, tmp_path / "a.keras", check=[photos.parent])
    assert sorted(result.checked_on) == ["0.png", "1.png", "2.png"]
    result = export_model(clf, tmp_path / "b.keras", check=[str(photos / "[01].png")])
    assert sorted(result.checked_on) == ["0.png", "1.png"]


@pytest.mark.parametrize("name", ["late.keras", "late.onnx"])
def test_an_output_created_during_the_export_is_kept(tmp_path, monkeypatch, name):
    """The output is checked free before the work; a file made at that name meanwhile was then
    replaced by the final rename. Now it is kept, the export says so, and no temp is left."""
    import kerascope.export as export

    clf = tiny_model()
    out = tmp_path / name
    probabilities = export._keras_probabilities

    def meanwhile(model, images):
        out.write_bytes(b"made by someone else")
        return probabilities(model, images)

    monkeypatch.setattr(export, "_keras_probabilities", meanwhile)
    with pytest.raises(OSError, match="created by something else while kerascope was writing"):
        export_model(clf, out)
    assert out.read_bytes() == b"made by someone else"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    out.unlink()
    monkeypatch.setattr(export, "_keras_probabilities", probabilities)
    export_model(clf, out)  # free all along: written, and nothing else left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and out.stat().st_size > 1000


def test_a_link_to_a_new_file_and_a_long_name_are_written(tmp_path):
    """The output free-check placed the new export beside a link and then refused the link
    itself as "created by something else"; a 212-byte name failed as the temp of a temp grew
    past 255 bytes."""
    clf = tiny_model()
    (tmp_path / "real").mkdir()
    link = tmp_path / "out.keras"
    os.symlink("real/target.keras", link)
    export_model(clf, link)
    assert link.is_symlink() and (tmp_path / "real" / "target.keras").stat().st_size > 1000
    long = tmp_path / ("m" * 212 + ".keras")
    export_model(clf, long)
    assert long.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long.name, "out.keras", "real"])
