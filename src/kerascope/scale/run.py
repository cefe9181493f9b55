"""Run a batch job: in this process, on a local Ray instance, or on an existing Ray cluster.

The driver only plans (`plan`): it lists the inputs, cuts them into blocks, skips the blocks
whose shard exists and hands the rest to `BlockWorker`s. On Ray that is a Ray Data pipeline,
one row per block, through ``map_batches`` with an actor pool of one actor per GPU (GPU
clusters, ``num_gpus=1`` each) or per CPU, so each worker loads the model once. Ray restarts
a killed actor and retries its block; the atomic per-block shard makes the retry harmless.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerascope.extras import install_command
from kerascope.scale.connect import LOCAL, Connection, connect, dropping_stderr_lines
from kerascope.scale.plan import (
    TASKS,
    BatchError,
    Block,
    check_output,
    collect_inputs,
    finish,
    make_blocks,
    manifest_for,
    pending,
    prepare_output,
    shard_dir,
)

__all__ = ["LOCAL", "BatchReport", "Kept", "run_batch", "worker_env"]
# Environment that decides what a worker computes (backend, engine, caches, limits): the
# driver's values travel to every worker through Ray's runtime environment.
_ENV_PREFIXES = ("KERASCOPE_", "KERAS_", "JAX_", "XLA_FLAGS", "TF_CPP_")


@dataclass
class BatchReport:
    """What a run did: ``written`` blocks now, ``already`` done before; ``errors`` is the
    number of inputs with an error row in the whole output."""

    task: str
    output: Path
    inputs: int
    blocks: int
    written: int
    already: int
    errors: int
    workers: int
    skipped_files: list[str]
    where: str
    redone: list[str] = field(default_factory=list)  # damaged shards found and written again
    precisions: list[str] = field(default_factory=list)  # what the shards were computed in


def _settings(task: str, o: dict[str, Any]) -> dict[str, Any]:
    """The options that decide the output (a resumed job must use the same ones)."""
    model = o.get("model", "efficientnet_lite0")
    if os.path.exists(str(model)):  # a .keras file or run directory: workers need it absolute
        model = os.path.abspath(str(model))
    weights = o.get("weights")
    weights = os.path.abspath(weights) if weights else None
    if o.get("precision") is not None:  # only when asked: older jobs' settings stay as they were
        from kerascope.precision import check_precision

        return {**_settings(task, {**o, "precision": None}),
                "precision": check_precision(o["precision"])}  # fmt: skip
    if task == "classify":
        top = int(o.get("top", 5))
        if top < 1:
            raise BatchError("--top must be at least 1")
        return {"model": model, "weights": weights, "top": top,
                "threshold": float(o.get("threshold", 0.0))}  # fmt: skip
    if task == "features":
        size = int(o["image_size"]) if o.get("image_size") else None
        return {"model": model, "weights": weights, "layer": o.get("layer"),
                "pool": o.get("pool", "avg"), "image_size": size}  # fmt: skip
    target = o.get("target")
    if o.get("fit", "whole") not in ("whole", "crop"):
        raise BatchError(f"--fit must be whole or crop, got {o.get('fit')!r}")
    return {"model": model, "method": o.get("method", "gradcam"), "layer": o.get("layer"),
            "target": None if target is None else str(target),
            "alpha": float(o.get("alpha", 0.4)), "colormap": o.get("colormap"),
            "fit": o.get("fit", "whole")}  # fmt: skip


def run_batch(
    task: str,
    inputs: list[str],
    output: str | os.PathLike,
    *,
    cluster: str | None = None,
    workers: int | None = None,
    block_size: int = 256,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> BatchReport:
    """Classify, extract features or explain every input into Parquet shards in ``output``.

    Args:
        task: ``classify``, ``features`` or ``explain``.
        inputs: files, folders, globs, and listing files (``.txt`` one path a line, ``.csv``
            or ``.parquet`` with a ``path`` column), on storage every worker can read.
        output: the dataset folder; a job stopped part-way resumes when run again with it.
        cluster: None runs in this process; ``"local"``: the Ray cluster already running on
            this machine (``ray start``, ``RAY_ADDRESS``) if one answers, else a Ray instance
            started for the job; else a Ray address (``auto``, ``ray://head:10001``,
            ``10.0.0.5:6379``), tried with a short TCP connection before ``ray.init`` (an
            unknown host or nothing answering is a `BatchError` within seconds, with nothing
            written). An already initialised Ray (``ray.init`` by the caller) is used as it is.
        workers: actors (model copies); default one per GPU of the cluster, else per CPU.
        block_size: inputs per block: per shard, and per unit of retry and resume.
        batch_size: images per forward pass; None: each worker's device decides
            (`kerascope.batch_sizes.default_batch_size`: 32 / 16 for explain on a CPU, 256 / 128
            on a GPU).
        options: the task's options, as the single-machine commands take them: ``model``,
            ``weights``, ``top``, ``threshold``; ``layer``, ``pool``, ``image_size``;
            ``method``, ``target``, ``alpha``, ``colormap``; and ``precision`` (auto, float32,
            bfloat16, float16; None: ``KERASCOPE_PRECISION`` or auto, resolved on each worker,
            so a GPU worker runs bfloat16 where a CPU one runs float32; each shard's metadata
            and `BatchReport.precisions` say what ran).

    Returns:
        A `BatchReport`. Each input is in the output exactly once: a result, or an error row.

    Raises:
        BatchError: no inputs, an output folder holding something else, Ray missing or not
            reachable, or a setup error on the workers (unknown model, layer or class).
        KeyboardInterrupt: Ctrl-C (SIGTERM, SIGHUP), with ``batch_kept``: a `Kept` saying
            what the output holds (a re-run computes only the rest).
    """
    if task not in TASKS:
        raise BatchError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if batch_size is not None and batch_size < 1:
        raise BatchError("--batch-size must be at least 1")
    if workers is not None and workers < 1:
        raise BatchError("--workers must be at least 1")
    _require("Parquet output", "pyarrow")
    settings = _settings(task, options)
    found = collect_inputs([os.fspath(i) for i in inputs])
    if not found.paths:
        raise BatchError("no images found in " + " ".join(map(str, inputs)))
    blocks = make_blocks(found, block_size, task)
    out = Path(output).absolute()
    manifest = manifest_for(task, settings, blocks, block_size)
    check_output(out, manifest)  # refused before Ray starts; nothing written yet
    from kerascope.scale.work import lacking_columns, remove_damaged, shard_info, unfinished

    folder = shard_dir(out, task)
    try:
        todo = unfinished(folder, blocks)  # reads only: a job already done needs no Ray
        lacking = lacking_columns(folder, task, blocks, todo)
        if lacking:
            raise BatchError(
                f"'{out}' holds a batch {task} job whose shards lack the column(s) "
                f"{', '.join(lacking)} this kerascope writes, so resuming it would mix two "
                "layouts: finish it with the kerascope that started it, or give this job "
                "another -o folder"
            )
        ray = connection = None
        if todo and cluster is not None:
            ray = _import_ray()
            connection = connect(ray, cluster, worker_env())  # before the first write
        try:
            prepare_output(out, manifest)
            redone = remove_damaged(folder, todo)
            todo = pending(out, task, blocks)
            job = {"task": task, "output": str(out), "settings": settings,
                   "batch_size": batch_size}  # fmt: skip
            used, where = 0, "in this process"
            if todo:
                if connection is None:
                    results, used = _in_process(job, todo), 1
                else:
                    results, used, where = _on_ray(ray, connection, job, todo, workers)
                with contextlib.closing(results):  # stops the pipeline on an error
                    for summary in results:
                        if summary["fatal"]:
                            raise BatchError(summary["fatal"])
                        if progress is not None:
                            progress(summary["inputs"])
        finally:
            if connection is not None and connection.started:
                ray.shutdown()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: what is kept, for the command
        stop.batch_kept = kept_so_far(out, task, blocks)
        raise
    finish(out, manifest, blocks)
    infos = [shard_info(folder / b.shard) for b in blocks]
    errors = sum(info.get("errors", 0) for info in infos)
    precisions = sorted({info.get("precision", "not recorded") for info in infos})
    return BatchReport(task, out, len(found.paths), len(blocks), len(todo),
                       len(blocks) - len(todo), errors, used, found.skipped, where,
                       redone, precisions)  # fmt: skip


@dataclass
class Kept:
    """What an interrupted job left in its output: ``shards`` of ``blocks`` written (by this
    run or before), holding ``images`` of the job's ``inputs``; a re-run computes only the rest."""

    shards: int
    blocks: int
    images: int
    inputs: int
    started: bool  # the output folder holds this job (its manifest is written)


