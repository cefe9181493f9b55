"""The bundled ImageNet-1k index: well formed, agrees with timm's copy, and resolves user input."""

from __future__ import annotations

import importlib.util
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from kerascope.zoo.imagenet import class_index, display_name, resolve_class

# timm ships its own ImageNet synset and lemma lists: an independent offline reference. Its data
# files are located without importing timm, which would pull in torch (several seconds).
_TIMM = importlib.util.find_spec("timm")
TIMM_INFO = Path(_TIMM.origin).parent / "data" / "_info" if _TIMM and _TIMM.origin else None


def _timm_file(name: str) -> str:
    if TIMM_INFO is None or not (TIMM_INFO / name).is_file():
        pytest.skip(f"timm with data/_info/{name} is not installed")
    return (TIMM_INFO / name).read_text(encoding="utf-8")


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


@pytest.fixture(scope="module")
def timm_synsets() -> list[str]:
    return _timm_file("imagenet_synsets.txt").split()


@pytest.fixture(scope="module")
def timm_lemmas() -> dict[str, str]:
    lines = _timm_file("imagenet_synset_to_lemma.txt").splitlines()
    return dict(line.split("\t", 1) for line in lines if line)


def test_json_is_package_data() -> None:
    assert resources.files("kerascope.zoo").joinpath("imagenet_class_index.json").is_file()


def test_index_is_well_formed() -> None:
    index = class_index()
    assert len(index) == 1000
    wnids = [wnid for wnid, _ in index]
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert len(set(wnids)) == 1000
    assert wnids == sorted(wnids)  # ImageNet indices are the wnids in sorted order
    assert all(name and name == name.strip() for _, name in index)
    assert index[0] == ("n01440764", "tench")
    assert index[999] == ("n15075141", "toilet_tissue")


def test_class_index_returns_a_copy() -> None:
    class_index().clear()
    assert len(class_index()) == 1000


def test_wnids_match_timm(timm_synsets: list[str]) -> None:
    assert len(timm_synsets) == 1000
    assert [wnid for wnid, _ in class_index()] == timm_synsets


def test_names_match_timm_first_lemma(timm_lemmas: dict[str, str]) -> None:
    # Keras's short name is WordNet's first lemma with spaces as underscores.
    mismatched = [
        (i, name, timm_lemmas[wnid])
        for i, (wnid, name) in enumerate(class_index())
        if _normalise(name) != _normalise(timm_lemmas[wnid].split(",")[0])
    ]
    assert mismatched == []


KNOWN = [
    (281, "n02123045", "tabby"),
    (282, "n02123159", "tiger_cat"),
    (285, "n02124075", "Egyptian_cat"),
    (504, "n03063599", "coffee_mug"),
    (812, "n04266014", "space_shuttle"),
    (967, "n07920052", "espresso"),
]


@pytest.mark.parametrize(("index", "wnid", "name"), KNOWN)
def test_known_classes(index: int, wnid: str, name: str) -> None:
    assert class_index()[index] == (wnid, name)


@pytest.mark.parametrize(("index", "wnid", "name"), KNOWN)
def test_known_classes_match_timm(
    index: int, wnid: str, name: str, timm_synsets: list[str], timm_lemmas: dict[str, str]
) -> None:
    assert timm_synsets[index] == wnid
    assert _normalise(timm_lemmas[wnid].split(",")[0]) == _normalise(name)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (281, 281),
        ("281", 281),
        (" 0 ", 0),
        (np.int64(999), 999),
        ("n02123045", 281),
        ("N02123045", 281),
        ("tabby", 281),
        ("tiger cat", 282),
        ("Tiger_Cat", 282),
        ("tiger-cat", 282),
        ("egyptian cat", 285),
        ("great white shark", 2),
        ("jack-o'-lantern", 607),
        ("jack o' lantern", 607),
    ],
)
def test_resolve_class(query: str | int, expected: int) -> None:
    assert resolve_class(query) == expected


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [("crane", 134, 517), ("maillot", 638, 639), ("cardigan", 264, 474), ("Cardigan", 264, 474)],
)
def test_duplicate_names_need_wnid_or_index(name: str, first: int, second: int) -> None:
    with pytest.raises(ValueError, match="ambiguous") as err:
        resolve_class(name)
    message = str(err.value)
    assert "\n" not in message
    for i in (first, second):
        assert str(i) in message and class_index()[i][0] in message
        assert resolve_class(class_index()[i][0]) == i


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="unknown ImageNet class 'tabbby'") as err:
        resolve_class("tabbby")
    assert "'tabby'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown ImageNet class 'qwxz'$"):
        resolve_class("qwxz")


@pytest.mark.parametrize("query", [1000, -1, "1000", "n99999999", ""])
def test_out_of_range_or_unknown_raises(query: str | int) -> None:
    with pytest.raises(ValueError):
        resolve_class(query)


@pytest.mark.parametrize("query", [True, 2.0, None])
def test_wrong_type_raises(query: object) -> None:
    with pytest.raises(TypeError):
        resolve_class(query)  # type: ignore[arg-type]


def test_display_name() -> None:
    assert display_name(281) == "tabby"
    assert display_name(282) == "tiger cat"
    assert display_name("n02124075") == "Egyptian cat"
    assert display_name(607) == "jack-o'-lantern"
