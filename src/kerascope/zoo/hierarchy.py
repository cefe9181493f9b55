"""The ImageNet-1k is-a hierarchy: "cat", "dog" or "vehicle" as sums of ImageNet classes.

ImageNet has no class "cat" (it has tabby, tiger cat, Persian, Siamese and Egyptian cat, and 118
dog breeds). Every class is a WordNet 3.0 noun synset, so its WordNet ancestors make groups: the
probability of a group is the sum of the probabilities of its ImageNet descendants. The
hierarchy (1860 synsets: the classes and their ancestors, with lemmas and parents) is bundled as
``imagenet_hierarchy.json``, derived once from WordNet 3.0 by
``scripts/make_imagenet_hierarchy.py``, which says where the data comes from.

A group is named by any lemma of its synset (``cat``, ``house cat``, ``Canis familiaris``,
matched ignoring case, spaces, underscores and hyphens) or by its WordNet id. A lemma of several
synsets means WordNet's first sense among those with ImageNet descendants (``cat``: "cat, true
cat", 7 classes, not "big cat, cat"); pass the wnid for another.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from kerascope.errors import KerascopeError
from kerascope.zoo.imagenet import NUM_CLASSES, class_index

_WNID = re.compile(r"n\d{8}")


class GroupError(KerascopeError, ValueError):
    """A group name that names no WordNet ancestor of ImageNet classes (close matches given)."""


@dataclass(frozen=True)
class Group:
    """A WordNet synset with ImageNet-1k descendants: ``classes`` are their output indices."""

    wnid: str
    name: str  # the synset's first lemma, readable ("domestic cat")
    classes: tuple[int, ...]

    @property
    def is_class(self) -> bool:
        """A group of one class that is that class itself (a leaf of the hierarchy)."""
        return len(self.classes) == 1 and class_index()[self.classes[0]][0] == self.wnid


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


@cache
def _tree() -> dict:
    text = resources.files(__package__).joinpath("imagenet_hierarchy.json").read_text("utf-8")
    return json.loads(text)


@cache
def _descendants() -> dict[str, tuple[int, ...]]:
    """wnid -> the ImageNet indices under it (itself included), for every bundled synset."""
    synsets = _tree()["synsets"]
    under: dict[str, set[int]] = {w: set() for w in synsets}
    for index, (wnid, _) in enumerate(class_index()):
        todo, seen = [wnid], set()
        while todo:
            w = todo.pop()
            if w not in seen:
                seen.add(w)
                under[w].add(index)
                todo.extend(synsets[w]["parents"])
    return {w: tuple(sorted(s)) for w, s in under.items()}


@cache
def _by_name() -> dict[str, str]:
    """Normalised lemma -> wnid: WordNet's first sense among the bundled synsets."""
    names: dict[str, str] = {}
    for wnid, synset in _tree()["synsets"].items():
        for lemma in synset["lemmas"]:
            names.setdefault(_normalise(lemma), wnid)
    for lemma, wnids in _tree()["senses"].items():  # lemmas of several synsets: sense order
        names[_normalise(lemma)] = wnids[0]
    return names


def group(wnid: str) -> Group:
    """The group of one bundled synset, by WordNet id (a class's group has its Keras name,
    as `classify` prints it; others their first lemma)."""
    from kerascope.zoo.imagenet import _by_wnid

    if wnid in _by_wnid():
        return Group(wnid, class_index()[_by_wnid()[wnid]][1], (_by_wnid()[wnid],))
    lemmas = _tree()["synsets"][wnid]["lemmas"]
    return Group(wnid, lemmas[0].replace("_", " "), _descendants()[wnid])


def find_group(query: str) -> Group | None:
    """The group a name or wnid stands for, or None when it names no bundled synset."""
    text = query.strip()
    if _WNID.fullmatch(text.lower()):
        return group(text.lower()) if text.lower() in _tree()["synsets"] else None
    wnid = _by_name().get(_normalise(text))
    return None if wnid is None else group(wnid)


def resolve_group(query: str) -> Group:
    """``query`` (a lemma or wnid) as a `Group`, or a one-line `GroupError` with close matches."""
    found = find_group(query)
    if found is not None:
        return found
    raise GroupError(f"unknown class or group {query!r}{close_matches(query)}")


def close_matches(query: str) -> str:
    """``"; did you mean 'cat', 'bat'?"`` over class and group names, or ``""``."""
    key = _normalise(query)
    scored = []
    for word, size in _words().items():
        matcher = difflib.SequenceMatcher(None, key, word)
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6:
            ratio = matcher.ratio()
            if ratio >= 0.6:  # equally close: the larger group first ("kat": cat before vat)
                scored.append((-ratio, -size, word))
    close = [w for *_, w in sorted(scored)[:4]]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@cache
