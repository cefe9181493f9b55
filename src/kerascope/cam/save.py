"""Explanations as pictures on disk: original | overlay, labelled, one JPEG per image.

What ``kerascope explain`` writes, as a function: the CLI only parses, calls this and prints.
Images are explained a batch at a time; each picture is drawn and written by a pool of threads
(decoding, blending, JPEG encoding and writing run in Pillow's C code, outside the GIL) while
the next batch runs on the device, so the device does not wait on pictures. A bounded number
of pictures is in flight, so a folder of thousands keeps memory flat: a file's decode for the
model is kept for its picture only while the pictures alive at once stay within
`kerascope.sources.KEPT_BYTES` (else the picture thread decodes it again, at most
:data:`OUTPUT_MAX_SIDE` px), and the results keep no heatmap (they are in the pictures;
`kerascope.explain` returns them).

Where the pictures go, and the overwrite rule, are `kerascope.cam.outputs`.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kerascope.cam.enlarge import enlarge
from kerascope.cam.explain import (
    Explanation,
    _cached_explainer,
    iter_unplaced,
    resolve_targets,
    spread_targets,
)
from kerascope.cam.fitting import (
    DEFAULT_FIT,
    check_fit,
    draw_outline,
    photo_outside,
    with_caption,
)
from kerascope.cam.labels import picture_label
from kerascope.cam.outputs import (
    check_output_folder,
    check_outputs,
    output_names,
    write_jpeg,
)
from kerascope.cam.overlay import (
    DEFAULT_COLORMAP,
    colormap_lut,
    is_empty,
    mark_empty,
    overlay_image,
    place_in_picture,
    side_by_side_image,
)
from kerascope.files import fsync_dir, output_error
from kerascope.fonts import covering_font
from kerascope.images import ImageError, load_image, resize
from kerascope.sources import Source, kept_pixels, load_source, normalise_inputs
from kerascope.zoo.models import Classifier
from kerascope.zoo.shared import shared_model


@dataclass
class SavedExplanation:
    """One input: its explanation (without the heatmap) and the picture written, or why not."""

    explanation: Explanation
    path: Path | None = None  # the JPEG written; None when ``error`` is set
    empty: bool = False  # the map had nothing to show (no evidence for the class); see is_empty

    @property
    def source(self) -> str:
        return self.explanation.source

    @property
    def error(self) -> str | None:
        return self.explanation.error

    @property
    def ok(self) -> bool:
        return self.explanation.ok


OUTPUT_MAX_SIDE: int = 4096
"""Longest side of the original in a written picture (the picture is twice as wide): larger
images are scaled down to it, so memory per image is bounded (about 300 MB at the cap)."""
OUTPUT_MIN_SIDE: int = 224
"""A picture whose longest side is under this is drawn enlarged (whole pixels, nearest), so
its label bar is readable."""


def save_explanations(
    inputs: Source | Iterable[Source],
    output_dir: str | os.PathLike = ".",
    model: str | Classifier = "efficientnet_lite0",
    method: str = "gradcam",
    target: None | int | str | Sequence[int | str] = None,
    layer: str | None = None,
    batch_size: int = 16,
    alpha: float = 0.4,
    colormap: str | None = None,
    progress: Callable[[int], None] | None = None,
    colorbar: bool = False,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    precision: str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    pool: str = "threads",
    fit: str = DEFAULT_FIT,
    skip_existing: bool = False,
) -> list[SavedExplanation]:
    """Explain images and write each as original | overlay, labelled, into ``output_dir``.

    Files are named ``<stem>-output.jpg`` (``image-<i>-output.jpg`` for the i-th in-memory
    image), keeping sub-folders so that no two outputs of a run share a name (see
    `output_names`), and written atomically (`kerascope.files`). An existing file is not
    replaced unless ``overwrite``; an input never is (module docstring). Pictures are drawn
    and written by ``workers`` threads while the next batch is explained; only a small record
    is kept per image, so memory does not grow with the number of images; originals larger
    than :data:`OUTPUT_MAX_SIDE` are written scaled down to it.

    Args:
        inputs: what `kerascope.explain` takes: paths, folders, globs, arrays, PIL Images.
        output_dir: created if needed.
        model, method, target, layer, batch_size: as for `kerascope.explain`.
        alpha, colormap: heatmap opacity at its peak, and its colours (see `overlay`; None:
            :data:`~kerascope.cam.overlay.DEFAULT_COLORMAP`).
        progress: called with the number of images done, after each image.
        colorbar: draw a low-to-high key of the colormap under the overlay.
        aug_smooth, eigen_smooth: smoothing options of the explainer (see `Explainer`).
        precision: ``auto`` (default), ``float32``, ``bfloat16``, ``float16``; see `Explainer`
            (`precision_of` says which ran).
        overwrite: replace existing files at the output names (never an input).
        workers: threads drawing and writing pictures (default: one per CPU, at most 32).
        pool: ``threads`` (default), or ``processes``: the pictures drawn in that many worker
            processes (spawned once per process and kept), each file decoded there and each map
            sent at feature resolution, so the drawing shares no GIL with the thread feeding
            the device. An option to measure where many cores meet a GIL-bound host
            (``benchmarks/explain_files.py --variants pictures,processes``).
        fit: ``whole`` (default) or ``crop``: what the model sees of each picture
            (`kerascope.cam.fitting`); with ``crop`` the crop is outlined and the label says so.
        skip_existing: leave out the inputs whose picture is already there (an interrupted
            run, run again, explains only the rest); names are those of the whole input list.

    Returns:
        One `SavedExplanation` per input, in input order (folders and globs in their expansion
        order; with ``skip_existing``, none for the inputs left out); a missing or unreadable
        input has ``error`` set, at its place, and no file.
        ``empty`` is set when the map showed nothing (the picture says so in its label).

    Raises:
        ValueError: an unknown method, layer or class (before any work).
        OutputExistsError: an output name is taken (no ``overwrite``) or is an input, or
            ``output_dir`` is a file (before any work).
        kerascope.files.OutputError: a picture could not be written (full disk, read-only).

    Example:
        >>> saved = save_explanations("photos/", "explained/")  # doctest: +SKIP
        >>> saved[0].path, saved[0].explanation.class_name  # doctest: +SKIP
        (PosixPath('explained/cat-output.jpg'), 'tabby')
    """
    check_fit(fit)
    clf = model if isinstance(model, Classifier) else shared_model(model)
    explainer = _cached_explainer(  # a bad method or layer fails first
        clf, method, layer, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
        precision=precision,
    )  # fmt: skip
    colormap = colormap or DEFAULT_COLORMAP
    overlay_check(alpha, colormap)
    sources, _, missing = normalise_inputs(inputs)
    targets = spread_targets(resolve_targets(clf, target, len(sources) - len(missing)), sources)
    out_dir = Path(output_dir)
    names = output_names(sources)
    paths = [None if n is None else out_dir / n for n in names]
    check_output_folder(out_dir, sources)
    check_outputs(paths, sources, overwrite or skip_existing)
    if skip_existing:  # after the check: an output that is an input is still refused
        todo = [i for i, p in enumerate(paths) if p is None or not os.path.lexists(p)]
        sources, paths = [sources[i] for i in todo], [paths[i] for i in todo]
        targets = None if targets is None else targets[todo]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out_dir, exc) from exc
    draw = dict(method=method, alpha=alpha, colormap=colormap, colorbar=colorbar,
                replace=overwrite)  # fmt: skip
    if pool not in ("threads", "processes"):
        raise ValueError(f"pool must be 'threads' or 'processes', got {pool!r}")
    workers = workers or min(32, os.cpu_count() or 1)
    processes = pool == "processes"
    in_flight: deque = deque()  # (Explanation, future or None, path), in input order
    limit = 2 * workers + batch_size  # pictures in flight: memory stays flat
    # Each file's decode for the model is kept for its picture when it is the whole picture
    # and the pictures alive at once (batches decoded, those in flight) fit in KEPT_BYTES;
    # else the picture thread decodes the file again. Processes decode their own.
    keep = 0 if processes else kept_pixels(batch_size, in_flight=limit)
    # uint8 heat levels: what the pictures draw, a quarter of the bytes off the device
    found = iter_unplaced(clf, explainer, sources, targets, batch_size, keep_up_to=keep,
                          upsample=not processes, fit=fit, levels=True)  # fmt: skip
    saved: list[SavedExplanation] = []

    def collect() -> None:
        e, future, path = in_flight[0]  # left in flight until done: a stop here counts it
        empty = False
        if future is not None:
            e, empty = future.result()  # a write error (full disk) stops the job here
        in_flight.popleft()
        saved.append(SavedExplanation(e, path if e.ok else None, empty))
        if progress is not None:
            progress(1)

    executor = _process_pool(workers) if processes else None
    executor = executor or ThreadPoolExecutor(workers, thread_name_prefix="kerascope-picture")
    try:
        with executor as pool:
            try:
                for source, path, (e, cam, item) in zip(sources, paths, found, strict=True):
                    future = None
                    if e.ok:
                        picture = picture_source(source, item)
                        map_at = (cam, item.shape, item.box)
                        if processes:  # a missing glyph is said here, once, not per process
                            covering_font(e.class_name or "")
                        future = pool.submit(_draw_one, picture, map_at, e, path, draw)
                    in_flight.append((e, future, path))
                    while len(in_flight) > limit:
                        collect()
                while in_flight:
                    collect()
                for folder in {p.parent for p in paths if p is not None}:  # the names, durable
                    fsync_dir(folder)
            except BaseException:
                for _, future, _ in in_flight:
                    if future is not None:
                        future.cancel()
                raise
    except BaseException:  # the pool has finished what it started: those pictures are written
        if progress is not None:  # "after 4 of 30" was said with 10 pictures on disk
            progress(sum(1 for _, f, _ in in_flight if _written(f)))
        raise
    return saved


def _written(future) -> bool:
    """Whether a picture's future finished with its file written (an explanation that came
    back with an error, its file gone since the forward, wrote none)."""
    return (future is not None and future.done() and not future.cancelled()
            and future.exception() is None and future.result()[0].ok)  # fmt: skip


class _Decoded:
    """A picture already decoded at full size for the model (`kerascope.sources.decode_item`)."""

    def __init__(self, image: np.ndarray):
        self.image = image


def picture_source(source: Source, item) -> Source | _Decoded:
    """What `draw_explanation` draws for ``source``: the model's decode of it (``item``, a
    `kerascope.sources.Item`) where that was kept (the whole picture, within the memory bound;
    one over :data:`OUTPUT_MAX_SIDE` is scaled down as a second decode would be), else the
    source, decoded again at reduced size (`_picture_image`). A kept panorama over the cap was
    decoded a second time, in full, though the first decode was still in memory."""
    return source if item.original is None else _Decoded(item.original)


_PROCESS_POOLS: dict[int, Any] = {}


class _KeptPool:
    """A process pool kept across jobs (spawning costs ~0.5 s): ``with`` does not shut it."""

    def __init__(self, pool):
        self.pool = pool

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc) -> None:
        return None


def _own_process() -> None:
    """A picture process is kerascope's own: it runs with the command's process settings."""
    import logging

    from kerascope.config import command_process_settings

    command_process_settings()
    # the parent looks up each label's font first (`save_explanations`) and warns there once:
    # each spawned process would say the same again
    logging.getLogger("kerascope.fonts").setLevel(logging.ERROR)


def _process_pool(workers: int) -> _KeptPool:
    """``workers`` spawned processes (not forked: JAX's threads must not be copied), kept."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = _PROCESS_POOLS.get(workers)
    if pool is None or getattr(pool, "_broken", False):
        context = multiprocessing.get_context("spawn")
        pool = _PROCESS_POOLS[workers] = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_own_process
        )
        # shut at exit while the interpreter is whole: an executor collected during its
        # teardown printed "Exception ignored in ... weakref_cb" (seen in xdist workers)
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return _KeptPool(pool)


