"""The time estimate and per-epoch line of `TrainProgress` on real (tiny) Keras fits: no
estimate from a compiling step, only the epochs a resumed stage has left, honest units."""

from __future__ import annotations

import io
import re

import keras
import numpy as np
import pytest

from kerascope.training.progress import TIMED_STEPS, TrainProgress


@pytest.fixture(scope="module")
def tiny():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64)


def _fit(tiny, batch: int, epochs: int, initial: int = 0, cached: bool = False) -> list[str]:
    model, x, y = tiny
    stream = io.StringIO()
    model.fit(x, y, batch_size=batch, epochs=epochs, initial_epoch=initial, verbose=0,
              callbacks=[TrainProgress(len(x), epochs, stream, cached=cached)])  # fmt: skip
    return stream.getvalue().splitlines()


def test_one_step_epochs_are_estimated_from_the_second_epoch(tiny):
    lines = _fit(tiny, batch=64, epochs=4)  # one step per epoch
    # before: "estimated <first step incl. compilation> per epoch" after epoch 1's only step
    assert lines[0].startswith("  epoch 1:") and "estimated" not in lines[0]
    assert lines[1].startswith("  epoch 2:")
    assert re.match(r"  estimated \S+ s per epoch, about \S+ s for the 2 epoch\(s\) left "
                    r"\(the first took [\d.]+ s incl. compilation\)", lines[2]), lines  # fmt: skip
    assert sum("estimated" in line for line in lines) == 1


def test_many_step_epochs_estimate_early_in_milliseconds_per_step(tiny):
    lines = _fit(tiny, batch=2, epochs=2)  # 32 steps per epoch
    assert 32 >= TIMED_STEPS
    estimate = lines[0]
    assert estimate.startswith("  estimated") and "for 2 epoch(s)" in estimate
    # before: "then 0.00 s/step" for fast steps
    assert re.search(r"then [\d.]+ ms/step", estimate) and "0.00 s/step" not in estimate


def test_a_resumed_stage_estimates_only_the_epochs_left(tiny):
    lines = _fit(tiny, batch=2, epochs=5, initial=3)
    assert "for 2 epoch(s)" in lines[0], lines  # before: "for 5 epoch(s)"
    assert [line.split(":")[0] for line in lines[1:]] == ["  epoch 4", "  epoch 5"]


def test_epochs_on_cached_features_say_so(tiny):
    lines = _fit(tiny, batch=64, epochs=1, cached=True)
    assert "img/s on cached features" in lines[0]
    assert "img/s on cached" not in _fit(tiny, batch=64, epochs=1)[0]
