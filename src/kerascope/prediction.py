"""Label images with a trained model: one typed row per image, optionally a CSV.

This is the Kaggle-submission shape of the tutorials (``path,label,probability,error``, one row
per test image). It runs through ``kerascope.classification.classify_sources``, like every
classifier, so a predicted label is the top-1 class ``classify`` gives for the same image.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerascope.classification import Source, classify_sources, run_precision
from kerascope.data.folders import DatasetError
from kerascope.files import atomic_open, check_not_an_input, write_json
from kerascope.images.inputs import skipped_note
from kerascope.inference import engine_name
from kerascope.output import clean, csv_probability, csv_safe
from kerascope.rundir import read_labels
from kerascope.sources import normalise_inputs
from kerascope.tta import TTA, as_tta, classify_tta
from kerascope.zoo.models import Classifier, run_folder
from kerascope.zoo.shared import shared_model

CSV_FIELDS = ("path", "label", "probability", "error")
_log = logging.getLogger(__name__)


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
                "probability": csv_probability(self.probability), "error": ""}  # fmt: skip


def predict(
    run_dir: str | os.PathLike | Classifier,
    inputs: Source | Iterable[Source],
    output_csv: str | os.PathLike | None = None,
    batch_size: int = 32,
    precision: str | None = None,
    progress: Callable[[int], None] | None = None,
    tta: TTA | None = None,
) -> list[PredictedLabel]:
    """Label every image in ``inputs`` with its top-1 class, and write them as CSV if asked.

    A file that cannot be read gets a row with its ``error`` instead of vanishing, so the row
    count always matches the inputs given, each at its place (folders and globs in their
    expansion order, a missing path's error row where the path was given). Files that
    folders and globs hold but that are not images by their suffix (``.txt``, ``.csv``) get
    no row: they are named in one warning (``skipped 2 non-image file(s): ...``, on this
    module's logger; the command prints it as a note), as ``classify`` and ``evaluate`` say
    them. A file with an image suffix that does not decode gets its error row.

    Args:
        run_dir: a run directory or ``.keras`` file (or a loaded `Classifier`).
        inputs: paths, folders (recursive), globs, (H, W, 3) arrays or PIL Images, or a
            list of them.
        output_csv: write ``path,label,probability,error`` rows here (atomically; text
            cells a spreadsheet would run as formulas are quoted): as JSON for a ``.json``
            name, to standard output for ``-``; None writes nothing.
        batch_size: images per forward pass.
        precision: what the model computes in: auto, float32, bfloat16, float16 or int8 (see
            `kerascope.classification.run_precision`).
        progress: called with 1 as each image is labelled (the CLI's progress line).
        tta: label by the mean probabilities over these views (`kerascope.tta.TTA`).

    Returns:
        One `PredictedLabel` per input, in input order.

    Example:
        >>> rows = kerascope.predict("runs/cats", "test/", "out.csv")  # doctest: +SKIP
        >>> rows[0].label, rows[0].probability  # doctest: +SKIP
        ('cat', 0.97)
    """
    job = prepare_predict(run_dir, inputs, output_csv, batch_size, precision, tta)
    rows = []
    for row in job.rows():
        rows.append(row)
        if progress is not None:
            progress(1)
    if output_csv is not None:
        write_csv(rows, output_csv)
    return rows


@dataclass
class PredictJob:
    """A predict job checked and ready: the model loaded and its engine chosen (an int8 graph
    measured, or refused), so a command says what it computes in only once that is true, and
    keeps the rows done when it is stopped (`rows` yields them one at a time).

    Attributes:
        clf: the loaded model.
        sources: the inputs to label, in order (what `rows` yields one row for).
        skipped: files of folders and globs that are not images by their suffix (named in
            a warning when the job is prepared; no rows).
        precision: what the model computes in (auto resolved).
        engine: the engine that runs it (``keras``, ``onnx``, ``openvino``).
    """

    clf: Classifier
    sources: list
    skipped: list[str]
    precision: str
    engine: str
    batch_size: int = 32
    tta: TTA | None = None

    def rows(self) -> Iterator[PredictedLabel]:
        """One row per source, in input order, as each batch is labelled."""
        multilabel = self.clf.extra.get("multilabel")  # every label, then those called
        top = self.clf.num_classes if multilabel else 1
        if self.tta is None:
            results = classify_sources(self.clf, self.sources, top=top,
                                       batch_size=self.batch_size,
                                       precision=self.precision)  # fmt: skip
        else:
            results = classify_tta(self.clf, self.sources, self.tta, top=top,
                                   batch_size=self.batch_size,
                                   precision=self.precision)  # fmt: skip
        for r in results:
            if r.ok and multilabel:
                yield _multilabel_row(r, multilabel["thresholds"])
            elif r.ok:
                best = r.predictions[0]
                yield PredictedLabel(r.source, best.name, best.index, best.probability)
            else:
                yield PredictedLabel(r.source, error=r.error)


def prepare_predict(
    run_dir: str | os.PathLike | Classifier,
    inputs: Source | Iterable[Source],
    output_csv: str | os.PathLike | None = None,
    batch_size: int = 32,
    precision: str | None = None,
    tta: TTA | None = None,
) -> PredictJob:
    """Everything `predict` checks before its first image, in its order: labels, inputs,
    ``output_csv`` not an input, the model, then its engine in ``precision`` (where int8 is
    measured and refused in one line). Arguments as `predict`'s."""
    tta = as_tta(tta)
    if not isinstance(run_dir, Classifier):
        _check_labels(run_dir)
    sources, skipped, _ = normalise_inputs(inputs)
    if skipped:  # as classify says them, before the model loads
        _log.warning(skipped_note(skipped))
    if not sources:  # before the model loads; "wrote 0 rows" read as success
        named = [inputs] if isinstance(inputs, str | os.PathLike) else (
            list(inputs) if isinstance(inputs, Sequence) else ["the inputs given"])  # fmt: skip
        raise DatasetError("no images found in " + " ".join(map(str, named)) if named
                           else "no inputs given: name image files, folders or globs")  # fmt: skip
    if output_csv is not None:
        check_not_an_input(output_csv, sources)
    clf = (
        run_dir if isinstance(run_dir, Classifier) else shared_model(run_dir)
    )  # compiled once a process
    resolved = run_precision(clf, precision)
    engine = engine_name(clf.model, precision=resolved)  # int8: measured, or refused here
    return PredictJob(clf, list(sources), list(skipped), resolved, engine, batch_size, tta)


def _multilabel_row(result, thresholds: list[float]) -> PredictedLabel:
    """A multi-label run's row: every label at or above its threshold, most probable first,
    joined by ``;`` (the training CSV's form), with the lowest of their probabilities (every
    named label is at least that sure); none called: an empty label, the best probability."""
    from kerascope.zoo.sigmoid_heads import called

    chosen = called(result.predictions, thresholds)
    if not chosen:
        return PredictedLabel(result.source, "", None, result.predictions[0].probability)
    return PredictedLabel(result.source, ";".join(p.name for p in chosen), chosen[0].index,
                          min(p.probability for p in chosen))  # fmt: skip


def summary(rows: list[PredictedLabel], shown: int = 5) -> str:
    """How many images got each label, most first (``7 cat, 5 dog``): what ``predict`` says
    on screen, since the labels themselves go to the CSV."""
    counts = Counter(r.label or "no label" for r in rows if r.ok).most_common()  # multi-label
    text = ", ".join(f"{n} {label}" for label, n in counts[:shown])
    rest = sum(n for _, n in counts[shown:])
    return text + (f", {rest} in {len(counts) - shown} other classes" if rest else "")


def _check_labels(path: str | os.PathLike) -> None:
    """A damaged ``labels.json`` is one line here, before the model is loaded."""
    folder = run_folder(path)
    if folder is not None:
        read_labels(folder)


def write_csv(rows: Iterable[PredictedLabel], path: str | os.PathLike) -> Path:
    """Write ``rows`` through a temp file in the same folder: never half a CSV at ``path``,
    and on a full disk the previous file is kept (`kerascope.files.OutputError`). A ``.json``
    name gets the rows as JSON (it got CSV), ``-`` standard output (it made a file named -)."""
    if os.fspath(path) == "-":
        _write_rows(rows, sys.stdout)
        sys.stdout.flush()
        return Path("-")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        write_json(path, [_json_row(row) for row in rows])
        return path
    with atomic_open(path, "w", newline="") as f:
        _write_rows(rows, f)
    return path


def _json_row(row: PredictedLabel) -> dict[str, Any]:
    """A row as JSON: the label as in the CSV ("" when none is called), the probability a
    number or null (never NaN, which is no JSON), the error a text or null."""
    cells = row.csv_row()
    p = cells["probability"]
    number = isinstance(p, int | float) and math.isfinite(p)
    return {"path": clean(cells["path"]), "label": clean(cells["label"]),
            "probability": float(p) if number else None,
            "error": clean(cells["error"]) or None}  # fmt: skip


def _write_rows(rows: Iterable[PredictedLabel], stream: Any) -> None:
    writer = csv.DictWriter(stream, CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_safe(row.csv_row()) for row in rows)
