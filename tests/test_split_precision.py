"""The split trainer's frozen prefix computes in float32 whatever ``--precision`` says (on this
CPU a bfloat16 prefix ran on the keras engine, ~7x slower than onnxruntime's float32), and
the stage's line says so: before, a ``--precision bfloat16`` run printed only "precision:
bfloat16" while its prefix, most of the network, ran in float32."""

from __future__ import annotations

import keras
import pytest

from kerascope.testing import cat_and_coffee
from kerascope.training import epochs, train


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_split_stage_says_its_prefix_runs_in_float32(precision, tmp_path, monkeypatch, capsys):
    data = cat_and_coffee(tmp_path / "data", n=12, size=32)
    made = []

    def recording(prefix, engine=None):
        forward = original(prefix, engine)
        made.append((forward.engine, forward.precision))
        return forward

    original = epochs.prefix_forward
    monkeypatch.setattr(epochs, "prefix_forward", recording)
    seen: dict[str, str] = {}

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["suffix"] = self.model.get_layer("head_dropout").compute_dtype

    run = train(data, recipe="transfer", output=tmp_path / "run", epochs=1, image_size=32,
                batch_size=8, augment=False, precision=precision, callbacks=[Watch()],
                val_split=0.25)  # fmt: skip
    out = capsys.readouterr().out
    assert made == [("onnx", "float32")]  # the prefix the stage ran, whatever --precision
    assert seen["suffix"] == precision  # the trained part follows --precision
    assert run.config["precision"] == precision
    line = next(s for s in out.splitlines() if "split training:" in s)
    note = f"; the prefix computes in float32, --precision {precision} applies to what Keras trains"
    if precision == "float32":
        assert line.endswith("Keras trains head only"), line
    else:
        assert line.endswith(f"Keras trains head only{note}"), line
