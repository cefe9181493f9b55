"""One stage of a training run: the layers it trains, its optimizer and callbacks, split or
whole-graph batches, a time budget's plan, and the ``fit``. `kerascope.training.run` keeps the
run's order of work (settings, folder, scan, stages, finish) and calls this once per stage."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from kerascope.config import ensure_backend

ensure_backend()  # the user's backend (JAX if none is usable) before Keras loads
import keras  # noqa: E402

from kerascope.data.augment import AugmentConfig  # noqa: E402
from kerascope.data.regularise import RegulariseConfig  # noqa: E402
from kerascope.fast_convs import fast_convs  # noqa: E402
from kerascope.rundir import read_state  # noqa: E402
from kerascope.training import budget, recipes  # noqa: E402
from kerascope.training import devices as placing  # noqa: E402
from kerascope.training.checkpoints import (  # noqa: E402
    Backup,
    BestCheckpoint,
    backup_epoch,
    backup_trainer,
    load_best,
    trainer_mismatch,
)
from kerascope.training.clock import RunClock  # noqa: E402
from kerascope.training.epochs import (  # noqa: E402
    EarlyStop,
    EpochLog,
    InterruptCheck,
    prefix_sequences,
)
from kerascope.training.heads import UnfreezeSpec, parameter_counts  # noqa: E402
from kerascope.training.optimizers import (  # noqa: E402
    describe,
    layer_rates,
    make_optimizer,
    set_total_steps,
)
from kerascope.training.outputs import loss_and_metric, task_of  # noqa: E402
from kerascope.training.progress import TrainProgress  # noqa: E402
from kerascope.training.split import PREFIX_PRECISION, prefix_place, split_model  # noqa: E402
from kerascope.training.whole import AugmentedTrainer, DeviceFeed  # noqa: E402

MONITOR = "val_loss"  # finer-grained than accuracy on small validation sets, where it ties


def unfreeze_point(config: dict[str, Any], stage: dict[str, Any] | None = None) -> UnfreezeSpec:
    """Where fine-tuning starts: the stage's own point (gradual unfreezing's ``"all"``), else
    the index resolved when the run was configured."""
    if stage is not None and stage.get("unfreeze") is not None:
        return stage["unfreeze"]
    index = config.get("unfreeze_index")
    return config.get("unfreeze") if index is None else int(index)


def run_stage(model, run_dir: Path, config: dict, index: int, stage: dict, seqs, weights,
               verbose: int, extra: list | None, split: bool, progress: bool,
               started: float | None = None, forced: bool = False,
               prefix_engine: str | None = None,
               clock: RunClock | None = None) -> None:  # fmt: skip
    """One ``fit``: flags, optimizer, callbacks; epochs are numbered across stages. Under a
    time budget (``started``: when the run's clock started) the stage's epochs are planned
    from its measured epoch time once compiled, and recorded in ``config.yaml``; a stage it
    has no time left for is skipped. A resumed stage trains as its backup was trained (split
    or whole), unless the engine was ``forced`` (asked for), which cannot load it: one line.
    ``prefix_engine``: the engine asked for the frozen prefix (onnx, openvino; None: auto or
    ``KERASCOPE_ENGINE``); before, ``--engine openvino`` ran it on onnxruntime. ``clock``:
    where the time goes (the budget's timing, the fit, its epochs), for report.md."""
    clock = clock or RunClock()
    pending = (config.get("epochs_rule") == "time budget" and "epoch_seconds" not in stage
               and not stage.get("skipped") and started is not None
               and placing.process_share() is None)  # fmt: skip
    if pending and budget.out_of_time(config, index, budget.seconds_left(config, started)):
        return budget.skip_stage(run_dir, config, index, started, progress)
    fine_tuned = recipes.prepare_stage(model, index, unfreeze_point(config, stage))
    backup = run_dir / "backup" / f"stage{index + 1}"
    best = run_dir / "best.weights.h5"
    if index > 0 and best.is_file() and backup_epoch(backup) is None:
        load_best(model, best)  # stage 2 starts from stage 1's best, as the guide does
    recipes.set_precision(model, "float32")  # the prefix is compiled in float32
    parts = _as_backed_up(backup, split_model(model) if split else None, model, forced)
    augment = AugmentConfig(**config["augment"]) if config["augment"] else None
    if parts is not None:
        trained = parts.suffix
        config["prefix_precision"] = PREFIX_PRECISION  # report.md says what the prefix ran in
    else:
        trained = AugmentedTrainer(model, augment.fill_mode if augment else "nearest")
    precision = config.get("precision", "float32")
    recipes.set_precision(parts.suffix if parts else model, precision)
    steps = len(seqs["train"]) * stage["epochs"]
    optimizer = make_optimizer(stage["optimizer"], stage["lr"], stage.get("momentum"),
                               stage.get("schedule"), steps,
                               rates=layer_rates(model, stage.get("lr_ratio", 1.0)))  # fmt: skip
    if precision == "float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # batches are padded (weight 0): accuracy counts the real rows only; regularisers give
    # soft targets (validation one-hot), so the loss is then the categorical one
    regularise = RegulariseConfig.from_config(config)
    loss, metric = loss_and_metric(task_of(config), bool(regularise))
    trained.compile(optimizer=optimizer, loss=loss, weighted_metrics=[metric])
    start = sum(s["epochs"] for s in config["stages"][:index])
    end = start + stage["epochs"]
    resumed = backup_epoch(backup)
    seqs["train"].set_epoch(resumed if resumed is not None else start)
    saved = read_state(run_dir)
    if progress and resumed is None and saved.get("stage") == index + 1 and \
            (saved.get("epoch") or 0) > start:  # fmt: skip
        print(f"note: '{backup}' is missing, so stage {index + 1}'s epochs "
              f"{start + 1}-{saved['epoch']} are trained again", file=sys.stderr)  # fmt: skip
    if progress:
        trainable, frozen = parameter_counts(model)
        what = f", fine-tuning {len(fine_tuned)} backbone layers" if fine_tuned else ""
        again = f", resuming after epoch {resumed}" if resumed else ""
        print(f"stage {index + 1}/{len(config['stages'])}: {describe(stage)}, "
              f"epochs {start + 1}-{end if not pending else '?'}{what} ({trainable:,} trainable, "
              f"{frozen:,} frozen parameters){again}")  # fmt: skip
        if parts is not None:
            cut = f"from {cut_label(parts, config)} on" if parts.cut else "head only"
            mixed = (f"; the prefix computes in {PREFIX_PRECISION}, --precision {precision} "
                     "applies to what Keras trains" if precision != PREFIX_PRECISION
                     else "")  # fmt: skip
            print(f"  split training: {prefix_place(parts.prefix, prefix_engine)}, Keras "
                  f"trains {cut}{mixed}")  # fmt: skip
        else:
            augmented = augment is not None and not augment.is_identity
            where = "augmented on the device inside" if augmented else "cast inside"
            print(f"  whole graph in Keras: uint8 batches {where} the compiled train step")
    # Full-shape batches (one compiled step), class weights folded into the sample weights.
    if parts is not None:
        train_data, val_data = prefix_sequences(parts, seqs, config, run_dir, progress, weights,
                                                prefix_engine)  # fmt: skip
    else:
        hard = RegulariseConfig() if regularise else None  # one-hot validation targets
        train_data = DeviceFeed(seqs["train"], augment, config["seed"], weights,
                                regularise=regularise)  # fmt: skip
        val_data = DeviceFeed(seqs["validation"], None, config["seed"], regularise=hard)
    train_data, val_data = placing.process_shard(train_data), placing.process_shard(val_data)
    build_before_fit(trained, train_data)
    if pending:  # the stage's epochs from its measured epoch time (0: skipped)
        with clock.part("timing"):
            planned = budget.plan_stage(trained, train_data, val_data, run_dir, config, index,
                                        started, progress)  # fmt: skip
        if not planned:
            return
        set_total_steps(optimizer, len(seqs["train"]) * stage["epochs"])
        end = start + stage["epochs"]
    # Order matters for a kill between two of them: the history row and the best weights of
    # an epoch are written before its backup, so a resume redoes that epoch (same numbers)
    # rather than skipping past an epoch that history.csv or best.weights.h5 lacks.
    callbacks = [
        # Keras's bar first, so it ends its line before an epoch's own lines are printed
        # (appended last by Keras, it redrew its stale bar after them on a terminal)
        *([keras.callbacks.ProgbarLogger()] if verbose else []),
        InterruptCheck(),
        EpochLog(run_dir, index + 1, len(seqs["train"].paths)),
        clock.epochs_callback(),  # the same span as EpochLog's seconds
        BestCheckpoint(model, best, monitor=MONITOR, frozen_prefix=parts is not None),
        Backup(backup, "split" if parts is not None else "whole"),
        EarlyStop(config["patience"], end, best, sys.stdout if progress else None),
        *([TrainProgress(len(seqs["train"].paths), end,
                         cached=parts is not None and not config["augment"])]
          if progress else []),  # fmt: skip
        *(extra or []),
    ]  # fmt: skip
    trained._initial_epoch = None  # set by a previous stage's BackupAndRestore, never reset
    with fast_convs(), clock.part("fit"):
        trained.fit(train_data, validation_data=val_data, epochs=end, initial_epoch=start,
                    callbacks=callbacks, shuffle=False,
                    verbose=verbose)  # fmt: skip


def cut_label(parts: Any, config: dict[str, Any]) -> str:
    """The first layer a split stage trains, as `kerascope models layers` shows it: its index,
    and its name unless Keras made the name up (``conv2d_174``: a per-session counter that
    differs from the listing's ``conv2d_80``); a name the user gave is shown as given."""
    index = getattr(parts, "cut_index", None)
    if index is None:
        return f"'{parts.cut}'"
    given = config.get("unfreeze")
    if isinstance(given, str) and given != "all" and config.get("unfreeze_index") == index:
        return f"layer {index} '{given}'"
    name = "" if _auto_named(parts.cut, getattr(parts, "cut_kind", None)) else f" '{parts.cut}'"
    return f"layer {index}{name} (as `kerascope models layers` numbers them)"


def _auto_named(name: str, kind: str | None) -> bool:
    """Whether ``name`` is one Keras generated from the layer's class (``conv2d``,
    ``conv2d_174``), which depends on how many such layers the process built before."""
    if kind is None:
        return False
    base = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", kind))
    base = re.sub(r"([a-z])([A-Z])", r"\1_\2", base).lower()  # as keras's to_snake_case
    return re.fullmatch(re.escape(base) + r"(_\d+)?", name) is not None


def _as_backed_up(backup: Path, parts: Any, model: Any, forced: bool) -> Any:
    """``parts`` (the split; None: the whole graph), or as the stage's backup was trained:
    a backup of the head alone does not load into the whole graph, nor the reverse (a run
    started on a CPU and resumed on a GPU was called damaged). A stage that cannot split
    (nothing frozen before it) trains whole under every engine, and matches its backup."""
    kept = backup_trainer(backup)
    if kept is None or kept == ("split" if parts is not None else "whole"):
        return parts
    if forced:
        raise trainer_mismatch(backup, kept)
    return split_model(model) if kept == "split" else None


def build_before_fit(trained: Any, data: Any) -> None:
    """Build ``trained``'s loss and metrics from the shapes of the feed's first batch before
    ``fit``, as Keras would. Keras took that batch from the feed itself: with the feed's
    thread pool (``workers`` > 1) its prefetch then mixed two epochs' orders in every epoch
    (10 batches: batches 1-5 of one permutation, 0-4 of the next); now each epoch is one
    permutation, batch 0 first, with or without threads."""
    trained._symbolic_build(data_batch=data[0])
