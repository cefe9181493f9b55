"""WordNet roll-up: groups of ImageNet classes in classify (--group) and explain (--class cat).

No photo of a dog ships in any installed package (skimage.data has none; every photo-sized
image on the machine was classified with --groups dog,cat: only skimage's horse.png silhouette
came out "dog"), so the dog roll-up is tested on a constructed probability vector.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kerascope.classification import classify, group_top_k
from kerascope.zoo import hierarchy
from kerascope.zoo.hierarchy import Group, GroupError

CATS = {281: "tabby", 282: "tiger_cat", 283: "Persian_cat", 284: "Siamese_cat",
        285: "Egyptian_cat", 286: "cougar", 287: "lynx"}  # fmt: skip
WORDNET = Path("/usr/share/wordnet")  # Debian's wordnet-base, where the script reads WordNet


def test_cat_and_dog_are_the_wordnet_groups():
    cat = hierarchy.resolve_group("cat")
    assert (cat.wnid, cat.name) == ("n02121620", "cat")  # "cat, true cat", not "big cat, cat"
    assert set(cat.classes) == set(CATS)
    dog = hierarchy.resolve_group("Dog")
    assert dog.wnid == "n02084071" and set(dog.classes) == set(range(151, 269))  # 118 breeds
    assert hierarchy.resolve_group("house_cat").classes == (281, 282, 283, 284, 285)
    assert hierarchy.resolve_group("n04524313").name == "vehicle"
    assert 817 in hierarchy.resolve_group("vehicle").classes  # sports car
    assert hierarchy.resolve_group("big cat").classes == (288, 289, 290, 291, 292, 293)


def test_ancestors_of_tabby_go_up_to_entity():
    names = [g.name for g in hierarchy.ancestors(281)]
    assert names[:2] == ["domestic cat", "cat"]
    assert {"feline", "carnivore", "mammal", "animal"} <= set(names)
    assert names[-1] == "entity"


def test_unknown_group_is_one_line_with_close_matches():
    with pytest.raises(GroupError) as err:
        hierarchy.resolve_group("vehicel")
    assert "'vehicle'" in str(err.value) and "\n" not in str(err.value)
    assert "'cat'" in hierarchy.close_matches("kat")  # the larger group first among equals


def test_basic_groups_are_disjoint_but_for_wordnets_double_parents():
    groups = hierarchy.basic_groups()
    names = [g.name for g in groups]
    assert {"cat", "dog", "bird", "car", "fish", "insect", "clothing"} <= set(names)
    seen: dict[int, str] = {}
    doubles = set()
    for g in groups:
        for c in g.classes:
            if c in seen:
                doubles.add((c, seen[c], g.name))
            seen[c] = g.name
    assert doubles == {(656, "car", "truck"), (935, "vegetable", "food")}  # minivan, mashed potato


def test_dog_rolls_up_from_many_small_breeds():
    """40 breeds at 2 % each: no class beats the 10 % tabby, but the group dog does (80 %)."""
    probs = np.full(1000, 0.0, np.float64)
    probs[151:191] = 0.02
    probs[281] = 0.10
    probs[np.r_[0:151, 300:1000]] = 0.10 / 851
    assert probs.sum() == pytest.approx(1.0)
    assert int(probs.argmax()) == 281
    rows, groups = hierarchy.roll_up(probs[None])
    assert rows.sum() == pytest.approx(1.0 + probs[656] + probs[935])  # the two doubles
    top = group_top_k(rows, groups, 3, 0.0)[0]
    assert (top[0].name, top[0].class_id, top[0].index) == ("dog", "n02084071", -1)
    assert top[0].probability == pytest.approx(0.80)
    assert (top[1].name, top[1].probability) == ("cat", pytest.approx(0.10))
    # a class in no group stands for itself, with its own index and Keras name
    rest = [g for g in groups if g.is_class]
    assert rest and all(len(g.classes) == 1 for g in rest)
    teddy = next(g for g in rest if g.classes == (850,))
    assert (teddy.name, teddy.wnid) == ("teddy", "n04399382")


def test_named_groups_rank_only_those():
    probs = np.zeros((1, 1000))
    probs[0, 281], probs[0, 817] = 0.7, 0.3
    groups = hierarchy.resolve_groups("dog, vehicle,cat,cat")
    assert [g.name for g in groups] == ["dog", "vehicle", "cat"]
    rows, columns = hierarchy.roll_up(probs, groups, rest=False)
    top = group_top_k(rows, columns, 5, 0.01)[0]
    assert [(p.name, round(p.probability, 6)) for p in top] == [("cat", 0.7), ("vehicle", 0.3)]


def test_groups_need_imagenet_classes():
    from kerascope.cam.groups import class_or_group
    from kerascope.zoo.models import Classifier

    with pytest.raises(GroupError, match="1000 ImageNet classes"):
        hierarchy.check_imagenet([("0", "cat"), ("1", "dog")], "model 'pets'")
    # a trained model's own class "cat" stays its class: groups are for ImageNet's classes
    pets = Classifier(None, "pets", (32, 32), [("0", "cat"), ("1", "dog")])
    assert class_or_group(pets, "cat") == (pets, "cat")


@pytest.mark.skipif(not (WORDNET / "data.noun").exists(), reason="wordnet-base not installed")
def test_bundled_hierarchy_is_what_the_script_derives():
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_imagenet_hierarchy.py"
    spec = importlib.util.spec_from_file_location("make_imagenet_hierarchy", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bundled = json.loads(module.OUT.read_text(encoding="utf-8"))
    assert module.build(WORDNET) == bundled
    assert len(bundled["synsets"]) == 1860


def test_cli_unknown_group_fails_before_the_model_loads(photo_paths, capsys):
    from kerascope.cli import main

    assert main(["classify", str(photo_paths["chelsea"]), "--groups", "cat,kat"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerascope: error: unknown class or group 'kat'") and "'cat'" in err
    assert "\n" not in err


# --- on the real model (slow: real weights, ~15 s each on 2 shared cores) ---------------------


@pytest.fixture(scope="module")
def chelsea_probs(lite0, chelsea) -> np.ndarray:
    """classify's probability of every class for chelsea."""
    row = np.zeros(1000)
    for p in classify(chelsea, lite0, top=1000)[0].predictions:
        row[p.index] = p.probability
    return row


