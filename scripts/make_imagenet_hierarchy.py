"""Regenerate ``src/kerascope/zoo/imagenet_hierarchy.json``: the ImageNet-1k is-a hierarchy.

ImageNet's 1000 classes are WordNet 3.0 noun synsets (a wnid such as ``n02123045`` is ``n`` plus
the synset's byte offset in WordNet 3.0's ``data.noun``). This script walks the hypernym
pointers (``@`` and instance ``@i``) from each class up to ``entity`` and writes every synset met
(1860 of them: the 1000 classes and their ancestors) with its lemmas and parents, the WordNet sense
order of each lemma among those synsets (so ``cat`` means WordNet's first sense of cat that has
ImageNet descendants: "cat, true cat", not "big cat, cat"), and the curated list of groups that
``classify --group`` offers (`BASIC`, below).

Source: Debian's ``wordnet-base`` package (WordNet 3.0, version ``1:3.0-37``), files
``/usr/share/wordnet/data.noun`` and ``index.noun``. It is read once here; kerascope never needs
WordNet at run time. Usage::

    apt-get install wordnet-base          # or: apt-get download wordnet-base; dpkg -x ... /tmp/wn
    python scripts/make_imagenet_hierarchy.py [--wordnet /usr/share/wordnet]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "src" / "kerascope" / "zoo" / "imagenet_class_index.json"
OUT = ROOT / "src" / "kerascope" / "zoo" / "imagenet_hierarchy.json"

# The groups `classify --group` reports: words a person uses for what is in a photo (a
# "basic level" in the psychologists' sense), each a WordNet synset. No group is an ancestor of
# another, and a class is in two of them only where WordNet puts it under both (minivan: car
# and truck; mashed potato: vegetable and food; `check` prints them), so the groups and the
# classes in none of them (each shown as itself) split the probability but for those.
BASIC = {
    # animals
    "n02084071": "dog",
    "n02121620": "cat",
    "n02127808": "big cat",
    "n02114100": "wolf",
    "n02118333": "fox",
    "n02131653": "bear",
    "n02470325": "ape",
    "n02484322": "monkey",
    "n02496913": "lemur",
    "n01503061": "bird",
    "n02512053": "fish",
    "n01726692": "snake",
    "n01674464": "lizard",
    "n01662784": "turtle",
    "n01639765": "frog",
    "n01629276": "salamander",
    "n01772222": "spider",
    "n02159955": "insect",
    "n01974773": "crustacean",
    "n01940736": "mollusk",
    "n02401031": "bovid",
    "n02374149": "equine",
    "n02395003": "swine",
    "n02329401": "rodent",
    "n02323902": "leporid",
    "n02062744": "whale",
    "n02441326": "musteline mammal",
    # vehicles
    "n02958343": "car",
    "n04490091": "truck",
    "n02924116": "bus",
    "n02834778": "bicycle",
    "n02686568": "aircraft",
    "n02858304": "boat",
    "n04194289": "ship",
    # things
    "n03800933": "musical instrument",
    "n02778669": "ball",
    "n03405725": "furniture",
    "n03051540": "clothing",
    "n04451818": "tool",
    "n04565375": "weapon",
    "n03082979": "computer",
    "n04401088": "telephone",
    "n02876657": "bottle",
    "n13134947": "fruit",
    "n07707451": "vegetable",
    "n00021265": "food",
    "n03528263": "home appliance",
    "n03621049": "kitchen utensil",
    "n04437953": "timepiece",
    "n02883344": "box",
    "n02773037": "bag",
    "n02913152": "building",
    "n04202417": "shop",
    "n09287968": "geological formation",
    "n12992868": "fungus",
}


def read_synset(data, offset: int) -> tuple[list[str], list[int]]:
    """(lemmas, hypernym offsets) of the noun synset at ``offset`` of ``data.noun``."""
    data.seek(offset)
    fields = data.readline().decode("utf-8").split(" | ")[0].split()
    assert int(fields[0]) == offset, f"no synset at offset {offset}"
    n = int(fields[3], 16)
    lemmas = [fields[4 + 2 * i] for i in range(n)]
    p = 4 + 2 * n
    parents = []
    for i in range(int(fields[p])):
        symbol, target, pos, _ = fields[p + 1 + 4 * i : p + 5 + 4 * i]
        if symbol in ("@", "@i") and pos == "n":
            parents.append(int(target))
    return lemmas, parents


def wnid(offset: int) -> str:
    return f"n{offset:08d}"


def build(wordnet: Path) -> dict:
    """The hierarchy of the 1000 classes, as written to the JSON file."""
    index = json.loads(INDEX.read_text(encoding="utf-8"))
    classes = [index[str(i)][0] for i in range(1000)]
    nodes: dict[int, tuple[list[str], list[int]]] = {}
    with open(wordnet / "data.noun", "rb") as data:
        todo = [int(w[1:]) for w in classes]
        while todo:
            offset = todo.pop()
            if offset not in nodes:
                nodes[offset] = read_synset(data, offset)
                todo.extend(nodes[offset][1])
    # WordNet's sense order (index.noun lists a lemma's synsets most frequent first), kept for
    # the lemmas of the synsets above and only among them.
    senses: dict[str, list[str]] = {}
    lemmas = {lemma.lower() for ls, _ in nodes.values() for lemma in ls}
    with open(wordnet / "index.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split()
            if fields[0] not in lemmas:
                continue
            n_ptr = int(fields[3])
            offsets = [int(o) for o in fields[6 + n_ptr :]]
            known = [wnid(o) for o in offsets if o in nodes]
            if len(known) > 1:  # a lemma of one synset needs no order
                senses[fields[0]] = known
    digest = hashlib.sha256((wordnet / "data.noun").read_bytes()).hexdigest()
    return {
        "source": "WordNet 3.0 (Debian wordnet-base 1:3.0-37), data.noun sha256 " + digest,
        "synsets": {
            wnid(o): {"lemmas": ls, "parents": [wnid(p) for p in ps]}
            for o, (ls, ps) in sorted(nodes.items())
        },
        "senses": dict(sorted(senses.items())),
        "basic": BASIC,
    }


def check(tree: dict, classes: list[str]) -> None:
    """What the runtime relies on: classes are leaves, the groups are disjoint."""
    synsets = tree["synsets"]
    ancestors: dict[str, set[str]] = {}

    def up(w: str) -> set[str]:
        if w not in ancestors:
            ancestors[w] = {w}.union(*(up(p) for p in synsets[w]["parents"]))
        return ancestors[w]

    for c in classes:
        assert not any(c in up(o) and o != c for o in classes), f"{c} is an ancestor of a class"
    owner: dict[str, str] = {}
    overlaps: list[tuple[str, str, str]] = []
    for g in tree["basic"]:
        assert g in synsets, f"group {g} has no ImageNet class"
        for c in classes:
            if g in up(c):
                if c in owner:
                    overlaps.append((c, owner[c], g))
                owner[c] = g
    for g, name in tree["basic"].items():
        n = sum(1 for o in owner.values() if o == g)
        print(f"{g} {name:22s} {n:4d} classes")
    for c, a, b in overlaps:
        print("overlap", c, synsets[c]["lemmas"][0], tree["basic"][a], tree["basic"][b])
    print(f"{len(owner)} of {len(classes)} classes are in a group; the rest stand for themselves")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    tree = build(args.wordnet)
    index = json.loads(INDEX.read_text(encoding="utf-8"))
    check(tree, [index[str(i)][0] for i in range(1000)])
    args.out.write_text(json.dumps(tree, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {len(tree['synsets'])} synsets to {args.out}")


if __name__ == "__main__":
    main()
