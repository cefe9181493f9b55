"""Class folders of a labelled dataset matched to a model's classes, for ``validate`` and
``evaluate`` alike: a folder is named by the class's WordNet id (ImageNet's layout,
``n02123045/``) or by its name as the model labels it (``tabby/``, ``Tabby``, ``tiger-cat``:
`kerascope.zoo.hierarchy.classes_named`). Every folder that matches no class is named in one
line before any image is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerascope.data.folders import DatasetError, is_data_name, not_a_folder
from kerascope.images import expand_inputs
from kerascope.zoo.hierarchy import classes_named, is_wnid


def class_folders(data: str | os.PathLike, labels: list[tuple[str, str]]) -> list[tuple[Path, int]]:
    """``[(folder, class index)]`` for each class folder of ``data``, in name order;
    ``labels`` are the model's (id, name) pairs.

    Raises:
        DatasetError: ``data`` is no folder or has no class folders; folders that match no
            class (all named in one line), or a name two classes share (use the id).
    """
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DatasetError(not_a_folder(root, "validation"))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and is_data_name(p.name))
    first = next((i for i, (cid, _) in enumerate(labels) if is_wnid(cid)), None)
    if not folders:  # the model's own names as the example (a trained run's: cat, coffee)
        how = (f"its WordNet id ({labels[first][0]}) or class name ({labels[first][1]})"
               if first is not None else "its class name (" + ", ".join(n for _, n in labels[:5])
               + (", ..." if len(labels) > 5 else "") + ")")  # fmt: skip
        raise DatasetError(f"no class folders in '{root}': put each class's images in a folder "
                           f"named by {how}")  # fmt: skip
    mapped, unknown, unclear = [], [], []
    for folder in folders:
        found = classes_named(folder.name, labels)
        if len(found) > 1 and all(is_wnid(labels[i][0]) for i in found):
            choices = " or ".join(labels[i][0] for i in found)
            unclear.append(f"'{folder}': {len(found)} classes of this model are named "
                           f"'{labels[found[0]][1]}'; name the folder by its WordNet id "
                           f"({choices})")  # fmt: skip
        elif len(found) > 1:  # a run's classes that differ only in case or spacing
            names = " or ".join(f"'{labels[i][1]}'" for i in found)
            unclear.append(f"'{folder}' could be the class {names} of this model; name the "
                           "folder exactly as the class is named")  # fmt: skip
        elif found:
            mapped.append((folder, found[0]))
        else:
            unknown.append(folder.name)
    if unknown:  # every folder that is no class, and the unclear ones, in one line
        shown = ", ".join(f"'{n}'" for n in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        how = "a WordNet id (n02123045) or a class name" if first is not None else "a class name"
        examples = ", ".join(name for _, name in labels[:5])
        raise DatasetError(f"{len(unknown)} folder(s) of '{root}' match no class of the model: "
                           f"{shown}; rename each to {how} of the model (e.g. {examples}) or "
                           "remove it" + "".join(f"; and {u}" for u in unclear))  # fmt: skip
    if unclear:
        raise DatasetError("; ".join(unclear))
    return mapped


def folder_items(data: str | os.PathLike | list, labels: list[tuple[str, str]]) -> list:
    """``[(path, class index)]`` of every image in the class folders of ``data``: one folder,
    or several (``evaluate --split all``: train/, validation/, test/), of which only all
    together must hold an image."""
    roots = data if isinstance(data, list) else [data]
    items = [(p, index) for root in roots for folder, index in class_folders(root, labels)
             for p in expand_inputs([folder]).paths]  # fmt: skip
    if not items:
        raise DatasetError(f"no images in the class folders of '{roots[0]}'")
    return items
