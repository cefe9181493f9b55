"""The ``features`` recipe: a dropout + dense head on the concatenated cached features of several
backbones (the seed's ``gap_ResNet50.h5 + gap_Xception.h5 + ...`` ensemble), saved as ONE model
that takes raw images.

Training touches only the cache, so it takes seconds; the saved ``model.keras`` holds the
backbones too, so classify/explain/evaluate need no cache. Backbones of different sizes share one
raw input at the largest size; each branch resizes inside the graph. The features are extracted
at that same size through the same branch (``features.resizer`` + ``features.build_body``), so
the head sees exactly what it will see inside the saved model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascope.bottleneck import FeatureSpec, build_body, extract_features, resizer
from kerascope.bottleneck.store import Progress
from kerascope.config import ensure_backend

DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1")


@dataclass
class FeaturesRun:
    """What ``train_features`` produced; ``run_dir`` is what classify/evaluate take."""

    run_dir: Path
    model_path: Path
    classes: list[str]
    history: dict[str, list[float]]
    val_accuracy: float
    features_path: Path
    computed: dict[str, int] = field(default_factory=dict)  # rows run through each backbone
    seconds: dict[str, float] = field(default_factory=dict)  # extract / fit / save
    head: Any = None  # the trained head (features in, probabilities out), for checks


def build_head(dim: int, num_classes: int, dropout: float = 0.5, seed: int = 0) -> Any:
    """Dropout + softmax dense on a feature vector; its layers are reused by the ensemble."""
    import keras

    inputs = keras.Input(shape=(dim,), name="features")
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="head")


def fit_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    epochs: int = 10,
    batch_size: int = 32,
    dropout: float = 0.5,
    lr: float = 1e-3,
    seed: int = 0,
    callbacks: list | None = None,
    verbose: int = 0,
) -> tuple[Any, dict[str, list[float]]]:
    """Train a head on feature rows (flattened); same seed, same head. Returns (head, history)."""
    ensure_backend()
    import keras

    keras.utils.set_random_seed(seed)
    x_train = x_train.reshape(len(x_train), -1)
    x_val = x_val.reshape(len(x_val), -1)
    head = build_head(x_train.shape[1], num_classes, dropout, seed)
    head.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit = head.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val) if len(x_val) else None,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks or [],
        verbose=verbose,
    )
    return head, {k: [float(v) for v in vs] for k, vs in fit.history.items()}


def build_ensemble(specs: Sequence[FeatureSpec], head: Any, name: str = "features_ensemble"):
    """Raw RGB 0..255 at the shared size -> per-backbone branch -> concatenate -> head layers."""
    import keras

    size = specs[0].image_size
    if any(s.image_size != size for s in specs):
        raise ValueError("all branches of an ensemble take the same image size")
    inputs = keras.Input(shape=(size, size, 3), name="image")
    branches = []
    for spec in specs:
        resize = resizer(spec)
        x = build_body(spec)(resize(inputs) if resize is not None else inputs)
        if len(x.shape) > 2:
            x = keras.layers.Flatten(name=f"flatten_{spec.backbone}")(x)
        branches.append(x)
    x = branches[0] if len(branches) == 1 else keras.layers.Concatenate(name="concat")(branches)
    x = head.get_layer("head_dropout")(x)
    outputs = head.get_layer("predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def concat_features(store: Any, specs: Sequence[FeatureSpec], split: str) -> tuple:
    """(features concatenated in backbone order, labels, paths) of one split."""
    sets = [store.load(s.key, split=split) for s in specs]
    for other in sets[1:]:
        if other.paths != sets[0].paths:
            raise ValueError("feature groups list different images; re-run extract_features")
    x = np.concatenate([s.features.reshape(len(s.features), -1) for s in sets], axis=1)
    return x, sets[0].labels, sets[0].paths


def train_features(
    data: Any,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    output: str | os.PathLike | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    dropout: float = 0.5,
    seed: int = 0,
    features_path: str | os.PathLike | None = None,
    layer: str | None = None,
    pool: str = "avg",
    lr: float = 1e-3,
    val_split: float = 0.2,
    skip_bad: bool = False,
    progress: Progress | None = None,
    verbose: int = 0,
) -> FeaturesRun:
    """Extract (or reuse) features of ``backbones``, train the head, save one raw-image model.

    Args:
        data: dataset folder (layouts as in ``train``) or a scanned ``Dataset``.
        backbones: zoo names; their features are concatenated in this order.
        output: run directory (default ``runs/<YYYYmmdd-HHMMSS>-features``).
        features_path: the HDF5 cache (default ``RUN_DIR/features.h5``); pointing several
            runs at one file makes them share the extraction.
        layer, pool: which activations each backbone contributes (as ``extract_features``).

    Writes ``model.keras``, ``labels.json``, ``config.yaml`` and ``history.csv`` in the run
    directory. The model's input is the largest backbone size.

    Example:
        >>> run = train_features("pets/", ["lite0", "lite2"])  # doctest: +SKIP
        >>> kerascope.classify("cat.jpg", model=run.run_dir)  # doctest: +SKIP
    """
    ensure_backend()
    import keras

    from kerascope.data import scan_dataset
    from kerascope.train.recipes import save_config, versions
    from kerascope.zoo import registry

    if not backbones:
        raise ValueError("train_features needs at least one backbone")
    names = [registry.get(b).name for b in backbones]
    if len(set(names)) != len(names):
        raise ValueError(f"backbones repeat: {names}")
    run_dir = Path(output or time.strftime("runs/%Y%m%d-%H%M%S-features"))
    run_dir.mkdir(parents=True, exist_ok=True)
    features_path = Path(features_path or run_dir / "features.h5")
    dataset = data
    if isinstance(data, str | os.PathLike):
        dataset = scan_dataset(data, val_split=val_split, seed=seed, skip_bad=skip_bad)
    size = max(registry.get(n).input_size for n in names)
    specs = [FeatureSpec.make(n, layer, pool, size) for n in names]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    store = extract_features(dataset, names, layer, pool, features_path, batch_size,
                             progress=progress, image_size=size)  # fmt: skip
    seconds["extract"] = time.perf_counter() - start

    x_train, y_train, _ = concat_features(store, specs, "train")
    x_val, y_val, _ = concat_features(store, specs, "validation")
    start = time.perf_counter()
    log = keras.callbacks.CSVLogger(str(run_dir / "history.csv"))
    head, history = fit_head(x_train, y_train, x_val, y_val, len(dataset.classes), epochs,
                             batch_size, dropout, lr, seed, [log], verbose)  # fmt: skip
    seconds["fit"] = time.perf_counter() - start
    val_accuracy = float(np.mean(np.argmax(head.predict(x_val, verbose=0), -1) == y_val))

    start = time.perf_counter()
    model = build_ensemble(specs, head)
    model_path = run_dir / "model.keras"
    model.save(model_path)
    seconds["save"] = time.perf_counter() - start
    (run_dir / "labels.json").write_text(json.dumps({"classes": dataset.classes}, indent=1))
    info = {s.key: store.info(s.key) for s in specs}
    config = {
        "recipe": "features",
        "data": str(dataset.root),
        "backbones": names,
        "layer": layer,
        "pool": pool,
        "image_size": [size, size],
        "epochs": epochs,
        "batch_size": batch_size,
        "dropout": dropout,
        "lr": lr,
        "optimizer": "adam",
        "seed": seed,
        "val_split": val_split,
        "skip_bad": skip_bad,
        "features_path": str(features_path),
        "feature_groups": {k: {"weights_sha256": v["weights_sha256"]} for k, v in info.items()},
        "feature_dim": int(x_train.shape[1]),
        "classes": dataset.classes,
        "counts": dataset.counts,
        "val_accuracy": val_accuracy,
        "seconds": seconds,
        "versions": versions(),
    }
    save_config(run_dir, config)
    return FeaturesRun(run_dir, model_path, list(dataset.classes), history, val_accuracy,
                       features_path, dict(store.computed), seconds, head)  # fmt: skip
