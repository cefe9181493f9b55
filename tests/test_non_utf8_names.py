"""File names that are not UTF-8 (PEP 383 surrogates) in evaluate's pictures and files.

Before: matplotlib refused such a name in a ``top_losses.png`` title, and evaluate ended in a
traceback after scoring every image.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from kerascope.cli import main
from tests.test_evaluate import untrained_run

CLASSES = ["cat", "coffee"]


def test_evaluate_draws_and_writes_names_that_are_not_utf8(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    untrained_run(run, CLASSES)
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for k in range(3):
            path = os.fsencode(tmp_path / "data" / name) + b"/x\xff%d.png" % k
            picture = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
            picture.save(os.fsdecode(path), format="PNG")
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(tmp_path / "data"), "-o", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n"] == 6
    for picture in ("top_losses.png", "predictions.png", "confusion.png"):
        assert Image.open(out / picture).size[0] > 100
