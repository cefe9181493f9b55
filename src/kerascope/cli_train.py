"""CLI subcommands for the user's own data: train, evaluate, predict (features and augment:
`kerascope.cli_features`).

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

import argparse

from kerascope.cli_common import (
    DefaultsHelp,
    kept_after_stop,
    positive_int,
    say_precision,
    until_interrupted,
)
from kerascope.errors import CliError
from kerascope.precision import add_precision_option
from kerascope.tta import add_tta_options, tta_from_args


def _parser(sub, name: str, text: str):
    return sub.add_parser(name, help=text, description=text, formatter_class=DefaultsHelp)


def _note(message: str) -> None:
    """A line on stderr; user text (paths, class names) is shown as it is, never as markup."""
    from kerascope.output import note

    note(message)


def add_commands(sub) -> None:
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)


def _add_train(sub) -> None:
    p = _parser(sub, "train", "train a classifier on DATA/<class>/ image folders")
    p.add_argument("data", nargs="?", help="dataset folder (omit with --resume, unless the "
                   "dataset moved: then its new location), or a CSV of path,labels (labels "
                   "split by ; or |): a multi-label sigmoid head")  # fmt: skip
    p.add_argument(
        "--recipe", "-r", help="what to train (see the README) (default: transfer)",
        choices=("scratch", "lenet", "transfer", "finetune", "features"),
    )  # fmt: skip
    p.add_argument("--backbone", "--model", dest="backbone", default=None, help="zoo model(s); "
                   "comma-separated for features (default: efficientnet_lite0; features: "
                   "lite0,lite1)")  # fmt: skip
    p.add_argument("--output", "-o", help="run directory, new or empty (default: "
                   "runs/<time>-<recipe>)")  # fmt: skip
    p.add_argument("--epochs", type=_ints, help="epochs of every stage, or one per stage "
                   "(5,10) (default: the recipe's, or finetune's time budget); with --resume: "
                   "for the stages not finished yet")  # fmt: skip
    p.add_argument("--time-budget", type=float, metavar="MINUTES", help="minutes the run may "
                   "take: each stage's epochs from its measured epoch time (default: 15 for "
                   "finetune, none for the others; 0: the recipe's fixed epochs); --epochs "
                   "wins")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    p.add_argument("--lr", type=_lr_values, help="learning rate of the first stage, or one "
                   "per stage (1e-3,1e-4), or find: the lr finder's suggestion (its sweep is "
                   "kept as RUN/lr_find.png) (default: the recipe's, or the optimizer's own "
                   "when --optimizer changes it)")  # fmt: skip
    p.add_argument("--optimizer", help="rmsprop, adam, sgd or adadelta for the first stage, or "
                   "one per stage (rmsprop,sgd) (default: the recipe's: rmsprop for scratch "
                   "and transfer, adam for lenet, finetune and features)")  # fmt: skip
    p.add_argument("--momentum", type=float, help="momentum of the sgd stages (default: 0.9, "
                   "the fine-tuning guide's)")  # fmt: skip
    p.add_argument("--lr-schedule", metavar="SCHEDULE", help="constant (default; "
                   "finetune: onecycle), inverse-time:DECAY (lr / (1 + DECAY * step): Keras 2's "
                   "decay=DECAY) or "
                   "cosine (down to 0 over each stage) or onecycle (fastai's fit_one_cycle: "
                   "up from lr/25 to lr over the first quarter, down to lr/1e5)")  # fmt: skip
    p.add_argument("--head", help="layers between the backbone and the final softmax Dense, "
                   "comma-separated: gap, gmp, flatten, dropout[:RATE], dense:UNITS (relu) "
                   "(default: gap,dropout, which explain computes CAM for exactly; features: "
                   "dropout)")  # fmt: skip
    p.add_argument("--dropout", type=float, help="rate of the head's dropout (default: the "
                   "recipe's)")  # fmt: skip
    p.add_argument("--binary", action="store_true", help="two classes: one sigmoid unit "
                   "(probability of the second class) and binary cross-entropy instead of a "
                   "softmax")  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="the backbone's weights file (default: "
                   "the zoo's ImageNet weights); features: one per backbone, "
                   "comma-separated")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds weights, augmentation, split")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="validation share when DATA has no validation/ folder")  # fmt: skip
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out "
                   "(listed in RUN/skipped.txt)")  # fmt: skip
    p.add_argument("--class-weight", choices=("auto",), help="balance imbalanced classes")
    p.add_argument(
        "--unfreeze",
        default=None,
        help="finetune: one fine-tuning stage after the head's, training from this point: a "
        "fraction of the top layers (0.2), the index of the first one as keras.applications "
        "numbers them (249: the InceptionV3 guide's top two blocks; `kerascope models layers "
        "NAME` lists them), a layer name, or all (default: gradual unfreezing in two stages, "
        "the top 0.2 then all); BatchNorm stays frozen",
    )
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    _add_augment_options(p.add_argument_group(
        "augmentation", "change the recipe's random transformations (preview them on a photo "
        "with `kerascope augment`, which takes the same options)"), defaults=False)  # fmt: skip
    regular = p.add_argument_group("regularisation", "applied on each training batch where the "
                                   "augmentation runs; validation keeps hard labels")  # fmt: skip
    regular.add_argument("--label-smoothing", type=float, metavar="E", help="targets "
                         "(1-E)*one_hot + E/classes (0.1 usual; default 0)")  # fmt: skip
    regular.add_argument("--mixup", type=float, metavar="A", help="mixup: blend each image "
                         "with another, share ~ Beta(A, A) (0.2 usual; default off)")  # fmt: skip
    regular.add_argument("--cutmix", type=float, metavar="A", help="CutMix: paste a box of "
                         "another image, area share ~ Beta(A, A) (1.0 usual; with --mixup each "
                         "batch takes one; default off)")  # fmt: skip
    p.add_argument("--init-from", metavar="RUN", help="start from an earlier run (or .keras "
                   "file): its layers with the same names, the head (and the backbone when it "
                   "was fine-tuned), as the seed's fine-tuning loads its bottleneck-trained "
                   "head; other shapes stop with the layer named")  # fmt: skip
    p.add_argument("--find-lr", action="store_true", help="run the learning-rate finder "
                   "instead of training: an exponential sweep of the recipe's first stage "
                   "(same network and split path; its new head from random weights, where "
                   "training's starts at zero: a sweep from chance falls too slowly for the "
                   "valley to be read), writes lr_find.png (lr_find-1.png... when "
                   "taken) and prints the suggested --lr; no run directory is made")  # fmt: skip
    p.add_argument("--image-size", type=int, help="side in pixels (default: the recipe's, "
                   "or the backbone's)")  # fmt: skip
    p.add_argument("--patience", type=int, help="stop a stage after this many epochs without "
                   "a lower validation loss, keeping the best epoch; 0: never stop early "
                   "(default: the recipe's: 3 for transfer and finetune, 10 for the "
                   "others)")  # fmt: skip
    p.add_argument("--layer", help="features: backbone layer to take features from (default: "
                   "its last)")  # fmt: skip
    p.add_argument("--pool", choices=("avg", "max", "none"), help="features: pooling (default: "
                   "avg)")  # fmt: skip
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run as it was "
                   "configured, on the split it recorded (only --epochs, --patience and "
                   "--precision may change; DATA only when the dataset moved)")  # fmt: skip
    from kerascope.engines import ENGINES

    p.add_argument(
        "--engine", choices=ENGINES, default=None,
        help="auto (default, or $KERASCOPE_ENGINE): on a CPU the frozen part of the backbone "
        "runs on onnxruntime and only the trainable part trains in Keras; keras: the whole "
        "graph in Keras (the GPU path); onnx, openvino: the frozen part on that engine",
    )  # fmt: skip
    from kerascope.precision import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="compute precision of training (weights stay float32): auto (default, "
                   "or $KERASCOPE_PRECISION) is bfloat16 on GPUs that compute it natively, "
                   "float32 elsewhere; float16 adds loss scaling")  # fmt: skip
    where = p.add_argument_group(
        "devices and machines", "data-parallel training (Keras's DataParallel): --batch-size "
        "is the global batch, split evenly over the devices, and --lr applies to it "
        "unchanged")  # fmt: skip
    where.add_argument("--devices", default=None, help="all (default: every accelerator; on a "
                       "CPU-only machine its one device), a count (2) or device numbers "
                       "(0,2,5)")  # fmt: skip
    where.add_argument("--coordinator", metavar="HOST:PORT", help="several machines: process "
                       "0's address, the same for every process (or "
                       "$KERAS_DISTRIBUTION_JOB_ADDRESSES)")  # fmt: skip
    where.add_argument("--num-processes", type=int, metavar="N", help="several machines: how "
                       "many processes in all (or $KERAS_DISTRIBUTION_NUM_PROCESSES)")  # fmt: skip
    where.add_argument("--process-id", type=int, metavar="I", help="several machines: this "
                       "process's number, 0 to N-1; only 0 writes the run directory (or "
                       "$KERAS_DISTRIBUTION_PROCESS_ID)")  # fmt: skip
    p.set_defaults(func=_run_train)


def _add_evaluate(sub) -> None:
    from kerascope.evaluation import SPLITS

    p = _parser(sub, "evaluate", "accuracy, per-class scores and confusion of a run or model")
    p.add_argument("run", help="run directory, .keras file or zoo model name")
    p.add_argument(
        "data",
        help="labelled class folders (class names, or WordNet ids for a zoo "
        "model), or a run's label CSV",
    )
    p.add_argument("--split", choices=SPLITS, default="auto",
                   help="which images of DATA: auto = its test/ folder, else the run's own "
                   "held-out images when DATA is the folder it trained from, else its "
                   "validation/ folder, else all; all = every image, training ones "
                   "included")  # fmt: skip
    p.add_argument("--output", "-o", help="folder for metrics.json and plots (default: the "
                   "run directory for the images it held out of the data it trained from, "
                   "else a new RUN/evaluations/DATA-NAME folder; for a zoo model or .keras "
                   "file ./evaluations/DATA-NAME)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    add_precision_option(p)
    add_tta_options(p)
    p.set_defaults(func=_run_evaluate)


def _add_predict(sub) -> None:
    p = _parser(sub, "predict", "label a folder with a trained run, into a CSV")
    p.add_argument("run", help="run directory or .keras file")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--output", "-o", help="CSV to write (JSON if it ends in .json; - for "
                   "standard output) (default: predictions.csv, or predictions-1.csv, ... when "
                   "that exists: never replaced unless named)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    add_precision_option(p)
    add_tta_options(p)
    p.set_defaults(func=_run_predict)


_AUGMENT_FLAGS = (
    ("rotation", 40.0, "maximum rotation in degrees"),
    ("width-shift", 0.2, "maximum horizontal shift, a fraction of the width"),
    ("height-shift", 0.2, "maximum vertical shift, a fraction of the height"),
    ("shear", 0.2, "maximum shear (tan of the angle)"),
    ("zoom", 0.2, "maximum zoom in or out, a fraction"),
)


def _add_augment_options(p, defaults: bool) -> None:
    """The augmentation options of `augment` (with the tutorial's values as defaults) and of
    `train` (no defaults: a given value changes the recipe's)."""
    for flag, default, text in _AUGMENT_FLAGS:
        p.add_argument(f"--{flag}", type=float, default=default if defaults else None,
                       help=text + ("" if defaults else f" (default {default:g} for a folder "
                                    "dataset, none for a label CSV; 0: none)"))  # fmt: skip
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.add_argument("--augment-policy", choices=("randaugment", "trivialaugment"), default=None,
                   help="on top of the transformations above: RandAugment (2 operations at "
                   "magnitude 9 of 30 per image) or TrivialAugment (1 at a random magnitude), "
                   "torchvision's operations and ranges")  # fmt: skip


def _backbones(text: str | None, default: str) -> list[str]:
    return [b.strip() for b in (text or default).split(",") if b.strip()]


def _run_train(args) -> int:

    if not args.data and not args.resume:
        raise CliError("give a dataset folder, or --resume RUN_DIR")
    from kerascope.training import train

    kwargs = dict(
        recipe=args.recipe, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, val_split=args.val_split, skip_bad=args.skip_bad,
        class_weight=args.class_weight, augment=_train_augment(args),
        image_size=args.image_size, patience=args.patience, resume=args.resume,
        engine=args.engine, unfreeze=args.unfreeze, head=args.head, dropout=args.dropout,
        optimizer=args.optimizer, momentum=args.momentum, lr_schedule=args.lr_schedule,
        weights=args.weights, precision=args.precision,
        label_smoothing=args.label_smoothing, mixup=args.mixup, cutmix=args.cutmix,
        init_from=args.init_from,
    )  # fmt: skip
    if args.binary:
        kwargs["binary"] = True
    if args.time_budget is not None:
        kwargs["time_budget"] = args.time_budget
    if args.backbone:
        kwargs["backbone"] = args.backbone
    if args.layer:
        kwargs["layer"] = args.layer
    if args.pool:
        kwargs["pool"] = args.pool
    kwargs.update(devices=args.devices, coordinator=args.coordinator,
                  num_processes=args.num_processes, process_id=args.process_id)  # fmt: skip
    if args.find_lr:
        return _find_lr(args, kwargs)
    found = _sweep(args, kwargs, None) if args.lr == "find" else None
    if found is not None:  # --lr find: train with the suggestion, the sweep kept in the run
        kwargs["lr"] = found.suggestion
        _note(f"lr finder: suggested lr {found.suggestion:.2g}; training with it")
    run = train(args.data, **kwargs)  # a stop: its own line, then the exit code (cli.main)
    if found is not None:
        from kerascope.training.lr_find import plot_lr_find

        _note(f"the lr sweep is in {plot_lr_find(found, run.run_dir / 'lr_find.png')}")
    if args.process_id and not run.run_dir.exists():  # process 0 writes it, on its machine
        _note(f"process {args.process_id}: done; process 0 wrote the run, on its machine (it "
              "named a folder that is not on this one)")  # fmt: skip
        return 0
    _note(headline(run))
    return 0


def _find_lr(args, kwargs: dict) -> int:
    """``train --find-lr``: the sweep, its picture and the suggestion; nothing else written."""

    from kerascope.files import fresh_path

    result = _sweep(args, kwargs, fresh_path("lr_find.png"))
    stage = f"{result.optimizer}, {result.trained}"
    _note(f"suggested lr {result.suggestion:.2g} ({stage}; the sweep is in {result.plot}); "
          f"train with it: the same command with --lr {result.suggestion:.2g} instead of "
          "--find-lr (or --lr find: sweep, then train with the suggestion)")  # fmt: skip
    return 0


def _sweep(args, kwargs: dict, plot):
    """The LR finder's sweep on the run's settings (`kerascope.training.lr_find`)."""
    from kerascope import output
    from kerascope.training.lr_find import find_lr

    if args.resume:
        raise CliError("the lr finder sweeps a new run's first stage; leave out --resume")
    options = {k: v for k, v in kwargs.items() if k not in ("recipe", "lr")}
    with output.progress_bar(100, "lr finder") as advance:
        return find_lr(args.data, plot=plot, progress=lambda done, total: advance(1),
                       recipe=args.recipe or "transfer", **options)  # fmt: skip


def _lr_values(text: str) -> float | list[float] | str:
    """``--lr``: numbers as :func:`_floats`, or ``find``."""
    return "find" if text.strip().lower() == "find" else _floats(text)


def _ints(text: str) -> int | list[int]:
    return _numbers(text, int, "a whole number")


def _floats(text: str) -> float | list[float]:
    return _numbers(text, float, "a number")


def _numbers(text: str, kind, what: str):
    """One number, or one per stage, comma-separated (argparse's ``type``)."""
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} or a comma-separated list of "
                                         "them (one per stage)") from None  # fmt: skip
    return values[0] if len(values) == 1 else values


