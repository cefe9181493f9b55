"""An ensemble's heatmap comes from one branch: explain says which, and how to pick another
(before: nothing said that half the model was not explained)."""

from __future__ import annotations

import logging

import numpy as np


def _branch(name: str):
    import keras

    x = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    return keras.Model(x, keras.layers.GlobalAveragePooling2D(name="gap")(y), name=name)


def test_explain_of_an_ensemble_names_the_branch_it_shows(caplog):
    import keras

    import kerascope
    from kerascope.cam.base import as_classifier

    x = keras.Input((16, 16, 3))
    joined = keras.layers.Concatenate()([_branch("left")(x), _branch("right")(x)])
    model = as_classifier(
        keras.Model(x, keras.layers.Dense(2, activation="softmax")(joined), name="ensemble")
    )
    picture = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        kerascope.explain(picture, model=model, method="gradcam")
    said = [r.getMessage() for r in caplog.records if "branches" in r.getMessage()]
    assert said == ["'ensemble' has 2 branches (left, right): the heatmaps show branch 'right' "
                    "only ('right/conv'); --layer BRANCH/LAYER explains another"]  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerascope"):
        kerascope.explain(picture, model=model, method="gradcam", layer="left/conv")
    assert not [r for r in caplog.records if "branches" in r.getMessage()]


def test_nested_models_in_a_chain_are_no_branches():
    """The review found the Keras guide's augmentation -> backbone chain called "2 branches"."""
    import keras

    from kerascope.cam.graph import branch_of, find_layer

    x = keras.Input((16, 16, 3))
    first = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(3, 3, padding="same")],
                             name="augment")  # fmt: skip
    inner = keras.Input((16, 16, 3))
    body = keras.Model(inner, keras.layers.Conv2D(4, 3, padding="same", name="conv")(inner),
                       name="backbone")  # fmt: skip
    pooled = keras.layers.GlobalAveragePooling2D()(body(first(x)))
    model = keras.Model(x, keras.layers.Dense(2, activation="softmax")(pooled))
    assert branch_of(model, find_layer(model)) is None


def test_an_ensemble_behind_a_shared_augmentation_or_wrapped_is_still_one():
    """The review found the first chain rule hiding these ensembles."""
    import keras

    from kerascope.cam.graph import branch_of, find_layer

    x = keras.Input((16, 16, 3))
    shared = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(3, 1)],
                              name="augment")(x)  # fmt: skip
    joined = keras.layers.Concatenate()([_branch("left")(shared), _branch("right")(shared)])
    model = keras.Model(x, keras.layers.Dense(2, activation="softmax")(joined))
    assert branch_of(model, find_layer(model)) == ("right", ["left", "right"])
    wrapped = keras.Model(x, model(x))
    assert branch_of(wrapped, find_layer(wrapped)) == ("right", ["left", "right"])
