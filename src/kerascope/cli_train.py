"""CLI subcommands for the user's own data: train, evaluate, predict, features, augment.

Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

from kerascope.errors import CliError


def add_commands(sub) -> None:
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_features(sub)
    _add_augment(sub)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on DATA/<class>/ image folders")
    p.add_argument("data", nargs="?", help="dataset folder (omit with --resume)")
    p.add_argument(
        "--recipe", "-r", default="transfer",
        choices=("scratch", "lenet", "transfer", "finetune", "features"),
    )  # fmt: skip
    p.add_argument("--backbone", default=None, help="zoo model(s); comma-separated for features")
    p.add_argument("--output", "-o", help="run directory (default runs/<time>-<recipe>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate of the first stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out")
    p.add_argument("--class-weight", choices=("auto",), help="balance imbalanced classes")
    p.add_argument(
        "--unfreeze",
        type=float,
        default=None,
        help="finetune: fraction (<1) or number of top backbone layers to train",
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--image-size", type=int)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--layer", help="features: backbone layer to take features from")
    p.add_argument("--pool", choices=("avg", "max", "none"), help="features: pooling (avg)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument(
        "--engine", choices=("auto", "keras", "onnx"), default=None,
        help="auto (default, or $KERASCOPE_ENGINE): on a CPU the frozen part of the backbone "
        "runs on onnxruntime and only the trainable part trains in Keras; keras: the whole "
        "graph in Keras (the GPU path)",
    )  # fmt: skip
    p.set_defaults(func=_run_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, per-class scores and confusion of a run")
    p.add_argument("run", help="run directory or .keras file")
    p.add_argument("data", help="labelled class folders (uses test/ or validation/ if present)")
    p.add_argument("--output", "-o", help="folder for metrics.json and plots (default: run)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run_evaluate)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="label a folder with a trained run, into a CSV")
    p.add_argument("run", help="run directory or .keras file")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--output", "-o", default="predictions.csv")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run_predict)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="cache bottleneck features of backbones in HDF5")
    p.add_argument("data", help="dataset folder (layouts as in train)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="comma-separated zoo names")
    p.add_argument("--layer", help="any layer name of the backbone (default: its last)")
    p.add_argument("--pool", choices=("avg", "max", "none"), default="avg")
    p.add_argument("--output", "-o", default="features.h5")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=_run_features)


def _add_augment(sub) -> None:
    p = sub.add_parser("augment", help="preview the training augmentation on one image")
    p.add_argument("image", help="the picture to augment")
    p.add_argument("-n", type=int, default=20, help="number of samples (default 20)")
    p.add_argument("-o", "--output", default="preview", help="folder to write into")
    p.add_argument("--seed", type=int, default=0)
    for flag, default in (
        ("rotation", 40.0), ("width-shift", 0.2), ("height-shift", 0.2), ("shear", 0.2),
        ("zoom", 0.2),
    ):  # fmt: skip
        p.add_argument(f"--{flag}", type=float, default=default)
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.set_defaults(func=_run_augment)


def _backbones(text: str | None, default: str) -> list[str]:
    return [b.strip() for b in (text or default).split(",") if b.strip()]


def _run_train(args) -> int:
    from kerascope import output

    if not args.data and not args.resume:
        raise CliError("give a dataset folder, or --resume RUN_DIR")
    from kerascope.training import train

    unfreeze = args.unfreeze
    if unfreeze is not None and unfreeze >= 1:
        unfreeze = int(unfreeze)
    kwargs = dict(
        recipe=args.recipe, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, val_split=args.val_split, skip_bad=args.skip_bad,
        class_weight=args.class_weight, augment=not args.no_augment,
        image_size=args.image_size, patience=args.patience, resume=args.resume,
        engine=args.engine,
    )  # fmt: skip
    if args.backbone:
        kwargs["backbone"] = args.backbone
    if args.layer:
        kwargs["layer"] = args.layer
    if args.pool:
        kwargs["pool"] = args.pool
    if unfreeze is not None:
        kwargs["unfreeze"] = unfreeze
    try:
        run = train(args.data, **kwargs)
    except KeyboardInterrupt:
        output.note("interrupted: the last finished epoch is saved; continue with --resume RUN_DIR")
        return 130
    output.note(
        f"best validation accuracy {run.best_val_accuracy:.3f} (epoch {run.best_epoch}); "
        f"run in {run.run_dir} — try: kerascope evaluate {run.run_dir} DATA"
    )
    return 0


def _feature_progress():
    from kerascope import output

    shown: set[str] = set()

    def progress(backbone: str, done: int, total: int) -> None:
        if backbone not in shown:
            shown.add(backbone)
            output.note(f"extracting {backbone} features for {total} images")

    return progress


def _run_evaluate(args) -> int:
    from kerascope import output
    from kerascope.evaluation import evaluate, format_confusion

    result = evaluate(args.run, args.data, batch_size=args.batch_size, output=args.output)
    print(format_confusion(result))
    for path, reason in result.unreadable:
        output.note(f"could not read {path}: {reason}")
    output.note(f"accuracy {result.accuracy:.4f} on {result.n} images")
    return 1 if result.unreadable else 0


def _run_predict(args) -> int:
    from kerascope import output
    from kerascope.prediction import predict

    rows = predict(args.run, args.inputs, args.output, batch_size=args.batch_size)
    failed = [r for r in rows if not r.ok]
    output.note(f"wrote {len(rows)} rows to {args.output}" + (
        f"; {len(failed)} could not be read" if failed else ""))  # fmt: skip
    return 1 if failed else 0


def _run_features(args) -> int:
    from kerascope import output
    from kerascope.bottleneck import extract_features

    store = extract_features(
        args.data, _backbones(args.backbone, "efficientnet_lite0"), layer=args.layer,
        pool=args.pool, output=args.output, batch_size=args.batch_size,
        val_split=args.val_split, seed=args.seed, skip_bad=args.skip_bad,
        progress=_feature_progress(),
    )  # fmt: skip
    for key, rows in store.computed.items():
        output.note(f"{key}: computed {rows} row(s)")
    output.note(f"features in {args.output}")
    return 0


def _run_augment(args) -> int:
    from kerascope import output
    from kerascope.data.augment import AugmentConfig, augment_preview
    from kerascope.images import load_image

    if args.n < 1:
        raise CliError("-n must be at least 1")
    load_image(args.image)  # a bad picture fails here with a one-line reason
    config = AugmentConfig(
        rotation=args.rotation, width_shift=args.width_shift, height_shift=args.height_shift,
        shear=args.shear, zoom=args.zoom, horizontal_flip=not args.no_flip,
    )  # fmt: skip
    paths = augment_preview(args.image, n=args.n, out_dir=args.output, config=config,
                            seed=args.seed)  # fmt: skip
    output.note(f"wrote {len(paths) - 1} samples and {paths[-1]}")
    return 0
