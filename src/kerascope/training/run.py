"""``train``: a recipe on a folder dataset, into a run directory that survives Ctrl-C.

A run directory holds everything needed to use, reproduce or continue the run:
``config.yaml`` (every setting, defaults included), ``labels.json``, ``history.csv``,
``model.keras``, ``curves.png``, ``report.md``, ``split.json`` (which files each split used,
for ``evaluate``) and, with ``skip_bad``, ``skipped.txt``; while training also
``backup/stage<N>/`` (weights, optimizer, seed states and epoch, saved after every epoch),
``best.weights.h5`` (lowest validation loss so far) and ``run_state.json`` (which stage is
running), so an interruption loses at most the epoch in progress and ``resume=RUN_DIR``
continues exactly where the backup stands, in the right stage (``training.checkpoints``).

Every file goes through ``kerascope.files`` (temp name, fsync, rename): a kill or a full disk
leaves the previous version. One process writes a run at a time (``kerascope.rundir``
lock). The finishing steps run in an order that a kill at any point can resume from: the
final model is written from the best weights, then the report, then the state says "done",
and only then are the best weights and backups removed.
"""

from __future__ import annotations

import contextlib
import inspect
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

from kerascope.data.augment import AugmentConfig  # noqa: E402
from kerascope.errors import ConfigError, RunError  # noqa: E402
from kerascope.files import (  # noqa: E402
    OutputError,
    is_disk_error,
    write_json,
)
from kerascope.interrupts import interrupts_kept, stopped_by  # noqa: E402
from kerascope.keras_saving import fast_keras_saving  # noqa: E402
from kerascope.rundir import (  # noqa: E402
    LABELS_NAME,
    discard_new_run,
    lock_run,
    read_state,
    write_split,
    write_state,
)
from kerascope.training import devices as placing  # noqa: E402
from kerascope.training import recipes, run_data  # noqa: E402
from kerascope.training import resume as resuming  # noqa: E402
from kerascope.training.clock import RunClock  # noqa: E402
from kerascope.training.config_file import load_config, save_config  # noqa: E402
from kerascope.training.finish import finish_run, remove_leftovers  # noqa: E402
from kerascope.training.heads import UnfreezeSpec  # noqa: E402
from kerascope.training.outputs import check_task, task_of  # noqa: E402
from kerascope.training.recipes import class_weights  # noqa: E402
from kerascope.training.settings import resolve_config  # noqa: E402
from kerascope.training.stage import run_stage, unfreeze_point  # noqa: E402


@dataclass
class RunResult:
    """What a finished run produced; the files are in ``run_dir``."""

    run_dir: Path
    model_path: Path
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    val_accuracy: float  # of the saved model (the epoch with the lowest validation loss)
    best_val_accuracy: float  # highest over all epochs: not necessarily the saved model's
    final_val_accuracy: float
    seconds: float
    config: dict[str, Any]
    model: Any = field(default=None, repr=False)  # as saved: no augmentation layers
    val_loss: float = float("nan")  # of the saved model


