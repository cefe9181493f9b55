"""``kerascope validate MODEL DATA``: score any model on a labelled folder (timm's
``validate.py``, ``yolo val``). Parse, call `kerascope.validation.validate`, print."""

from __future__ import annotations

from kerascope.cli_common import positive_int, say_precision
from kerascope.precision import add_precision_option
from kerascope.tta import add_tta_options


def add_validate_command(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="top-1/top-5 (95 %% CI), per-class scores and img/s of any model on labelled data",
        description="Score a zoo model, run or .keras file on DATA: one folder per class, named\n"
        "by WordNet id (ImageNet layout, n02123045/) or by the model's class name (tabby/).\n"
        "Prints top-1 and top-5 accuracy with 95 % Wilson intervals, per-class\n"
        "precision/recall/F1 and img/s; writes metrics.json, confusion.png (the most\n"
        "confused pairs above 50 classes), top_losses.png and predictions.png.",
    )
    p.add_argument("model", help="zoo name, run directory or .keras file")
    p.add_argument("data", help="folder of class folders (WordNet ids or class names)")
    p.add_argument("--output", "-o", help="folder for the files; its metrics.json and pictures "
                   "are replaced (default: a new validate-MODEL folder here, validate-MODEL-1 "
                   "... when that exists)")  # fmt: skip
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument("--batch-size", "-b", type=positive_int, default=32,
                   help="images per forward pass")  # fmt: skip
    p.add_argument("--top-losses", type=int, default=12, help="images in top_losses.png (0: none)")
    add_tta_options(p)
    add_precision_option(p)
    p.set_defaults(func=_run_validate)


def _run_validate(args) -> int:
    from kerascope.evaluation import format_confusion, headline
    from kerascope.multilabel_eval import is_multilabel_run
    from kerascope.output import note, printable_lines
    from kerascope.tta import tta_from_args
    from kerascope.validation import validate

    if str(args.data).lower().endswith(".csv") or is_multilabel_run(args.model):
        return _validate_multilabel(args)
    result = validate(args.model, args.data, output=args.output, batch_size=args.batch_size,
                      weights=args.weights, tta=tta_from_args(args), precision=args.precision,
                      top_losses=args.top_losses)  # fmt: skip
    say_precision(args.precision, result.precision)
    print(printable_lines(format_confusion(result)))  # class names with ESC: shown escaped
    for path, reason in result.unreadable:
        note(f"could not read {path}: {reason}")
    if result.trained_on:
        note(f"WARNING: {result.trained_on} of the {result.n} scored images were used to train "
             "this model, so this accuracy overstates how it does on new images")  # fmt: skip
    note(headline(result).replace("\n", "; "))
    note(
        "wrote metrics.json, confusion.png, predictions.png"
        + (", top_losses.png" if args.top_losses > 0 else "")
        + f" to {result.output}"
    )
    return 1 if result.unreadable else 0


def _validate_multilabel(args) -> int:
    """validate RUN DATA.csv: a multi-label run scored on every row of a label CSV."""
    from kerascope.validation import default_output

    return run_multilabel(args, args.model, "all", args.output or default_output(args.model))


def run_multilabel(args, run: str, split: str, output: str | None) -> int:
    """evaluate / validate of a multi-label run: the per-label table, mAP, metrics.json."""
    from kerascope.multilabel_eval import evaluate_multilabel, summary_lines
    from kerascope.multilabel_metrics import format_report
    from kerascope.output import note, printable_lines
    from kerascope.tta import tta_from_args

    result = evaluate_multilabel(run, args.data, split=split, output=output,
                                 batch_size=args.batch_size, precision=args.precision,
                                 tta=tta_from_args(args))  # fmt: skip
    print(printable_lines(format_report(result.report)))
    for line in summary_lines(result):
        note(line)
    return 0
