"""train --init-from RUN (issue 21): a fine-tuning run starts from an earlier run's head (the
seed's VGG16 fine-tune loads its bottleneck-trained head); mismatches are one line naming the
layer."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from kerascope.errors import ConfigError
from kerascope.training import train

from .test_regularise import crops  # noqa: F401  (the module fixture: real-photo crops)

SMALL = dict(image_size=64, batch_size=16, augment=False, progress=False)


@pytest.fixture(scope="module")
def transfer_run(crops, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("transfer") / "run"
    # one epoch (was 2): validation accuracy 1.0, and the fine-tune from it 1.0 (asked 0.75)
    return train(crops, recipe="transfer", output=out, epochs=1, lr=3e-3, **SMALL)


class FirstWeights(keras.callbacks.Callback):
    """The head's weights when the first stage starts training."""

    seen: dict = {}

    def on_train_begin(self, logs=None):
        if "head" not in self.seen:
            self.seen["head"] = [w.copy() for w in self._head().get_weights()]

    def _head(self):
        return next(layer for layer in self.model.layers if layer.name == "predictions")


@pytest.mark.slow  # 16 s
def test_finetune_starts_from_the_earlier_runs_head(crops, transfer_run, tmp_path):  # noqa: F811
    """The head that stage 1 starts from is the transfer run's saved head, not a random one,
    and the config records where it came from."""
    FirstWeights.seen = {}
    run = train(crops, recipe="finetune", output=tmp_path / "ft", epochs=[1, 1], unfreeze=0.2,
                init_from=transfer_run.run_dir, callbacks=[FirstWeights()], **SMALL)  # fmt: skip
    saved = keras.saving.load_model(transfer_run.model_path).get_layer("predictions")
    for start, earlier in zip(FirstWeights.seen["head"], saved.get_weights(), strict=True):
        np.testing.assert_array_equal(start, earlier)
    assert run.config["init_from"] == str(transfer_run.run_dir.resolve())
    assert (
        f"head (and matching layers) of `{transfer_run.run_dir.resolve()}`"
        in (run.run_dir / "report.md").read_text()
    )
    assert run.val_accuracy >= 0.75


def test_mismatched_head_is_one_line_naming_the_layer(crops, transfer_run, tmp_path):  # noqa: F811
    two = tmp_path / "two"
    for name in ("cat", "coffee"):
        for split in ("train", "validation"):
            shutil.copytree(Path(crops) / split / name, two / split / name)
    with pytest.raises(ConfigError) as caught:
        train(two, recipe="finetune", output=tmp_path / "ft", epochs=[1, 1], unfreeze=0.2,
              init_from=transfer_run.run_dir, **SMALL)  # fmt: skip
    text = str(caught.value)
    assert "\n" not in text and "layer 'predictions'" in text
    assert "trained for 3 classes, this dataset has 2" in text
    assert not (tmp_path / "ft").exists()  # nothing left behind


def test_missing_run_is_refused_before_anything_is_written(crops, tmp_path, capsys):  # noqa: F811
    from kerascope.cli import main

    code = main(["train", str(crops), "--recipe", "finetune", "--init-from",
                 str(tmp_path / "nowhere"), "-o", str(tmp_path / "ft")])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert "--init-from" in err and "no model file" in err and "Traceback" not in err
    assert not (tmp_path / "ft").exists()