def _train_augment(args):
    """``--no-augment``, the recipe's augmentation, or it changed by the augmentation options."""
    given = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_"))
             for flag, _, _ in _AUGMENT_FLAGS}  # fmt: skip
    given = {name: value for name, value in given.items() if value is not None}
    if args.no_flip:
        given["horizontal_flip"] = False
    if args.augment_policy:
        given["policy"] = args.augment_policy
    if not given:
        return not args.no_augment
    if args.no_augment:
        raise CliError("--no-augment turns augmentation off; leave out --"
                       + next(iter(given)).replace("_", "-").replace("horizontal-flip", "no-flip")
                       .replace("policy", "augment-policy")
                       + " (or --no-augment)")  # fmt: skip
    from kerascope.training.settings import changed_augmentation

    return changed_augmentation(args.recipe or "transfer", given, resume=args.resume)


def headline(run) -> str:
    """What was saved: the model's own epoch and validation numbers (not the best over all
    epochs, which may be another epoch's)."""
    import shlex

    accuracy = "n/a" if run.val_accuracy is None else f"{run.val_accuracy:.3f}"
    if getattr(run, "val_map", None) is not None:  # a multi-label run: it reads a label CSV
        accuracy += f" per label, mAP {run.val_map:.3f}"
    # the folder or label CSV it read (a multi-label run said DATA.csv)
    data = (getattr(run, "config", None) or {}).get("data") or "DATA"
    return (f"saved model: epoch {run.best_epoch} (lowest validation loss {run.val_loss:.4f}), "
            f"validation accuracy {accuracy}; run in {run.run_dir} — try: kerascope evaluate "
            f"{shlex.quote(str(run.run_dir))} {shlex.quote(str(data))}")  # fmt: skip