def kept_so_far(out: Path, task: str, blocks: list[Block]) -> Kept:
    from kerascope.scale.plan import MANIFEST

    try:
        left = {b.index for b in pending(out, task, blocks)}
    except OSError:
        left = {b.index for b in blocks}
    done = [b for b in blocks if b.index not in left]
    return Kept(len(done), len(blocks), sum(len(b.paths) for b in done),
                sum(len(b.paths) for b in blocks), (out / MANIFEST).is_file())  # fmt: skip


def _require(what: str, module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise BatchError(f"{what} needs {module}: {install_command('ray')}") from None


def _in_process(job: dict, todo: list[Block]) -> Iterator[dict]:
    from kerascope.scale.work import BlockWorker

    worker = BlockWorker(job)
    for block in todo:
        yield worker.run_block(block.row())


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BatchError(f"--ray needs Ray Data: {install_command('ray')}") from None
    return ray


def worker_env() -> dict[str, str]:
    """The driver's settings that change what a worker computes, for Ray's runtime env."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def _on_ray(ray, connection: Connection, job: dict, todo: list[Block], workers: int | None):
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    count = workers or (gpus or int(resources.get("CPU", 1)) or 1)
    count = max(1, min(count, len(todo)))
    where = f"on Ray ({connection.label}), {count} worker(s)"
    where += f", {gpus} GPU(s)" if gpus else ""
    job = {**job, "actors": actors_per_machine(ray.nodes(), count, bool(gpus))}
    return _stream(ray, job, todo, count, gpus, connection.started), count, where


def actors_per_machine(nodes: list[dict], count: int, gpus: bool) -> int:
    """The most of ``count`` actors one machine can hold: each takes one GPU (or one CPU), so
    no more than the largest live node has of it. A worker's share of memory bounds is 1/this
    (`work.BlockWorker`)."""
    kind = "GPU" if gpus else "CPU"
    room = [int(n.get("Resources", {}).get(kind, 0)) for n in nodes if n.get("Alive", True)]
    return max(1, min(count, max(room, default=count) or count))


def _stream(ray, job: dict, todo: list[Block], count: int, gpus: int, started: bool):
    """Summaries as blocks finish; Ray is shut down afterwards if this job connected it (here,
    where Ray's stderr is filtered; `run_batch` also does if the stream never started)."""
    from kerascope.scale.work import BlockWorker

    with dropping_stderr_lines(RAY_NOTICES):
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # kerascope prints its own progress
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            # ... and Ray Data would warn about the bars it was told not to draw
            logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
            rows = [b.row() for b in todo]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            # The job travels inside the class (pickled by value), not as constructor arguments in
            # the object store: a restarted actor must not depend on an object that may be gone.
            worker = BlockWorker.for_actors(job)
            ds = ds.map_batches(
                worker,
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=count, max_tasks_in_flight_per_actor=1),
                num_cpus=1,
                num_gpus=1 if gpus else 0,
            )
            yield from ds.iter_rows()
        finally:
            if started:
                ray.shutdown()


# Error-level lines Ray's C++ core worker writes to the driver's stderr on every successful
# run: Ray Data itself passes its actors' constructor arguments through the object store and
# restarts actors (ray-project/ray#53727); nothing a kerascope user can or needs to act on.
RAY_NOTICES = (b"has constructor arguments in the object store and max_restarts > 0",)
