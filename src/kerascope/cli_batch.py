"""The ``kerascope batch`` subcommand: classify, features or explain into Parquet shards, in
this process or on Ray. Like `kerascope.cli`: parse, call the API, print; no logic of its own.
"""

from __future__ import annotations

from kerascope.batch_sizes import batch_size_help
from kerascope.cli_common import HelpFormatter, fraction, positive_int
from kerascope.errors import CliError
from kerascope.precision import PRECISION_HELP, add_precision_option

BATCH_PRECISION_HELP = (
    PRECISION_HELP.split("; int8 (CPU)")[0] + "; auto is resolved on each worker, and each "
    "shard's metadata and the closing line say what ran"
)  # no int8 sentence: batch does not take it

_DESCRIPTION = """\
Run classify, features or explain over many images into one output folder of Parquet
shards (one per block of --block-size inputs, written atomically). Every input appears
exactly once, as a result or an error row; run the same command again to resume a job
that stopped. Inputs: files, folders, globs, or listing files (.txt one path a line,
.csv or .parquet with a 'path' column), on storage every worker can read.

Where it runs:
  no --ray           in this process (no Ray needed; same output, same resume)
  --ray              the Ray cluster already running on this machine (ray start,
                     RAY_ADDRESS) if one answers, else a Ray instance started here with
                     all its CPUs; the closing line says which
  --ray ADDRESS      an existing Ray cluster: auto, HEAD:6379 or ray://HEAD:10001
                     (the ray extra installed on every node: pip install -e '.[ray]';
                     ray:// also needs pip install "ray[client]")
"""


def add_batch_command(sub) -> None:
    """Register ``batch`` (with ``classify``, ``features``, ``explain``) on the subparsers."""
    p = sub.add_parser(
        "batch", help="classify/features/explain at scale into Parquet, on Ray or locally",
        description=_DESCRIPTION, formatter_class=HelpFormatter,
    )  # fmt: skip
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    c = _task(tasks, "classify", "top-k classes: columns image, rank, class_id, name, "
              "probability, error (as classify --format csv)")  # fmt: skip
    c.add_argument(
        "--model", "-m", default="efficientnet_lite0", help="zoo name, run or .keras file"
    )
    c.add_argument("--weights", help="explicit weights file for a zoo model")
    c.add_argument(
        "--top", "-k", type=positive_int, default=5, help="classes per image (default 5)"
    )
    c.add_argument("--threshold", type=fraction, default=0.0, help="hide classes below this")
    f = _task(tasks, "features", "pooled feature vectors: columns image, vector, error; "
              "model, layer, pool and sizes in each shard's metadata")  # fmt: skip
    f.add_argument("--model", "--backbone", "-m", default="efficientnet_lite0", help="zoo name")
    f.add_argument("--weights", help="explicit weights file")
    f.add_argument("--layer", help="any layer name of the backbone (default: its last)")
    f.add_argument("--pool", choices=("avg", "max", "none"), default="avg",
                   help="pooling over height and width (none: the whole map)")  # fmt: skip
    f.add_argument("--image-size", type=positive_int, help="decode size (default: the backbone's)")
    e = _task(tasks, "explain", "heatmap pictures <name>-output.jpg in OUTDIR (as explain "
              "writes them), indexed in OUTDIR/index/*.parquet")  # fmt: skip
    e.add_argument(
        "--model", "-m", default="efficientnet_lite0", help="zoo name, run or .keras file"
    )
    e.add_argument("--method", choices=("cam", "gradcam", "gradcam++"), default="gradcam",
                   help="the heatmap method, as explain --method")  # fmt: skip
    e.add_argument("--class", dest="target", help="class or group to explain: name, WordNet "
                   "id, index or a group such as cat (default: each top class)")  # fmt: skip
    e.add_argument("--layer", help="layer to explain (default: found automatically)")
    e.add_argument("--alpha", type=fraction, default=0.4, help="heatmap opacity at its peak")
    e.add_argument("--colormap", default=None, help="heatmap colours (default: viridis)")
    e.add_argument("--fit", choices=("whole", "crop"), default="whole",
                   help="what the model sees, as explain --fit (default: whole)")  # fmt: skip


def _task(tasks, name: str, text: str):
    p = tasks.add_parser(
        name, help=text, description=f"{text}.\n\n{_DESCRIPTION}",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs, listings")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="dataset folder")
    p.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run on Ray: alone, the Ray already running on this machine, else a local "
        "instance with this machine's CPUs; with an address (auto, HEAD:6379, "
        "ray://HEAD:10001), that cluster. Without --ray: in this process. "
        "Put it after the inputs (or write --ray=ADDRESS)",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=positive_int, help="model copies (default: one per GPU, else CPU)"
    )
    p.add_argument(
        "--block-size", type=positive_int, default=256, help="inputs per shard (default 256)"
    )
    p.add_argument("--batch-size", "-b", type=positive_int, default=None,
                   help=batch_size_help("explain" if name == "explain" else "classify")
                   + "; each worker's device decides")  # fmt: skip
    add_precision_option(p, BATCH_PRECISION_HELP, int8=False)
    p.set_defaults(func=_run_batch)
    return p


def _run_batch(args) -> int:
    from kerascope import output
    from kerascope.interrupts import stopped_by
    from kerascope.scale import run_batch

    options = {k: v for k, v in vars(args).items() if k in _OPTIONS and v is not None}
    if args.task == "classify" and args.top < 1:
        raise CliError("--top must be at least 1")
    try:
        report = run_batch(
            args.task, args.inputs, args.output, cluster=args.ray, workers=args.workers,
            block_size=args.block_size, batch_size=args.batch_size, **options,
        )  # fmt: skip
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: say what is kept
        kept = getattr(stop, "batch_kept", None)
        if kept is not None:
            output.note(interrupted_note(stopped_by(stop), kept))
            stop.told = True  # the command adds no line of its own
        raise
    if report.skipped_files:
        from kerascope.images.inputs import skipped_note

        output.note(skipped_note(report.skipped_files))
    if report.redone:
        output.note(f"{len(report.redone)} damaged shard(s) found and computed again: "
                    f"{', '.join(report.redone[:3])}")  # fmt: skip
    resumed = f" ({report.already} done before)" if report.already else ""
    output.note(
        f"{report.inputs} input(s) in {report.blocks} shard(s) in {report.output}{resumed}, "
        f"ran {report.where}; {report.errors} error row(s); computed in "
        f"{' and '.join(report.precisions)}"
    )
    return 1 if report.errors else 0


def interrupted_note(how: str, kept) -> str:
    """The line an interrupted job ends with, from what its output holds (`Kept`): "interrupted
    after 16 of 40 shards (128 of 320 images); run the same command again to finish the rest"."""
    if not kept.started:
        return f"{how} before the job started; nothing written"
    if kept.shards == 0:
        return (f"{how} before any shard was written (0 of {kept.blocks}); run the same "
                "command again to run the job")  # fmt: skip
    return (
        f"{how} after {kept.shards} of {kept.blocks} shards ({kept.images} of "
        f"{kept.inputs} images); run the same command again to finish the rest"
    )


_OPTIONS = frozenset(
    "model weights top threshold layer pool image_size method target alpha colormap fit "
    "precision".split()
)