def precision_of(
    clf: Classifier, method: str = "gradcam", layer: str | None = None, **options
) -> str:
    """The precision `save_explanations` / `kerascope.explain` with these arguments computes
    in (``float32``, ``bfloat16``, ``float16``): what the CLI reports."""
    return _cached_explainer(clf, method, layer, **options).precision


def _draw_one(source, map_at, e: Explanation, path: Path, draw: dict) -> tuple[Explanation, bool]:
    """One picture, in a worker thread: (the explanation, error set if the file went away;
    whether the map was empty). ``map_at``: (map as the model saw it, picture shape, box)."""
    cam = place_in_picture(*map_at)
    e = draw_explanation(source, cam, e, draw["method"], draw["alpha"], draw["colormap"], path,
                         draw["colorbar"], replace=draw["replace"], sync_folder=False)  # fmt: skip
    return e, e.ok and is_empty(cam)


def overlay_check(alpha: float, colormap: str) -> None:
    """Bad drawing options fail before any work, not at the first picture."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap_lut(colormap)


def draw_explanation(
    source: Source,
    cam: np.ndarray,
    e: Explanation,
    method: str,
    alpha: float,
    colormap: str | None,
    path: Path,
    colorbar: bool = False,
    replace: bool = True,
    sync_folder: bool = True,
) -> Explanation:
    """Write the picture `explain` writes for one explained source (original beside overlay,
    labelled with class, probability and method (`kerascope.cam.labels.picture_label`), and a
    note when the map is empty, optionally a colour key); ``e``, with ``error`` set when the
    file can no longer be decoded. Shared by `save_explanations` and ``kerascope batch
    explain``. ``colormap`` None: the default. ``replace`` False: a file that appeared at
    ``path`` is kept (`OutputExistsError`); ``sync_folder`` False: the caller syncs the folder
    (`write_jpeg`). Thread-safe: `save_explanations` calls it from a pool. When the model saw
    a crop (``e.box``), it is outlined on the overlay and the label says so
    (`kerascope.cam.fitting`)."""
    label = mark_empty(picture_label(e.class_name, e.probability, method), cam)
    return _draw(source, cam, label, alpha, colormap or DEFAULT_COLORMAP, path, e, colorbar,
                 replace, sync_folder)  # fmt: skip


def _draw(source, cam, label, alpha, colormap, path: Path, e, colorbar, replace=True,
          sync_folder=True):  # fmt: skip
    """Draw and write ``source``'s picture (decoded again unless `picture_source` gave the
    model's decode); one image at a time."""
    try:
        image = _picture_image(source)
    except (ImageError, ValueError, OSError) as exc:  # changed or removed since the forward
        return dataclasses.replace(e, error=getattr(exc, "reason", str(exc)))
    # All in Pillow (its C code runs outside the GIL, so the picture threads run in parallel);
    # the map is resampled to the picture in uint8 (the device path sends it at input size).
    base = Image.fromarray(image)
    label = with_caption(label, e.box, image.shape)
    del image
    blended = overlay_image(base, cam, alpha, colormap)
    blended = draw_outline(photo_outside(blended, base, e.box), e.box)  # a crop: outlined
    picture = side_by_side_image(base, blended, label, colorbar=colorbar, colormap=colormap)
    del base, blended
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from exc
    write_jpeg(picture, path, replace=replace, sync_folder=sync_folder)
    return e


def _picture_image(source: Source | _Decoded) -> np.ndarray:
    """The original as drawn: full size up to :data:`OUTPUT_MAX_SIDE`, scaled down beyond (a
    file decoded no larger than needed: a 12000x3000 JPEG at 6000x1500, not 36 MP); one under
    :data:`OUTPUT_MIN_SIDE` enlarged by a whole factor (a 1x1 picture's label was a smudge of
    a few pixels)."""
    if isinstance(source, _Decoded):
        image = source.image
    elif isinstance(source, str | os.PathLike):
        image = load_image(source, max_side=OUTPUT_MAX_SIDE)
    else:
        image = load_source(source)
    height, width = image.shape[:2]
    if max(height, width) < OUTPUT_MIN_SIDE:
        return enlarge(image, OUTPUT_MIN_SIDE)
    if max(height, width) <= OUTPUT_MAX_SIDE:
        return image
    scale = OUTPUT_MAX_SIDE / max(height, width)
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