def _words() -> dict[str, int]:
    """Every class and group name -> how many classes it covers."""
    from kerascope.zoo.imagenet import _by_name as class_names

    words = dict.fromkeys(class_names(), 1)
    for word, wnid in _by_name().items():
        words[word] = max(words.get(word, 1), len(_descendants()[wnid]))
    return words


def basic_groups() -> list[Group]:
    """The groups ``classify --group`` reports (the curated `BASIC` list of the script):
    words a person uses for what is in a photo, none an ancestor of another."""
    return [group(w) for w in _tree()["basic"]]


def ancestors(index: int) -> list[Group]:
    """The groups a class is in, nearest first (itself excluded), e.g. tabby -> domestic cat,
    cat, feline, carnivore, ..., entity; along every path where WordNet has several."""
    synsets = _tree()["synsets"]
    wnid = class_index()[index][0]
    order: list[str] = []
    level = list(synsets[wnid]["parents"])
    while level:
        order.extend(w for w in level if w not in order)
        level = [p for w in level for p in synsets[w]["parents"] if p not in order]
    return [group(w) for w in order]


def membership(groups: list[Group]) -> np.ndarray:
    """(1000, G) float32 0/1 matrix: ``probs @ membership(groups)`` are the group sums."""
    m = np.zeros((NUM_CLASSES, len(groups)), np.float32)
    for j, g in enumerate(groups):
        m[list(g.classes), j] = 1.0
    return m


def roll_up(
    probs: np.ndarray, groups: list[Group] | None = None, rest: bool = True
) -> tuple[np.ndarray, list[Group]]:
    """Probability rows (N, 1000) -> (N, G') group probabilities and the G' groups.

    ``groups`` default `basic_groups`; with ``rest`` every class in none of them is appended as
    a group of its own, so the columns cover every class (and, the groups being disjoint but
    for WordNet's few double parents, sum to about 1). Sums are in float64.
    """
    groups = basic_groups() if groups is None else list(groups)
    if rest:
        covered = {c for g in groups for c in g.classes}
        wnids = [w for w, _ in class_index()]
        groups += [group(wnids[c]) for c in range(NUM_CLASSES) if c not in covered]
    probs = np.asarray(probs, np.float64)
    return probs @ membership(groups).astype(np.float64), groups


def is_imagenet(labels: list[tuple[str, str]]) -> bool:
    """Whether a model's classes are the ImageNet-1k classes, in their order."""
    return [w for w, _ in labels] == [w for w, _ in class_index()]


def check_imagenet(labels: list[tuple[str, str]], model: str = "the model") -> None:
    """Groups sum ImageNet-1k classes: a model with other classes gets a one-line `GroupError`."""
    if not is_imagenet(labels):
        raise GroupError(
            f"groups are WordNet ancestors of the 1000 ImageNet classes; {model} has "
            f"{len(labels)} other classes (use a zoo model, or name one of its classes)"
        )


def resolve_groups(names: str | list[str]) -> list[Group]:
    """Comma-separated or listed group names -> groups, in order, duplicates dropped."""
    if isinstance(names, str):
        names = names.split(",")
    found = [resolve_group(n) for n in names if n.strip()]
    if not found:
        raise GroupError("no group named; give names such as 'cat,dog,vehicle'")
    return list({g.wnid: g for g in found}.values())


def classes_named(name: str, labels: list[tuple[str, str]]) -> list[int]:
    """The output indices a class folder's ``name`` stands for among a model's ``labels``
    ((id, name) pairs), so ImageNet-layout folders (``n02123045/``) and class-name folders
    (``tabby/``) both score: the class whose WordNet id it is, else the classes of exactly that
    name (in Unicode's composed form: a folder made on macOS spells ``café`` decomposed), else
    those whose name matches ignoring case, spaces, ``_`` and ``-``. Several: a name two
    classes share (ImageNet's two ``crane``; a run's ``Cat`` and ``cat``), for the caller to
    refuse; none: [].
    """
    if is_wnid(name):
        found = [i for i, (cid, _) in enumerate(labels) if cid == name]
        if found:
            return found
    exact = [i for i, (_, n) in enumerate(labels) if composed(n) == composed(name)]
    if exact:
        return exact
    key = _loose(name)
    return [i for i, (_, n) in enumerate(labels) if _loose(n) == key]


def composed(text: str) -> str:
    """``text`` in Unicode's composed form (NFC): macOS spells file names decomposed."""
    return unicodedata.normalize("NFC", text)


def _loose(text: str) -> str:
    """``text`` compared without case, spaces, ``_`` or ``-``."""
    return re.sub(r"[\s_\-]+", "", composed(text)).casefold()


def is_wnid(text: str) -> bool:
    """Whether ``text`` is shaped like a WordNet noun id (``n02123045``)."""
    return _WNID.fullmatch(text) is not None