def _run_evaluate(args) -> int:
    from kerascope.evaluation import evaluate, format_confusion, top5_note
    from kerascope.multilabel_eval import is_multilabel_run
    from kerascope.output import printable_lines

    if str(args.data).lower().endswith(".csv") or is_multilabel_run(args.run):
        from kerascope.cli_validate import run_multilabel

        return run_multilabel(args, args.run, args.split, args.output)

    result = evaluate(args.run, args.data, batch_size=args.batch_size, output=args.output,
                      split=args.split, precision=args.precision,
                      tta=tta_from_args(args))  # fmt: skip
    say_precision(args.precision, result.precision)
    print(printable_lines(format_confusion(result)))  # class names with ESC: shown escaped
    for path, reason in result.unreadable:
        _note(f"could not read {path}: {reason}")
    _note(f"accuracy {result.accuracy:.4f}{top5_note(result)} on {result.n} images: "
          f"{_which(result)}")  # fmt: skip
    if result.trained_on:
        _note(f"WARNING: {result.trained_on} of the {result.n} scored images were used to "
              "train this model, so this accuracy overstates how it does on new images "
              "(score held-out images: --split validation, or a separate test/ "
              "folder)")  # fmt: skip
    _note(f"metrics in {result.output / 'metrics.json'}")
    return 1 if result.unreadable else 0


