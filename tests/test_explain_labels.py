"""What explain's labels say, wherever a map is shown (review of f27913b).

Before: a video with ``--method eigencam --class goldfish`` labelled every frame "top class
goldfish"; ``--compare --class X`` ran eigencam against X and could gold it; a long label was
cut at a 224 px picture's edge (class and probability lost); the API took eigencam with a
class and said nothing of a map that is shape only or about no class; `kerascope.explain`'s
pictures did not name their method; 0.00996 printed "1.0%" yet was called "under 1%".
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kerascope.cam import overlay as ov
from kerascope.cam.compare import Comparison, MethodScore
from kerascope.cam.faithfulness import Faithfulness
from kerascope.cam.labels import picture_label
from kerascope.cli import main


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_video_refuses_a_class_for_a_class_independent_method(tmp_path, capsys, tiny_clf):
    from kerascope.video import explain_video

    missing = tmp_path / "none.mp4"  # never read: the check comes first
    args = ["video", str(missing), "-o", str(tmp_path / "o.mp4"), "--method", "eigencam"]
    assert main([*args, "--class", "goldfish"]) == 2
    assert "--class: eigencam is class-independent" in _one_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="eigencam is class-independent"):
        explain_video(missing, tmp_path / "o.mp4", clf=tiny_clf, method="eigencam", target=1)


def _score(value: float) -> Faithfulness:
    return Faithfulness(0, 0.9, deletion=value, insertion=0.5, drop=0.5, increase=False)


def test_a_class_independent_method_is_never_gold():
    """compare_methods(chelsea, [gradcam, eigencam, hirescam, ablationcam]) gave best: eigencam."""
    rows = [
        MethodScore("eigencam", faithfulness=_score(0.05), class_independent=True),
        MethodScore("gradcam", faithfulness=_score(0.10)),
    ]
    comparison = Comparison("x", 0, "cat", 0.9, "deletion", rows, reference=MethodScore(
        "random map", faithfulness=_score(0.30)))  # fmt: skip
    comparison.judge()
    assert comparison.ranking()[0].method == "eigencam"  # still ranked, with its mark
    assert comparison.best().method == "gradcam"


def test_compare_with_a_class_skips_class_independent_methods(tiny_clf):
    from kerascope.cam.compare import compare_methods

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    c = compare_methods(image, None, tiny_clf, methods=["gradcam", "eigencam"], target=1,
                        metric="deletion", steps=4)  # fmt: skip
    rows = {m.method: m for m in c.methods}
    assert rows["gradcam"].ok and "eigencam" not in c.maps
    assert "not class-specific" in rows["eigencam"].skipped
    assert "--class" in rows["eigencam"].skipped
    assert "eigencam" in compare_methods(image, None, tiny_clf, methods=["eigencam"],
                                         metric="deletion", steps=4).maps  # fmt: skip


LABELS = [
    picture_label("Egyptian_cat", 0.724, "eigencam"),
    picture_label("goldfish", 0.00003, "gradcam"),
    picture_label("Egyptian_cat", 0.724, "gradcam"),
    picture_label("Egyptian_cat", 0.724, "eigencam") + " - the model saw the outlined centre",
]


@pytest.mark.parametrize("label", LABELS)
def test_a_label_fits_a_small_pictures_width(label):
    """224x149 (side by side: 448 px): "...not class-specific (top class Eg" was cut there."""
    photo = np.full((149, 224, 3), 90, np.uint8)
    bar = ov.bar_height(149)
    for drawn, width in ((ov.side_by_side(photo, photo, label), 448),
                         (ov.label_frame(photo, label), 224)):  # fmt: skip
        ink = drawn[:bar].max(axis=2) > 200  # white text; the photo is grey 90 (45 darkened)
        columns = np.flatnonzero(ink.any(axis=0))
        assert columns.size and columns[-1] < width - 3, (label, width, columns[-1])
        assert ink[0].sum() == 0 and ink[-1].sum() == 0  # nothing cut at the top or bottom
    side = ov.side_by_side_image(Image.fromarray(photo), Image.fromarray(photo), label)
    assert np.array_equal(np.asarray(side), ov.side_by_side(photo, photo, label))


def test_an_explanation_knows_its_method_and_its_picture_says_it(tiny_clf, tmp_path):
    import kerascope

    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    e = kerascope.explain(image, model=tiny_clf, method="eigencam")
    assert e.method == "eigencam"
    e.save(tmp_path / "x.png", image)
    with Image.open(tmp_path / "x.png") as img:
        drawn = np.asarray(img.convert("RGB")).astype(int)
    said = picture_label(e.class_name, e.probability, "eigencam")
    assert "not class-specific" in said
    bar = ov.bar_height(48)
    new = ov.side_by_side(image, image, said)[:bar]
    old = ov.side_by_side(image, image, picture_label(e.class_name, e.probability))[:bar]
    assert np.abs(drawn[:bar] - new).mean() < np.abs(drawn[:bar] - old).mean() / 3


def test_the_api_refuses_a_class_for_eigencam_and_labels_its_results(tiny_cam_file):
    from fastapi.testclient import TestClient

    from kerascope.serve.app import create_app
    from kerascope.serve.served import load_served

    path = tiny_cam_file
    data = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(data, "PNG")
    upload = [("file", ("grey.png", data.getvalue()))]
    with TestClient(create_app(load_served([str(path)]))) as client:
        details = client.get("/v1/models").json()["models"][0]["method_details"]
        free = {d["name"] for d in details if d["class_independent"]}
        assert free == {"eigencam"}
        refused = client.post("/v1/explain?method=eigencam&class=1", files=upload)
        assert refused.status_code == 400
        assert "eigencam is class-independent" in refused.json()["error"]
        for method, says in (("eigencam", "not class-specific"), ("gradcam", "(gradcam)")):
            r = client.post(f"/v1/explain?method={method}", files=upload)
            assert r.status_code == 200, r.text
            row = r.json()["results"][0]
            assert row["label"] == picture_label(row["class_name"], row["probability"], method)
            assert says in row["label"] and row["method"] == method
            assert row["class_specific"] is (method != "eigencam")  # JSON: said as data too
        schema = client.get("/v1/openapi.json").json()["components"]["schemas"]["ExplainResult"]
        field = schema["properties"]["class_specific"]  # documented, not only sent
        assert "eigencam" in field["description"] and "boolean" in str(field)


def test_the_explain_schema_documents_every_field_the_api_sends():
    """ExplainResult lists each field of `Explanation` but the arrays (before: class_specific,
    sent by the API, was missing from its schema)."""
    import dataclasses

    from kerascope.cam.explanation import Explanation
    from kerascope.serve.schemas import ExplainResult

    sent = {f.name for f in dataclasses.fields(Explanation)} - {"heatmap", "model_map"}
    assert sent <= set(ExplainResult.model_fields)


def test_batch_explain_says_which_maps_follow_no_class(tmp_path, pictures, tiny_cam_file):
    """The Parquet index has a class_specific column, false for eigencam's rows (whose name is
    the top class, which the map is not about), true for gradcam's."""
    pq = pytest.importorskip("pyarrow.parquet")
    from kerascope.scale import run_batch
    from kerascope.scale.work import EXPLAIN_COLUMNS

    model = tiny_cam_file
    assert "class_specific" in EXPLAIN_COLUMNS
    for method in ("eigencam", "gradcam"):
        out = tmp_path / method
        report = run_batch("explain", [str(pictures)], out, model=str(model), method=method)
        table = pq.read_table(out / "index")
        assert report.errors == 0 and table.schema.field("class_specific").type == "bool"
        assert table.column("class_specific").to_pylist() == [method != "eigencam"] * 5


def test_an_empty_map_never_beats_the_random_reference():
    rows = [MethodScore("gradcam", faithfulness=_score(0.10), empty=True)]
    comparison = Comparison("x", 0, "cat", 0.9, "deletion", rows, reference=MethodScore(
        "random map", faithfulness=_score(0.30)))  # fmt: skip
    comparison.judge()
    assert rows[0].beats_random is False and "no better than a random map" in rows[0].marks()
