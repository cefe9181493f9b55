"""``train``: a recipe on a folder dataset, into a run directory that survives Ctrl-C.

A run directory holds everything needed to use, reproduce or continue the run:
``config.yaml`` (every setting, defaults included), ``labels.json``, ``history.csv``,
``model.keras``, ``curves.png``, ``report.md``; while training also ``backup/stage<N>/``
(Keras ``BackupAndRestore``: weights, optimizer and epoch, saved after every epoch),
``best.weights.h5`` (lowest validation loss so far) and ``run_state.json`` (which stage is
running), so an interruption loses at most the epoch in progress and ``resume=RUN_DIR``
continues exactly where the backup stands, in the right stage.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerascope.data.affine import random_affine  # noqa: E402
from kerascope.data.augment import AugmentConfig  # noqa: E402
from kerascope.errors import ConfigError, RunError  # noqa: E402
from kerascope.fast_convs import fast_convs  # noqa: E402
from kerascope.report import plot_curves, read_history, write_history, write_run_report  # noqa: E402
from kerascope.training import recipes  # noqa: E402
from kerascope.training.heads import DEFAULT_UNFREEZE, UnfreezeSpec, parameter_counts  # noqa: E402
from kerascope.training.progress import TrainProgress  # noqa: E402
from kerascope.training.recipes import class_weights, load_config, resolve_config, save_config  # noqa: E402
from kerascope.training.split import PrefixSequence, SplitModel, split_model  # noqa: E402

MONITOR = "val_loss"  # finer-grained than accuracy on small validation sets, where it ties


@dataclass
class RunResult:
    """What a finished run produced; the files are in ``run_dir``."""

    run_dir: Path
    model_path: Path
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    val_accuracy: float  # of the saved model (the epoch with the lowest validation loss)
    best_val_accuracy: float
    final_val_accuracy: float
    seconds: float
    config: dict[str, Any]
    model: Any = field(default=None, repr=False)  # as saved: no augmentation layers


def train(
    data: str | os.PathLike | None = None,
    recipe: str = "transfer",
    output: str | os.PathLike | None = None,
    backbone: str | list[str] | None = None,
    epochs: int | list[int] | None = None,
    batch_size: int | None = None,
    lr: float | list[float] | None = None,
    seed: int = 0,
    val_split: float = 0.2,
    skip_bad: bool = False,
    class_weight: str | dict | None = None,
    unfreeze: UnfreezeSpec = DEFAULT_UNFREEZE,
    augment: bool | AugmentConfig = True,
    image_size: int | tuple[int, int] | None = None,
    patience: int | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    callbacks: list | None = None,
    engine: str | None = None,
    layer: str | None = None,
    pool: str = "avg",
) -> RunResult:
    """Train ``recipe`` on the class folders in ``data`` and write a run directory.

    Args:
        data: dataset folder (``DATA/<class>/`` or ``DATA/train|validation/<class>/``);
            may be omitted with ``resume``.
        recipe: ``scratch``, ``lenet``, ``transfer``, ``finetune`` or ``features`` (see
            ``recipes``).
        output: the run directory; default ``runs/<YYYYmmdd-HHMMSS>-<recipe>``.
        backbone: zoo model under ``transfer``/``finetune`` (default ``efficientnet_lite0``);
            under ``features`` several, as a list or comma-separated (default
            ``efficientnet_lite0,efficientnet_lite1``).
        epochs: epochs per stage; one int applies to every stage, a list gives each.
        batch_size, image_size, patience: override the recipe's defaults.
        lr: learning rate; a float sets the first stage only (finetune's stage 2 keeps its
            low SGD rate, the point of that stage), a list sets each stage.
        seed: seeds weights, augmentation, split and batch order: same seed, same run.
        val_split: validation share when ``data`` has no validation folder.
        skip_bad: leave unreadable images out instead of stopping.
        class_weight: ``None``, ``"auto"`` (n / (k * n_c), so every class weighs the same in
            the loss) or ``{class name or index: weight}``.
        unfreeze: what finetune's stage 2 trains (see ``heads.unfreeze_start``).
        augment: ``True`` for the recipe's augmentation, ``False`` for none, or a config.
        resume: a run directory to continue from its ``config.yaml`` and backup (the
            other arguments are ignored: the run continues as it was configured).
        progress: Keras progress bar per epoch and a line per stage.
        callbacks: extra Keras callbacks, run after kerascope's own in every stage.
        engine: ``None``/``"auto"``: on a CPU, or on any device when nothing is augmented,
            the frozen part of a backbone recipe runs on the inference engine and only the
            trainable part trains in Keras (``kerascope.training.split``); ``"keras"`` trains the
            whole graph in Keras (the GPU default with augmentation). Default:
            ``KERASCOPE_ENGINE``, else auto. Results are the same.
        layer, pool: ``features`` only: the backbone layer whose activations are taken
            (default: the last) and their pooling (``avg``, ``max`` or ``none``).

    Raises:
        kerascope.data.DatasetError: the dataset cannot be trained on (message says why).
        KeyboardInterrupt: after saving; ``resume`` the run directory to continue.

    Example:
        >>> result = train("data/cats_dogs", recipe="transfer", epochs=5)  # doctest: +SKIP
        >>> kerascope.classify("new.jpg", model=result.run_dir)  # doctest: +SKIP
    """
    ensure_backend()
    from kerascope.data import make_sequences, scan_dataset

    if resume is not None:
        run_dir = Path(resume)
        config = load_config(run_dir)
    else:
        if data is None:
            raise ConfigError("train needs a dataset folder (or resume=RUN_DIR)")
        config = resolve_config(data, recipe, output, backbone, epochs, batch_size, lr, seed,
                                val_split, skip_bad, class_weight, unfreeze, augment,
                                image_size, patience, layer=layer, pool=pool)  # fmt: skip
        run_dir = Path(config["output"])
        if (run_dir / "config.yaml").exists():
            raise RunError(f"'{run_dir}' already holds a run: choose another output, or "
                             "continue it with resume")  # fmt: skip
    dataset = scan_dataset(config["data"], config["val_split"], config["seed"], config["skip_bad"])
    if resume is not None and dataset.classes != config["classes"]:
        raise RunError(f"classes in '{config['data']}' changed since '{run_dir}' started: "
                         f"{dataset.classes} vs {config['classes']}")  # fmt: skip
    config["classes"], config["counts"] = dataset.classes, dataset.counts
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a bad dataset leaves no empty run
    save_config(run_dir, config)
    (run_dir / "labels.json").write_text(json.dumps({"classes": dataset.classes}, indent=1))

    recipe_ = recipes.get_recipe(config["recipe"])
    seqs = make_sequences(dataset, tuple(config["image_size"]), config["batch_size"],
                          config["seed"], cache=True)  # fmt: skip
    for seq in (seqs["train"], seqs["validation"]):
        seq.fill_cache()
    keras.utils.set_random_seed(config["seed"])
    augment_cfg = AugmentConfig(**config["augment"]) if config["augment"] else None
    model = recipes.build_model(recipe_, len(dataset.classes), tuple(config["image_size"]),
                                augment_cfg, config["seed"], config["backbone"],
                                dropout=config["dropout"], layer=config.get("layer"),
                                pool=config.get("pool", "avg"))  # fmt: skip
    weights = class_weights(config["class_weight"], dataset.classes, dataset.counts["train"])
    state = _read_state(run_dir)
    if state.get("status") == "done":
        raise RunError(f"run '{run_dir}' already finished; its model is '{run_dir}/model.keras'")
    verbose = (1 if sys.stdout.isatty() else 0) if progress else 0
    split = use_split(engine, augmented=bool(config["augment"]))
    try:
        for index, stage in enumerate(config["stages"]):
            if index < state.get("completed_stages", 0):
                recipes.prepare_stage(model, index, config["unfreeze"])
                continue
            _run_stage(model, run_dir, config, index, stage, seqs, weights, verbose, callbacks,
                       split, progress)  # fmt: skip
            _write_state(run_dir, {**_read_state(run_dir), "completed_stages": index + 1})
    except KeyboardInterrupt:
        _write_state(run_dir, {**_read_state(run_dir), "status": "interrupted"})
        if progress:
            print(f"\ninterrupted: continue with `kerascope train --resume {run_dir}`",
                  file=sys.stderr)  # fmt: skip
        raise
    return _finish(model, run_dir, config, dataset.summary())


def use_split(engine: str | None = None, augmented: bool = True) -> bool:
    """Whether backbone stages train split (frozen prefix on the inference engine): on a CPU,
    and on any device when nothing is augmented (the prefix then runs once per stage, not once
    per epoch), unless ``engine`` or ``KERASCOPE_ENGINE`` asks for the whole graph in Keras."""
    from kerascope.inference import on_cpu, requested_engine

    wanted = requested_engine(engine)
    return wanted == "onnx" or (wanted == "auto" and (on_cpu() or not augmented))


def _run_stage(model, run_dir: Path, config: dict, index: int, stage: dict, seqs, weights,
               verbose: int, extra: list | None, split: bool, progress: bool) -> None:  # fmt: skip
    """One ``fit``: flags, optimizer, callbacks; epochs are numbered across stages."""
    fine_tuned = recipes.prepare_stage(model, index, config["unfreeze"])
    backup = run_dir / "backup" / f"stage{index + 1}"
    best = run_dir / "best.weights.h5"
    if index > 0 and best.is_file() and not backup.is_dir():
        model.load_weights(best)  # stage 2 starts from stage 1's best, as the guide does
    parts = split_model(model) if split else None
    trained = parts.suffix if parts else model
    trained.compile(optimizer=recipes.make_optimizer(stage["optimizer"], stage["lr"]),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
    start = sum(s["epochs"] for s in config["stages"][:index])
    end = start + stage["epochs"]
    resumed = _backup_epoch(backup)
    seqs["train"].set_epoch(resumed if resumed is not None else start)
    history = read_history(run_dir / "history.csv")
    seen = [r["val_loss"] for r in history if r["val_loss"] is not None]
    if progress:
        trainable, frozen = parameter_counts(model)
        what = f", fine-tuning {len(fine_tuned)} backbone layers" if fine_tuned else ""
        again = f", resuming after epoch {resumed}" if resumed else ""
        print(f"stage {index + 1}/{len(config['stages'])}: {stage['optimizer']} "
              f"lr={stage['lr']:g}, epochs {start + 1}-{end}{what} ({trainable:,} trainable, "
              f"{frozen:,} frozen parameters){again}")  # fmt: skip
        if parts is not None:
            from kerascope.inference import engine_name

            cut = f"from '{parts.cut}' on" if parts.cut else "head only"
            print(f"  split training: frozen prefix on {engine_name(parts.prefix)}, "
                  f"Keras trains {cut}")  # fmt: skip
    train_data, val_data = seqs["train"], seqs["validation"]
    if parts is not None:
        train_data, val_data = _prefix_sequences(parts, seqs, config, run_dir, progress)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup)),
        _FullModelCheckpoint(model, str(best), monitor=MONITOR, save_best_only=True,
                             save_weights_only=True,
                             initial_value_threshold=min(seen) if seen else None),
        keras.callbacks.EarlyStopping(monitor=MONITOR, patience=config["patience"]),
        _EpochLog(run_dir, index + 1, backup),
        *([TrainProgress(len(seqs["train"].paths), end - start)] if progress else []),
        *(extra or []),
    ]  # fmt: skip
    trained._initial_epoch = None  # set by a previous stage's BackupAndRestore, never reset
    with fast_convs():
        trained.fit(train_data, validation_data=val_data, epochs=end, initial_epoch=start,
                    callbacks=callbacks, class_weight=weights, shuffle=False,
                    verbose=verbose)  # fmt: skip


def _prefix_sequences(parts: SplitModel, seqs, config: dict, run_dir: Path, progress: bool):
    """Train and validation batches through the stage's compiled prefix; validation (and
    training without augmentation) runs the prefix once and reuses its outputs."""
    from kerascope.inference import compiled

    forward = compiled(parts.prefix)
    augment = None
    if config["augment"]:
        augment = random_affine(AugmentConfig(**config["augment"]), config["seed"])
    scratch = run_dir / "backup" / "prefix-outputs"
    out = []
    for name, aug in (("train", augment), ("validation", None)):
        bar = _precompute_bar(name, progress) if aug is None else None
        out.append(PrefixSequence(seqs[name], forward, aug, scratch=scratch, progress=bar))
    return out


def _precompute_bar(split: str, progress: bool):
    """A line when the prefix outputs of a split are computed (once per stage)."""
    if not progress:
        return None

    def report(done: int, total: int) -> None:
        if done == total:
            print(f"  {split}: frozen prefix computed once for {total} batch(es)", flush=True)

    return report


class _FullModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves the whole network's weights while a split stage fits
    only its suffix (the two share their variables)."""

    def __init__(self, full_model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._full = full_model

    def set_model(self, model) -> None:
        super().set_model(self._full)


class _EpochLog(keras.callbacks.Callback):
    """Appends each epoch to ``history.csv`` (rewriting epochs redone after a resume) and
    backs up the random-layer seed states, which ``save_weights`` leaves out: without them a
    resumed run would draw different augmentations and dropout masks than an unbroken one."""

    def __init__(self, run_dir: Path, stage: int, backup: Path):
        super().__init__()
        self.run_dir, self.stage, self.backup = run_dir, stage, backup
        self.started = time.perf_counter()

    def _seed_states(self) -> list:
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def on_train_begin(self, logs=None) -> None:
        saved = self.backup / "seeds.npz"
        states = self._seed_states()
        if saved.is_file():
            with np.load(saved) as arrays:
                if len(arrays.files) == len(states):
                    for i, v in enumerate(states):
                        v.assign(arrays[f"s{i}"])

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        path = self.run_dir / "history.csv"
        rows = [r for r in read_history(path) if r["epoch"] <= epoch]
        lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        row = {k: logs.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        seconds = round(time.perf_counter() - self.started, 3)
        rows.append({"epoch": epoch + 1, "stage": self.stage, **row, "lr": float(lr),
                     "seconds": seconds})  # fmt: skip
        write_history(path, rows)
        if self.backup.is_dir():
            states = {f"s{i}": keras.ops.convert_to_numpy(v) for i, v in
                      enumerate(self._seed_states())}  # fmt: skip
            np.savez(self.backup / "seeds.npz", **states)
        state = {**_read_state(self.run_dir), "stage": self.stage, "epoch": epoch + 1}
        _write_state(self.run_dir, {**state, "status": "running"})


def _finish(model, run_dir: Path, config: dict, summary: str) -> RunResult:
    """Restore the best weights, save the model and write the report."""
    best = run_dir / "best.weights.h5"
    if best.is_file():
        model.load_weights(best)
    model_path = run_dir / "model.keras"
    model = recipes.inference_model(model)
    model.save(model_path)
    best.unlink(missing_ok=True)  # model.keras holds these weights now
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # each stage's backup is gone already
    history = read_history(run_dir / "history.csv")
    with_val = [r for r in history if r["val_loss"] is not None] or history
    top = min(with_val, key=lambda r: r["val_loss"] if r["val_loss"] is not None else 0.0)
    accuracies = [r["val_accuracy"] for r in with_val if r["val_accuracy"] is not None]
    outcome = {
        "best_epoch": int(top["epoch"]),
        "val_accuracy": top["val_accuracy"],
        "val_loss": top["val_loss"] or float("nan"),
        "best_val_accuracy": max(accuracies, default=float("nan")),
        "final_val_accuracy": history[-1]["val_accuracy"],
        "epochs": int(history[-1]["epoch"]),
        "seconds": float(sum(r["seconds"] or 0.0 for r in history)),
    }
    plot_curves(history, run_dir / "curves.png")
    write_run_report(run_dir / "report.md", config, summary, outcome)
    _write_state(run_dir, {"completed_stages": len(config["stages"]), "status": "done",
                           "outcome": outcome})  # fmt: skip
    return RunResult(
        run_dir=run_dir,
        model_path=model_path,
        classes=list(config["classes"]),
        history=history,
        best_epoch=outcome["best_epoch"],
        val_accuracy=outcome["val_accuracy"],
        best_val_accuracy=outcome["best_val_accuracy"],
        final_val_accuracy=outcome["final_val_accuracy"],
        seconds=outcome["seconds"],
        config=config,
        model=model,
    )


def _backup_epoch(backup: Path) -> int | None:
    """The epoch ``BackupAndRestore`` will resume after, if it has a backup."""
    meta = backup / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return None


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run_state.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / "run_state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_dir / "run_state.json")
