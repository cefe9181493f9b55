"""The ``kerascope export`` subcommand. Like `kerascope.cli`: parse, call the API, print."""

from __future__ import annotations


def add_export_command(sub) -> None:
    """Register ``export`` on the ``kerascope`` subparsers."""
    p = sub.add_parser(
        "export", help="write a model as a standalone .onnx or .keras file (checked first)"
    )
    p.add_argument("model", help="zoo name, run directory or .keras file")
    p.add_argument("-o", "--output", required=True, help="file to write: .onnx or .keras (an "
                   "existing file is refused unless --overwrite)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing output "
                   "file (never a file the export reads: the model, --weights, "
                   "--check images)")  # fmt: skip
    p.add_argument(
        "--format", "-f", choices=("onnx", "keras"), help="default: from the output's extension"
    )
    p.add_argument(
        "--input", dest="input_type", choices=("uint8", "float"), default=None,
        help="ONNX input type, RGB 0..255 either way (default uint8)",
    )  # fmt: skip
    p.add_argument(
        "--check", nargs="+", metavar="IMAGE",
        help="images, folders or globs to compare the export with Keras on (default: "
        "scikit-image's photos)",
    )  # fmt: skip
    p.add_argument("--weights", help="explicit weights file for a zoo model")
    p.add_argument(
        "--precision", choices=("float32", "int8"), default="float32",
        help="int8: the calibrated int8 graph (ONNX only; its measured agreement with float32 "
        "on real-photo crops and its calibration go into the file's metadata; one that misses "
        "the bound classify needs is written, said, and exits 1)",
    )  # fmt: skip
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from kerascope import output
    from kerascope.export import ExportError, export_model, output_format

    fmt = output_format(args.output, args.format)
    if fmt == "keras" and args.input_type is not None:
        raise ExportError("--input applies to ONNX exports only (a .keras model takes any dtype)")
    result = export_model(
        args.model, args.output, format=fmt, input_type=args.input_type or "uint8",
        check=args.check, weights=args.weights, precision=args.precision,
        overwrite=args.overwrite,
    )  # fmt: skip
    h, w = result.input_size
    what = f"{result.input_type} " if result.input_type else ""
    if result.int8 is not None:
        from kerascope.quantize import bound_text

        agreement = result.int8.agreement
        if not agreement.met:  # what classify and serve refuse to run: said, and exit 1
            output.note(
                f"wrote {result.path}, but its int8 graph MISSES the bound --precision int8 "
                f"needs ({bound_text()}): {agreement.text()} on {agreement.images} real-photo "
                "crops, so classify and serve would refuse it (exit 1; the numbers are in its "
                "metadata): export float32 instead (leave out --precision int8)"
            )
            return 1
        output.note(
            f"wrote {result.path} (int8 ONNX: {what}{h}x{w} RGB input, {result.classes} "
            f"classes); {agreement.text()} on {agreement.images} real-photo crops: meets "
            f"the bound --precision int8 needs ({bound_text()}); recorded in its metadata"
        )
        return 0
    output.note(
        f"wrote {result.path} ({result.format}: {what}{h}x{w} RGB input, {result.classes} "
        f"classes); max |Δ probability| vs Keras {result.max_abs_diff:.1e} on "
        f"{len(result.checked_on)} images ({', '.join(result.checked_on)})"
    )
    return 0