@pytest.mark.slow
def test_chelsea_is_a_cat_with_the_sum_of_the_cat_classes(lite0, chelsea, chelsea_probs):
    top = classify(chelsea, lite0, top=3, group=True)[0].predictions
    assert (top[0].name, top[0].class_id) == ("cat", "n02121620")
    assert top[0].probability == pytest.approx(chelsea_probs[list(CATS)].sum(), abs=1e-6)
    assert top[0].probability > chelsea_probs.max() + 0.3  # 0.93 where the top class has 0.38
    assert top[1].probability < 0.05
    named = classify(chelsea, lite0, group=["domestic cat", "feline", "dog"])[0].predictions
    assert [p.name for p in named] == ["feline", "domestic cat", "dog"]
    assert named[1].probability == pytest.approx(chelsea_probs[281:286].sum(), abs=1e-6)


def test_cli_classify_group_json(photo_paths, capsys, shared_zoo_models):
    from kerascope.cli import main

    code = main(["classify", str(photo_paths["chelsea"]), "--group", "-k", "2", "-f", "json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert (result[0]["name"], result[0]["class_id"], result[0]["index"]) == (
        "cat", "n02121620", -1)  # fmt: skip


@pytest.mark.slow
def test_explain_cat_is_the_group_with_the_summed_probability(lite0, chelsea):
    from kerascope.cam.explain import explain

    group = explain(chelsea, lite0, target="cat")
    assert (group.class_id, group.class_name) == ("n02121620", "cat")
    members = explain([chelsea] * len(CATS), lite0, target=list(CATS))
    assert [m.class_name for m in members] == list(CATS.values())
    # the same input and pipeline: the group's probability is the sum of its classes'
    assert group.probability == pytest.approx(sum(m.probability for m in members), abs=1e-5)
    assert group.heatmap.shape == chelsea.shape[:2] and group.heatmap.max() == pytest.approx(1)


@pytest.mark.slow
def test_group_of_one_class_gives_that_class_map(lite0, chelsea):
    """The merged logit of one class is its logit: same map (autodiff through the merge vs
    the closed-form gradient of the plain head) and same probability."""
    from kerascope.cam.explain import explain
    from kerascope.cam.groups import group_classifier

    alone = group_classifier(lite0, Group("n02123045", "tabby alone", (281,)))
    merged = explain(chelsea, alone, target=0)
    plain = explain(chelsea, lite0, target=281)
    assert merged.class_name == "tabby alone"
    assert merged.probability == pytest.approx(plain.probability, abs=1e-5)
    np.testing.assert_allclose(merged.heatmap, plain.heatmap, atol=2e-3)


@pytest.mark.slow
def test_explain_names_unknown_classes_and_groups(lite0, chelsea):
    from kerascope.cam.explain import explain
    from kerascope.cam.groups import class_or_group

    with pytest.raises(GroupError, match="did you mean 'cat'"):
        explain(chelsea, lite0, target="kat")
    with pytest.raises(ValueError, match="ambiguous"):  # a class name of two classes stays so
        class_or_group(lite0, "crane")
    assert class_or_group(lite0, "Tinca tinca") == (lite0, 0)  # another lemma of the tench
    assert class_or_group(lite0, "tabby") == (lite0, "tabby")


@pytest.mark.slow
def test_merged_model_runs_on_the_cpu_engine_with_the_summed_probability(lite0, chelsea):
    """The merge layer converts to ONNX (the gradient-free methods' CPU engine) and computes
    the group's summed probability; two groups never share a cached graph."""
    from kerascope.cam.groups import group_classifier
    from kerascope.images import fit
    from kerascope.inference import compiled, engine_name
    from kerascope.onnx_export.cache import model_key

    cat = group_classifier(lite0, hierarchy.resolve_group("cat"))
    dog = group_classifier(lite0, hierarchy.resolve_group("dog"))
    assert engine_name(cat.model) == "onnx"
    assert model_key(cat.model) != model_key(dog.model)
    pixels = np.stack([fit(chelsea, lite0.input_size), fit(chelsea[::-1], lite0.input_size)])
    plain = np.asarray(compiled(lite0.model)(pixels), np.float64)
    merged = np.asarray(compiled(cat.model)(pixels), np.float64)
    keras_merged = np.asarray(cat.model([pixels.astype("float32")]), np.float64)
    np.testing.assert_allclose(merged[:, 0], plain[:, list(CATS)].sum(1), atol=1e-5)
    np.testing.assert_allclose(merged, keras_merged, atol=1e-5)
    others = [c for c in range(1000) if c not in CATS]
    np.testing.assert_allclose(merged[:, 1:], plain[:, others], atol=1e-5)


@pytest.mark.slow
def test_batch_explain_takes_a_group(lite0, photo_paths, tmp_path, shared_zoo_models):
    import pyarrow.parquet as pq

    from kerascope.cam.explain import explain
    from kerascope.scale.run import run_batch

    path = str(photo_paths["chelsea"])
    report = run_batch("explain", [path], tmp_path / "out", model="efficientnet_lite0",
                       target="cat")  # fmt: skip
    row = pq.read_table(tmp_path / "out" / "index").to_pandas().iloc[0]
    assert report.errors == 0 and (row["class_id"], row["name"]) == ("n02121620", "cat")
    assert row["probability"] == pytest.approx(explain(path, lite0, target="cat").probability)


@pytest.mark.slow
def test_compare_and_video_take_a_group(lite0, chelsea, photo_paths, tmp_path):
    from kerascope.cam.compare import compare_methods
    from kerascope.cam.explain import explain
    from kerascope.video import explain_video
    from tests.test_video import clip_frames, write_clip

    comparison = compare_methods(chelsea, None, lite0, methods=["gradcam"], target="cat")
    assert (comparison.class_name, comparison.class_index) == ("cat", 0)
    alone = explain(chelsea, lite0, target="cat")
    assert comparison.probability == pytest.approx(alone.probability, abs=1e-5)
    with pytest.raises(GroupError, match="did you mean 'cat'"):
        compare_methods(chelsea, None, lite0, methods=["gradcam"], target="kat")
    frames = clip_frames(photo_paths)[:4]
    clip = write_clip(tmp_path / "cat.mp4", frames)
    report = explain_video(clip, tmp_path / "out.mp4", clf=lite0, target="cat", batch_size=4)
    assert report.frames == 4
