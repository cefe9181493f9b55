"""Label images with a trained model: one typed row per image, optionally a CSV.

This is the Kaggle-submission shape of the tutorials (``path,label,probability,error``, one row
per test image). It runs through ``kerascope.classification.classify_sources``, like every
classifier, so a predicted label is the top-1 class ``classify`` gives for the same image.
"""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kerascope.classification import Source, classify_sources
from kerascope.inference import normalise_inputs
from kerascope.output import csv_safe
from kerascope.zoo.models import Classifier, load_model

CSV_FIELDS = ("path", "label", "probability", "error")


@dataclass
class PredictedLabel:
    """One input: its top-1 class, or the reason it could not be labelled.

    Attributes:
        source: the file as found (``<array>`` or ``<image>`` for in-memory inputs).
        label: the class name; None when ``error`` is set.
        class_index: the class's output index; None when ``error`` is set.
        probability: the model's probability for ``label``; None when ``error`` is set.
        error: why the input could not be read, else None.
    """

    source: str
    label: str | None = None
    class_index: int | None = None
    probability: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def csv_row(self) -> dict[str, str | float]:
        """The row as written to the CSV: empty cells where there is no value."""
        if not self.ok:
            return {"path": self.source, "label": "", "probability": "", "error": self.error}
        return {"path": self.source, "label": self.label,
                "probability": round(self.probability, 6), "error": ""}  # fmt: skip


def predict(
    run_dir: str | os.PathLike | Classifier,
    inputs: Source | Iterable[Source],
    output_csv: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> list[PredictedLabel]:
    """Label every image in ``inputs`` with its top-1 class, and write them as CSV if asked.

    A file that cannot be read gets a row with its ``error`` instead of vanishing, so the row
    count always matches the inputs given, each at its place (folders and globs in their
    expansion order, a missing path's error row where the path was given).

    Args:
        run_dir: a run directory or ``.keras`` file (or a loaded `Classifier`).
        inputs: paths, folders (recursive), globs, (H, W, 3) arrays or PIL Images, or a
            list of them.
        output_csv: write ``path,label,probability,error`` rows here (atomically; text
            cells a spreadsheet would run as formulas are quoted); None writes nothing.
        batch_size: images per forward pass.

    Returns:
        One `PredictedLabel` per input, in input order.

    Example:
        >>> rows = kerascope.predict("runs/cats", "test/", "out.csv")  # doctest: +SKIP
        >>> rows[0].label, rows[0].probability  # doctest: +SKIP
        ('cat', 0.97)
    """
    clf = run_dir if isinstance(run_dir, Classifier) else load_model(run_dir)
    sources, _, _ = normalise_inputs(inputs)
    rows = []
    for r in classify_sources(clf, sources, top=1, batch_size=batch_size):
        if r.ok:
            top = r.predictions[0]
            rows.append(PredictedLabel(r.source, top.name, top.index, top.probability))
        else:
            rows.append(PredictedLabel(r.source, error=r.error))
    if output_csv is not None:
        write_csv(rows, output_csv)
    return rows


def write_csv(rows: Iterable[PredictedLabel], path: str | os.PathLike) -> Path:
    """Write ``rows`` through a temp file in the same folder: never half a CSV at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        # O_EXCL: never clobber someone else's file; mode 0o666 lets the umask apply as usual.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_safe(row.csv_row()) for row in rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
