"""The functional API loads a named model once per process (`kerascope.zoo.shared`).

Before, every ``kerascope.classify("a.jpg")`` built Lite0 and compiled its forward again (a
GPU review measured ~5 s per call against ~0.25 s of work for 2,048 images).
"""

from __future__ import annotations

import os

import pytest

import kerascope
from kerascope.inference import compiled
from kerascope.testing import skimage_data
from kerascope.zoo import shared
from kerascope.zoo.models import ModelFileError, load_model
from kerascope.zoo.registry import UnknownModelError


@pytest.fixture
def loads(monkeypatch) -> list:
    """Every load the shared models make, by name (the real loads: ``load_model``)."""
    shared.forget_shared_models()
    seen: list = []

    def counted(name, weights=None):
        seen.append(str(name))
        return load_model(name, weights)

    monkeypatch.setattr(shared, "load_model", counted)
    yield seen
    shared.forget_shared_models()


def test_classify_twice_loads_and_compiles_the_model_once(loads):
    cat = str(skimage_data() / "chelsea.png")
    first = kerascope.classify(cat, top=1)
    second = kerascope.classify(cat, top=1)
    assert loads == ["efficientnet_lite0"]
    top = [r.predictions[0] for r in (first, second) for r in r]
    assert top[0] == top[1] and 281 <= top[0].index <= 285, top  # a domestic cat
    clf = shared.shared_model("efficientnet_lite0")
    assert loads == ["efficientnet_lite0"]
    forward = compiled(clf.model, precision="float32", engine="keras")
    assert forward.compilations <= 1
    given = load_model("efficientnet_lite0")  # a classifier passed in is used as it is
    assert shared.shared_model("efficientnet_lite0") is clf is not given


def test_a_changed_run_file_is_loaded_again_and_only_two_are_kept(loads, tmp_path):
    """A run retrained in place (its model.keras rewritten) is not served from memory."""
    clf = load_model("efficientnet_lite0")
    path = tmp_path / "lite0.keras"
    clf.model.save(path)
    a = shared.shared_model(path)
    assert shared.shared_model(path) is a and len(loads) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten
    b = shared.shared_model(path)
    assert b is not a and len(loads) == 2
    shared.shared_model("efficientnet_lite0")
    shared.shared_model(str(path))  # another spelling of the same file: the same one
    assert len(loads) == 3 and len(shared._kept) == shared.KEPT
    with pytest.raises(UnknownModelError, match="no-such-model"):
        shared.shared_model("no-such-model")
    missing = tmp_path / "runs" / "gone"
    with pytest.raises(ModelFileError, match=f"no run folder or model file at '{missing}'"):
        kerascope.classify(str(skimage_data() / "chelsea.png"), model=str(missing))
    assert len(shared._kept) == shared.KEPT