def _which(result) -> str:
    if result.split_source == "run":
        held = "held out for validation" if result.split == "validation" else "trained on"
        return f"the images the run {held} (its split.json) in {result.data}"
    if result.split == "all":
        return f"every image in {result.data}"
    return f"the {result.split}/ folder of {result.data}"


def _run_predict(args) -> int:
    from kerascope.files import fresh_path, holds_a_file
    from kerascope.interrupts import exit_code, stopped_by
    from kerascope.prediction import prepare_predict, summary, write_csv

    tta = tta_from_args(args)
    target = args.output or fresh_path("predictions.csv")
    job = prepare_predict(args.run, args.inputs, target, batch_size=args.batch_size,
                          precision=args.precision, tta=tta)  # fmt: skip
    say_precision(args.precision, job.precision, job.engine)  # after int8 is measured
    earlier = holds_a_file(target)  # a stopped run writes beside it, never over it
    rows, stop = until_interrupted(job.rows(), len(job.sources), "predicting")
    where = "standard output" if str(target) == "-" else target
    if stop is not None:
        if not rows:
            _note(f"{stopped_by(stop)} before any image was labelled; nothing written")
            return exit_code(stop)
        partial, line = kept_after_stop(stop, len(rows), len(job.sources), target, earlier)
        write_csv(rows, partial)  # the rows done, atomically
        _note(line)
        return exit_code(stop)
    write_csv(rows, target)
    failed = [r for r in rows if not r.ok]
    labelled = summary(rows)
    plural = "" if len(rows) == 1 else "s"
    _note(f"wrote {len(rows)} row{plural} to {where}" + (f": {labelled}" if labelled else "") + (
        f"; {len(failed)} could not be read (error rows)" if failed else ""))  # fmt: skip
    if tta is not None:
        _note(f"labels are the mean probabilities of {tta.views} views per image (TTA: "
              f"{tta.describe()})")  # fmt: skip
    return 1 if failed else 0
