"""Padded training batches (`kerascope.training.padded`): every batch has the full shape, the
last one padded with weight-0 rows, yet each step trains on the mean over its real rows, as
plain Keras does with an unpadded last batch, and the logged loss and accuracy are the exact
means over the epoch's images. Both trainers: the whole graph and the split one.

Before, real rows weighed ``steps * batch / images``: 33 images in batches of 32 took SGD
steps 1.94x too long on the full batch and 0.06x on the last (one image) batch.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerascope.data.loader import FolderSequence
from kerascope.inference import compiled
from kerascope.testing import cat_and_coffee
from kerascope.training.outputs import loss_and_metric
from kerascope.training.split import PrefixSequence, split_model
from kerascope.training.whole import AugmentedTrainer, DeviceFeed

pytestmark = pytest.mark.backends  # the loss tracker is replaced in Keras's trainer: torch too

SIZE, BATCH, CLASS_WEIGHT = 32, 32, {1: 2.0}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> FolderSequence:
    """33 real-photo crops (cat, coffee) in batches of 32: one full batch, then one image."""
    root = cat_and_coffee(tmp_path_factory.mktemp("photos"), n=17, size=SIZE)
    items = [(str(p), int(p.parent.name == "coffee")) for p in sorted(root.rglob("*.jpg"))]
    return FolderSequence(items[:33], ["cat", "coffee"], SIZE, batch_size=BATCH, shuffle=True,
                          seed=3)  # fmt: skip


def _network(frozen: bool) -> keras.Model:
    """A small convolutional classifier; ``frozen``: its first convolution does not train (a
    frozen prefix for the split trainer)."""
    keras.utils.set_random_seed(7)
    x = inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="stem",
                            trainable=not frozen)(x)  # fmt: skip
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(x))


def _values(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


class _EpochSeen(keras.callbacks.Callback):
    """The sequence's epoch (its order of images) at each training step: the reference trains
    on that order. Keras's fit advances the sequence once before training, so "epoch 0's
    order" was not what it trained on (the test passed only for seeds whose two orders end on
    the same image)."""

    def __init__(self, images: FolderSequence):
        super().__init__()
        self.images, self.seen = images, set()

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.add(self.images.epoch)

    def rows(self) -> list[np.ndarray]:
        (epoch,) = self.seen
        self.images.set_epoch(epoch)
        return [self.images.batch_rows(b) for b in range(len(self.images))]


def _reference(frozen: bool, images: FolderSequence, lr: float, served) -> list[np.ndarray]:
    """Plain Keras on unpadded batches (32 rows, then 1): SGD, class weights as sample
    weights. The weights after one epoch."""
    network = _network(frozen)
    network.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    weight = np.array([1.0, CLASS_WEIGHT[1]], np.float32)
    for rows in served:
        y = images.labels[rows]
        network.train_on_batch(images.load_rows(rows).astype("float32"), y,
                               sample_weight=weight[y])  # fmt: skip
    return _values(network)


def _trained(engine: str, images: FolderSequence, lr: float, validate: bool = False):
    """One epoch of ``engine``'s trainer (``whole``: `AugmentedTrainer` on a `DeviceFeed`;
    ``split``: the split model's suffix on a `PrefixSequence`), SGD without momentum, class
    weights. Returns the network, its history, the batch shapes fed and the rows trained on."""
    network = _network(frozen=engine == "split")
    loss, metric = loss_and_metric("multiclass", soft_targets=False)
    images.set_epoch(0)
    if engine == "whole":
        trained = AugmentedTrainer(network)
        feed = DeviceFeed(images, None, class_weight=CLASS_WEIGHT)
        val = DeviceFeed(images, None) if validate else None
    else:
        parts = split_model(network)
        assert parts is not None and parts.cut is None
        trained = parts.suffix
        forward = compiled(parts.prefix, engine="keras")  # the cut itself, no engine noise
        feed = PrefixSequence(images, forward, None, class_weight=CLASS_WEIGHT)
        val = PrefixSequence(images, forward, None) if validate else None
    trained.compile(optimizer=keras.optimizers.SGD(lr), loss=loss, weighted_metrics=[metric])
    shapes = [len(feed[b][2]) for b in range(len(feed))]
    seen = _EpochSeen(images)
    history = trained.fit(feed, validation_data=val, epochs=1, shuffle=False, verbose=0,
                          callbacks=[seen])  # fmt: skip
    return network, history.history, shapes, seen.rows()


@pytest.mark.parametrize("engine", ["whole", "split"])
def test_sgd_steps_equal_plain_keras_on_unpadded_batches(engine, images):
    """33 images at batch 32 (the second batch one image padded to 32): after one SGD epoch the
    weights equal plain Keras's two unpadded steps (32 rows, then 1), class weights included.
    Before: the full batch's step was x1.94 and the last x0.06."""
    network, _, shapes, served = _trained(engine, images, 0.5)
    assert shapes == [BATCH, BATCH]  # the last batch is padded: one compiled step
    assert [len(rows) for rows in served] == [BATCH, 1]
    before = _values(_network(frozen=engine == "split"))
    want = _reference(engine == "split", images, 0.5, served)
    got = _values(network)
    moved = max(float(np.max(np.abs(w - b))) for w, b in zip(want, before, strict=True))
    assert moved > 1e-2  # the steps really moved the weights
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["whole", "split"])
def test_epoch_loss_and_accuracy_are_exact_means_over_the_images(engine, images):
    """With lr 0 the weights stay put, so the epoch's logged loss must be the mean over the 33
    images of each one's class-weighted cross-entropy, its accuracy k/33, and the validation
    loss (no class weights) the plain mean. Keras alone weighs each batch's loss by its 32
    rows, padding included: the last image would count 32 times."""
    network, history, _, served = _trained(engine, images, 0.0, validate=True)
    rows = np.concatenate(served)
    x, y = images.load_rows(rows).astype("float32"), images.labels[rows]
    p = keras.ops.convert_to_numpy(network(x, training=False))
    per_image = -np.log(p[np.arange(len(y)), y])
    weight = np.where(y == 1, CLASS_WEIGHT[1], 1.0)
    assert history["loss"][0] == pytest.approx(float(np.mean(weight * per_image)), rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(float(np.mean(per_image)), rel=1e-5)
    right = float(np.mean(p.argmax(1) == y))
    assert history["accuracy"][0] == pytest.approx(right, abs=1e-6)
    assert history["val_accuracy"][0] == pytest.approx(right, abs=1e-6)
