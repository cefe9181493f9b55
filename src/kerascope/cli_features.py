"""CLI subcommands that prepare data for training: features (the bottleneck cache) and augment
(a preview of the training augmentation). Like `kerascope.cli`: parse, call the API, print."""

from __future__ import annotations

from kerascope.cli_common import positive_int, say_precision
from kerascope.cli_train import _add_augment_options, _backbones, _parser
from kerascope.errors import CliError
from kerascope.interrupts import stopped_by
from kerascope.precision import add_precision_option


def add_commands(sub) -> None:
    _add_features(sub)
    _add_augment(sub)


def _add_features(sub) -> None:
    p = _parser(sub, "features", "cache bottleneck features of backbones in HDF5")
    p.add_argument("data", help="dataset folder (layouts as in train)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="comma-separated zoo names")
    p.add_argument("--layer", help="any layer name of the backbone (default: its last)")
    p.add_argument("--pool", choices=("avg", "max", "none"), default="avg", help="pooling")
    p.add_argument("--image-size", type=positive_int, help="side images are resized to (default: "
                   "each backbone's own); smaller runs the backbone at that size (vgg16 at 150 "
                   "gives 4x4x512 maps with --pool none), larger is resized to the backbone's "
                   "in the graph")  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="the backbone's weights file (default: "
                   "the zoo's ImageNet weights); one per backbone, comma-separated")  # fmt: skip
    p.add_argument("--output", "-o", default="features.h5", help="HDF5 store of one dataset's "
                   "features: other backbones, layers and settings are added to it; its rows "
                   "follow DATA (images added, removed or changed since; another folder's "
                   "images replace them, features of the same image bytes kept)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="validation share when DATA has no validation/ folder")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the split")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out")
    add_precision_option(p, "what the backbones compute in: float32 (default: the features a "
                         "float32 model sees), bfloat16 or float16 (their own groups, "
                         "',precision=' in the key; keras engine), or auto (bfloat16 on GPUs "
                         "that compute it natively)", int8=False)  # fmt: skip
    p.set_defaults(func=_run_features)


def _add_augment(sub) -> None:
    p = _parser(sub, "augment", "preview the training augmentation on one image")
    p.add_argument("image", help="the picture to augment")
    p.add_argument("-n", type=positive_int, default=20, help="number of samples")
    p.add_argument("-o", "--output", default="preview", help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seeds the random transforms")
    _add_augment_options(p, defaults=True)
    p.add_argument("--mixup", type=float, metavar="A", help="train's --mixup: each sample "
                   "mixed with another sample, share ~ Beta(A, A)")  # fmt: skip
    p.add_argument("--cutmix", type=float, metavar="A", help="train's --cutmix: a box of "
                   "another sample pasted in (labelled with its number and area)")  # fmt: skip
    p.set_defaults(func=_run_augment)


def _feature_progress():
    from kerascope import output

    shown: set[str] = set()

    def progress(backbone: str, done: int, total: int) -> None:
        if backbone not in shown:
            shown.add(backbone)
            output.note(f"extracting {backbone} features for {total} images")
        progress.last = (backbone, done, total)

    progress.last = None
    return progress


def _run_features(args) -> int:
    from kerascope import output
    from kerascope.bottleneck import extract_features
    from kerascope.precision import resolve_precision

    _check_folder(args)
    progress = _feature_progress()
    try:
        store = extract_features(
            args.data, _backbones(args.backbone, "efficientnet_lite0"), layer=args.layer,
            pool=args.pool, output=args.output, batch_size=args.batch_size,
            val_split=args.val_split, seed=args.seed, skip_bad=args.skip_bad,
            progress=progress, image_size=args.image_size,
            weights=args.weights.split(",") if args.weights else None,
            precision=args.precision or "float32",
        )  # fmt: skip
    except KeyboardInterrupt as stop:  # say what is kept (before: "interrupted", no more)
        if progress.last is not None:
            backbone, done, total = progress.last
            output.note(f"{stopped_by(stop)} after {done} of {total} {backbone} rows; they "
                        "are kept: run the same command again to compute the rest")  # fmt: skip
            stop.told = True
        raise
    if args.precision is not None:
        say_precision(args.precision, resolve_precision(args.precision))
    for key, rows in store.computed.items():
        shape = "x".join(str(d) for d in store.row_shape(key))
        output.note(f"{key}: computed {rows} row(s) of {shape} features")
    if store.skipped:  # before: left out in silence
        shown = ", ".join(f"'{path}' ({reason})" for path, reason in store.skipped[:3])
        more = f" and {len(store.skipped) - 3} more" if len(store.skipped) > 3 else ""
        output.note(f"--skip-bad left out {len(store.skipped)} unreadable file(s): {shown}{more}")
    output.note(f"features in {args.output}")
    return 0


def _check_folder(args) -> None:
    """DATA given as image files (a file or a glob): the command that computes their features
    is ``batch features``, with the options given here (before: the hint named `predict`,
    which labels images with a trained run and computes no features)."""
    import shlex
    from pathlib import Path

    from kerascope.data.folders import DatasetError, not_a_folder

    root = Path(args.data).expanduser()
    if root.is_dir() or not (root.exists() or any(c in args.data for c in "*?[")):
        return  # a folder, or nothing there: scan_dataset says which
    options = [f"--model {_backbones(args.backbone, 'efficientnet_lite0')[0]}"]
    options += [f"--{flag.replace('_', '-')} {shlex.quote(str(getattr(args, flag)))}"
                for flag in ("layer", "image_size") if getattr(args, flag)]  # fmt: skip
    if args.pool != "avg":
        options.append(f"--pool {args.pool}")
    command = f"kerascope batch features {shlex.quote(args.data)} {' '.join(options)} -o DIR"
    raise DatasetError(not_a_folder(root, "dataset", single=f"`{command}` computes the "
                                    "features of single images (Parquet)"))  # fmt: skip


def _run_augment(args) -> int:
    from kerascope import output
    from kerascope.data.augment import AugmentConfig
    from kerascope.data.preview import augment_preview
    from kerascope.images import load_image

    if args.n < 1:
        raise CliError("-n must be at least 1")
    load_image(args.image)  # a bad picture fails here with a one-line reason
    config = AugmentConfig(
        rotation=args.rotation, width_shift=args.width_shift, height_shift=args.height_shift,
        shear=args.shear, zoom=args.zoom, horizontal_flip=not args.no_flip,
        policy=args.augment_policy,
    )  # fmt: skip
    from kerascope.data.regularise import RegulariseConfig

    mixing = RegulariseConfig(mixup=args.mixup or 0.0, cutmix=args.cutmix or 0.0)
    paths = augment_preview(args.image, n=args.n, out_dir=args.output, config=config,
                            seed=args.seed, regularise=mixing)  # fmt: skip
    output.note(f"wrote {len(paths) - 1} samples and {paths[-1]}")
    return 0