@placing.refusals_told  # a process stopped before training tells the others
def train(
    data: str | os.PathLike | None = None,
    recipe: str | None = None,
    output: str | os.PathLike | None = None,
    backbone: str | list[str] | None = None,
    epochs: int | list[int] | None = None,
    batch_size: int | None = None,
    lr: float | list[float] | None = None,
    seed: int = 0,
    val_split: float = 0.2,
    skip_bad: bool = False,
    class_weight: str | dict | None = None,
    unfreeze: UnfreezeSpec | None = None,
    augment: bool | AugmentConfig = True,
    image_size: int | tuple[int, int] | None = None,
    patience: int | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    callbacks: list | None = None,
    engine: str | None = None,
    layer: str | None = None,
    pool: str = "avg",
    head: str | list[str] | None = None,
    dropout: float | None = None,
    optimizer: str | list[str] | None = None,
    momentum: float | None = None,
    lr_schedule: str | list[str] | None = None,
    weights: str | os.PathLike | list[str] | None = None,
    precision: str | None = None,
    label_smoothing: float | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    init_from: str | os.PathLike | None = None,
    binary: bool = False,
    time_budget: float | None = None,
    devices: placing.DeviceSpec = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> RunResult:
    """Train ``recipe`` on the class folders in ``data`` and write a run directory.

    Args:
        data: dataset folder (``DATA/<class>/`` or ``DATA/train|validation/<class>/``);
            with ``resume``: omitted, or where the run's dataset moved to.
        recipe: ``scratch``, ``lenet``, ``transfer`` (default), ``finetune`` or ``features`` (see
            ``recipes``).
        output: the run directory; default ``runs/<YYYYmmdd-HHMMSS>-<recipe>``.
        backbone: zoo model under ``transfer``/``finetune`` (default ``efficientnet_lite0``);
            under ``features`` several, as a list or comma-separated (default
            ``efficientnet_lite0,efficientnet_lite1``).
        epochs: epochs per stage; one int applies to every stage, a list gives each. Given,
            they win over a time budget.
        time_budget: minutes the run may take: each stage's epochs come from its measured
            epoch time (``kerascope.training.budget``), up to the recipe's. Default: the
            recipe's (finetune: 15; others none: their fixed epochs); 0 turns it off.
            ``config.yaml``'s ``epochs_rule`` says which ruled.
        batch_size, image_size, patience: override the recipe's defaults.
        lr: learning rate; a float sets the first stage only (finetune's stage 2 keeps its
            low SGD rate, the point of that stage), a list sets each stage.
        seed: seeds weights, augmentation, split and batch order: same seed, same run.
        val_split: validation share when ``data`` has no validation folder.
        skip_bad: leave unreadable images out instead of stopping.
        class_weight: ``None``, ``"auto"`` (n / (k * n_c), so every class weighs the same in
            the loss) or ``{class name or index: weight}``.
        unfreeze: what finetune's stage 2 trains: a fraction in (0, 1) of the top layers
            (default 0.2), the index of the first layer to train in keras.applications'
            numbering (the InceptionV3 guide's 249), a layer name, or ``"all"`` (see
            ``heads.unfreeze_start``).
        augment: ``True`` for the recipe's augmentation, ``False`` for none, or a config.
        resume: a run directory to continue from its ``config.yaml`` and backup, on the split
            its ``split.json`` records (files gone are dropped, new ones left out, each said).
            The run continues as it was configured: ``epochs`` (an int: each stage not finished yet;
            a list: every stage, finished ones unchanged) and ``patience`` are honoured, any
            other setting given that differs from ``config.yaml`` is refused (RunError).
        progress: Keras progress bar per epoch and a line per stage.
        callbacks: extra Keras callbacks, run after kerascope's own in every stage.
        engine: ``None``/``"auto"``: on a CPU, or on any device when nothing is augmented,
            the frozen part of a backbone recipe runs on the inference engine and only the
            trainable part trains in Keras (``kerascope.training.split``); ``"keras"`` trains the
            whole graph in Keras (the GPU default with augmentation). Default:
            ``KERASCOPE_ENGINE``, else auto. Results are the same.
        layer, pool: ``features`` only: the backbone layer whose activations are taken
            (default: the last) and their pooling (``avg``, ``max`` or ``none``).
        head: the classifier on the backbone, before the final ``Dense(classes, softmax)``:
            parts as a list or comma-separated, ``gap``, ``gmp``, ``flatten``,
            ``dropout[:RATE]``, ``dense:UNITS`` (ReLU). Default ``gap,dropout`` (``dropout``
            for ``features``), the shape CAM explains in closed form.
        dropout: rate of the head's ``dropout`` parts given without one (default: the
            recipe's).
        optimizer: ``rmsprop``, ``adam``, ``sgd`` or ``adadelta``; like ``lr``, one name sets
            the first stage, a list (or ``"rmsprop,sgd"``) each stage.
        momentum: SGD's momentum (default 0.9, the fine-tuning guide's).
        lr_schedule: ``constant``, ``inverse-time:DECAY`` (Keras 2's ``decay=DECAY``) or
            ``cosine`` (to 0 over the stage); one for every stage, or a list.
        weights: the backbone's weights file (default: the zoo's ImageNet file); for
            ``features`` one per backbone, as a list or comma-separated.
        precision: ``auto`` (default, or ``KERASCOPE_PRECISION``: bfloat16 on devices that
            compute it natively, else float32), ``float32``, ``bfloat16`` or ``float16``: the
            compute type of the layers being trained, under Keras mixed policies (float32
            weights, the output layer in float32, loss scaling for float16). Stored resolved
            in ``config.yaml``; a resume keeps the run's unless given.
        label_smoothing, mixup, cutmix: batch regularisers (``kerascope.data.regularise``):
            targets ``(1 - e) * one_hot + e / classes``; mixup's and CutMix's Beta(a, a)
            parameter (0 or None: off; both on: each batch takes one). Applied where the
            augmentation runs (on the device in the whole graph, before the prefix when split).
        init_from: an earlier run directory or ``.keras`` file: its layers with the same names
            (the head; the backbone when it was fine-tuned) start this run
            (``kerascope.training.init_from``; other shapes: ConfigError naming the layer).
        binary: a two-class folder trains one sigmoid unit (the probability of its second
            class) with binary cross-entropy, as the seed's cats-vs-dogs model; a folder with
            another number of classes is refused (``kerascope.training.outputs``). A ``data``
            that is a ``.csv`` of ``path,labels`` trains a multi-label sigmoid head instead
            (``kerascope.training.multilabel``).

        devices: ``"all"`` (default: every accelerator; one CPU device unless virtual ones
            are forced), a count, or device numbers (``"0,2,5"``): data-parallel training
            with ``keras.distribution.DataParallel`` (``kerascope.training.devices``).
            ``batch_size`` is the global batch, split evenly over the devices, and ``lr``
            applies to it unchanged (``config.yaml``'s ``devices.lr_rule``).
        coordinator, num_processes, process_id: a run over several processes (machines),
            joined through ``keras.distribution.initialize`` (default: Keras's
            ``KERAS_DISTRIBUTION_*`` variables): each process feeds its shard of every
            batch, and only process 0 writes the run directory.

    Raises:
        kerascope.data.DatasetError: the dataset cannot be trained on (message says why).
        kerascope.errors.RunError: ``output`` already holds a run or other files, another
            process is writing it, or ``resume`` cannot continue it (message says why).
        kerascope.files.OutputError: a file could not be written (a full disk): ``resume``
            continues once there is space.
        KeyboardInterrupt: after saving; ``resume`` the run directory to continue.

    Example:
        >>> result = train("data/cats_dogs", recipe="transfer", epochs=5)  # doctest: +SKIP
        >>> kerascope.classify("new.jpg", model=result.run_dir)  # doctest: +SKIP
    """
    ensure_backend()
    began = time.monotonic()  # report.md's wall time counts from here
    placing.join_cluster(coordinator, num_processes, process_id)  # before JAX computes
    if resume is not None:
        run_dir = Path(resume)
        config = load_config(run_dir)
        given = _given_options(locals())
        if moved := run_data.resumed_data(run_dir, config, data):  # the run's files, moved
            config["data"] = moved
            given.pop("data", None)
        if precision is not None:  # not the network's shape: a resume may change it
            from kerascope.precision import resolve_precision

            config["precision"] = resolve_precision(precision)
    else:
        if data is None:
            raise ConfigError("train needs a dataset folder (or resume=RUN_DIR)")
        recipe = recipe or "transfer"
        if str(data).lower().endswith(".csv"):  # path,labels: a multi-label dataset
            from kerascope.training.multilabel import TAKES, train_multilabel

            given = _given_options(locals())
            flags = [resuming.FLAGS[name] for name in given if name not in TAKES]
            flags += placing.parallel_flags(devices)  # it trains on one device of one process
            return train_multilabel(data, recipe, output, backbone=backbone, epochs=epochs,
                                    batch_size=batch_size, lr=lr, seed=seed,
                                    val_split=val_split, image_size=image_size,
                                    patience=patience, head=head, dropout=dropout,
                                    optimizer=optimizer, weights=weights, progress=progress,
                                    augment=augment, layer=layer, pool=pool,
                                    refused=flags)  # fmt: skip
        config = resolve_config(data, recipe, output, backbone, epochs, batch_size, lr, seed,
                                val_split, skip_bad, class_weight, unfreeze, augment,
                                image_size, patience, layer=layer, pool=pool, head=head,
                                dropout=dropout, optimizer=optimizer, momentum=momentum,
                                lr_schedule=lr_schedule, weights=weights,
                                precision=precision, label_smoothing=label_smoothing,
                                time_budget=time_budget,
                                mixup=mixup, cutmix=cutmix, init_from=init_from,
                                task="binary" if binary else "multiclass")  # fmt: skip
        run_dir = Path(config["output"])
        run_data.check_output_outside(config["data"], run_dir)
        if run_dir.exists() and not (run_dir / "config.yaml").exists():
            _check_new_output(run_dir)  # a file or someone's folder: refused, no lock left there
    parallel = placing.data_parallel(devices, config["batch_size"])  # refused before writing
    shared = run_dir  # what every process reports; only process 0 writes it
    writes = placing.private_run_dir(run_dir, resume is not None)
    with parallel as placement, writes as run_dir, lock_run(run_dir, create=resume is None):
        config["devices"] = placement.record(config["batch_size"])
        placing.check_same_options(config)  # every process: the same settings
        if resume is None:
            _check_new_output(run_dir)  # under the lock: two starts cannot both pass
        else:
            state = read_state(run_dir)
            _refuse_finished(run_dir, state)
            config = resuming.apply_options(run_dir, config, state, given)
        before = {p.name for p in run_dir.iterdir()}
        try:
            # A process that died: one line, not a hang; a Ctrl-C is never lost.
            with interrupts_kept(), placing.peers_watched(shared):
                result = _train(run_dir, config, resume is not None, engine, progress,
                                callbacks, RunClock(began, resume is not None))  # fmt: skip
            return placing.reported(result, shared)
        except Exception as exc:
            fresh = resume is None and not _saved_an_epoch(run_dir)
            if fresh:  # nothing worth resuming: leave the folder as it was
                discard_new_run(run_dir, before)
            then = ("then run the same command again" if fresh
                    else f"then continue with `kerascope train --resume {run_dir}`")  # fmt: skip
            if isinstance(exc, OutputError):
                raise OutputError(f"{exc}; {then}") from exc
            if not is_disk_error(exc):
                raise
            raise OutputError(f"could not write into '{run_dir}': no space left on the device; "
                              f"free some space, {then}") from exc  # fmt: skip


def _saved_an_epoch(run_dir: Path) -> bool:
    """Whether the run has anything a resume would continue from (an epoch, a backup)."""
    try:
        state = read_state(run_dir)
    except RunError:
        return True  # a damaged state is kept for the user to look at, never deleted
    return bool(state.get("epoch") or state.get("completed_stages")
                or (run_dir / "backup").exists())  # fmt: skip


def _given_options(args: dict[str, Any]) -> dict[str, Any]:
    """The run settings passed to ``train`` with a value other than their default."""
    defaults = inspect.signature(train).parameters
    return {name: args[name] for name in resuming.FLAGS
            if not _equal(args[name], defaults[name].default)}  # fmt: skip


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # arrays and other odd values: treat as given
        return False


def _check_new_output(run_dir: Path) -> None:
    """A new run starts in a new or empty folder, never over another run or other files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output '{run_dir}' is a file: choose a folder for the run")
    if (run_dir / "config.yaml").exists():
        if read_state(run_dir).get("status") == "done":
            raise RunError(f"'{run_dir}' already holds a finished run (its model is "
                           f"'{run_dir / 'model.keras'}'): choose another output")  # fmt: skip
        raise RunError(f"'{run_dir}' already holds an unfinished run: continue it with "
                       f"`kerascope train --resume {run_dir}`, or choose another "
                       "output")  # fmt: skip
    if run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir()):
        raise RunError(f"output '{run_dir}' exists and is not empty (and holds no run): "
                       "choose a new or empty folder")  # fmt: skip


def _refuse_finished(run_dir: Path, state: dict[str, Any]) -> None:
    """A finished run is not trained again; leftovers of a kill during cleanup are removed."""
    if state.get("status") != "done":
        return
    remove_leftovers(run_dir)
    raise RunError(f"run '{run_dir}' already finished; its model is '{run_dir}/model.keras' "
                   "(start a new run to train longer)")  # fmt: skip


def _train(run_dir: Path, config: dict[str, Any], resumed: bool, engine: str | None,
           progress: bool, callbacks: list | None, clock: RunClock) -> RunResult:  # fmt: skip
    """`_train_stages`, saying on a stop what a resume continues from: in the scan or setup,
    an epoch or the finishing steps (before, only a stop in an epoch said it)."""
    try:
        return _train_stages(run_dir, config, resumed, engine, progress, callbacks, clock)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP (kerascope.interrupts)
        with contextlib.suppress(OutputError, RunError):
            state = read_state(run_dir)
            if (run_dir / "config.yaml").is_file() and state.get("status") != "done":
                write_state(run_dir, {**state, "status": "interrupted"})
        if progress:
            told = resuming.what_resumes(run_dir, len(config["stages"]))
            print(f"\n{stopped_by(stop)}: {told}", file=sys.stderr)
            stop.told = True  # the command adds no line of its own
        raise


def _train_stages(run_dir: Path, config: dict[str, Any], resumed: bool, engine: str | None,
                  progress: bool, callbacks: list | None,
                  clock: RunClock) -> RunResult:  # fmt: skip
    """Scan, build and fit every stage not finished yet, then finish; under the run's lock.
    ``clock``: where the wall time goes (report.md), from `train`'s start."""
    from kerascope.data import make_sequences, scan_dataset

    started = time.monotonic()  # a time budget counts from here
    clock.add("checks", started - clock.started)
    fast_keras_saving()  # the backbones' weights load faster too
    dataset = scan_dataset(config["data"], config["val_split"], config["seed"], config["skip_bad"])
    if resumed and not run_data.same_classes(dataset.classes, config["classes"]):
        raise RunError(f"classes in '{config['data']}' changed since '{run_dir}' started: "
                         f"{dataset.classes} vs {config['classes']}")  # fmt: skip
    if resumed:  # the split it started with: never a held-out image trained on
        dataset = run_data.keep_recorded_split(run_dir, dataset)
    run_data.note_copies(dataset)
    placing.check_same_data(dataset)  # every process: the same images, before any is written
    check_task(task_of(config), dataset.classes, config["data"])  # --binary: two classes
    config["classes"], config["counts"] = dataset.classes, dataset.counts
    config["devices"] = placing.step_record(config["devices"], config["batch_size"],
                                            sum(dataset.counts["train"].values()))  # fmt: skip
    save_config(run_dir, config)
    write_json(run_dir / LABELS_NAME, {"classes": dataset.classes})
    write_split(run_dir, config["data"], dataset.splits)
    run_data.report_scan(dataset, run_dir, progress, weighted=config["class_weight"] is not None)

    recipe_ = recipes.get_recipe(config["recipe"])
    if progress and (tiny := recipes.too_small_to_see(recipe_, config["image_size"])):
        print(f"warning: {tiny}", file=sys.stderr)
    devices = config["devices"]["count"]
    seqs = make_sequences(dataset, tuple(config["image_size"]), config["batch_size"],
                          config["seed"], multiple=devices, cache=True,
                          share=placing.process_share())  # fmt: skip
    if progress and seqs["train"].batch_size < config["batch_size"]:
        print(f"batch size {config['batch_size']} is more than the {len(seqs['train'].paths)} "
              f"training images: each step takes {seqs['train'].batch_size}")  # fmt: skip
    for seq in (seqs["train"], seqs["validation"]):
        seq.fill_cache()  # decoded once, on every core (several processes: each its rows)
    clock.add("scan", time.monotonic() - started)
    built = time.monotonic()
    placing.start_together("train")  # every process scanned its data: the collectives begin
    keras.utils.set_random_seed(config["seed"])
    augment_cfg = AugmentConfig(**config["augment"]) if config["augment"] else None
    model = recipes.build_model(recipe_, len(dataset.classes), tuple(config["image_size"]),
                                augment_cfg, config["seed"], config["backbone"],
                                backbone_weights=config.get("weights") or "imagenet",
                                dropout=config["dropout"], layer=config.get("layer"),
                                pool=config.get("pool", "avg"), head=config.get("head"),
                                task=task_of(config), zero_head=True)  # fmt: skip
    if config.get("init_from"):  # an earlier run's head (and matching layers)
        from kerascope.training.init_from import load_init_weights

        copied = load_init_weights(model, config["init_from"], dataset.classes)
        if progress:
            print(f"init from {config['init_from']}: {', '.join(copied)}")
    weights = class_weights(config["class_weight"], dataset.classes, dataset.counts["train"])
    state = read_state(run_dir)
    verbose = (1 if sys.stdout.isatty() else 0) if progress else 0
    mixes = bool(config.get("mixup") or config.get("cutmix"))  # pixels change every epoch
    split = use_split(engine, augmented=bool(config["augment"]) or mixes)
    from kerascope.inference import requested_engine

    forced = requested_engine(engine) != "auto"  # else a stage resumes as its backup trained
    from kerascope.training.split import prefix_engine

    asked_prefix = prefix_engine(engine)  # --engine's, not only KERASCOPE_ENGINE's
    config.setdefault("precision", "float32")  # runs made before --precision trained so
    if progress:
        print(run_data.precision_line(config["precision"]))
    trained_here = False
    clock.add("setup", time.monotonic() - built)
    try:
        for index, stage in enumerate(config["stages"]):
            if index < state.get("completed_stages", 0):
                recipes.prepare_stage(model, index, unfreeze_point(config, stage))
                continue
            trained_here = True
            with clock.part("stage"):
                run_stage(model, run_dir, config, index, stage, seqs, weights, verbose,
                          callbacks, split, progress, started, forced, asked_prefix,
                          clock)  # fmt: skip
            write_state(run_dir, {**read_state(run_dir), "completed_stages": index + 1})
            shutil.rmtree(run_dir / "backup" / f"stage{index + 1}", ignore_errors=True)
    except KeyboardInterrupt:
        raise  # said by `_train`
    except Exception:
        with contextlib.suppress(Exception):
            write_state(run_dir, {**read_state(run_dir), "status": "failed"})
        raise
    return _finish(model, run_dir, config, dataset.summary(), trained_here, clock)


def use_split(engine: str | None = None, augmented: bool = True) -> bool:
    """Whether backbone stages train split (frozen prefix on the inference engine): on a CPU,
    and on any device when nothing is augmented (the prefix then runs once per stage, not once
    per epoch), unless ``engine`` or ``KERASCOPE_ENGINE`` asks for the whole graph in Keras."""
    from kerascope.inference import on_cpu, requested_engine

    wanted = requested_engine(engine)
    return wanted in ("onnx", "openvino") or (wanted == "auto" and (on_cpu() or not augmented))


def _finish(model, run_dir: Path, config: dict, summary: str, trained_here: bool,
            clock: RunClock) -> RunResult:  # fmt: skip
    """`finish.finish_run`'s steps, then the run's result."""
    saved, history, outcome = finish_run(model, run_dir, config, summary, trained_here, clock)
    return RunResult(
        run_dir=run_dir,
        model_path=run_dir / "model.keras",
        classes=list(config["classes"]),
        history=history,
        best_epoch=outcome["best_epoch"],
        val_accuracy=outcome["val_accuracy"],
        best_val_accuracy=outcome["best_val_accuracy"],
        final_val_accuracy=outcome["final_val_accuracy"],
        seconds=outcome["seconds"],
        config=config,
        model=saved,
        val_loss=outcome["val_loss"],
    )
