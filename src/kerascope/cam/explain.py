"""Why does the model think so? Heatmaps for images given as paths, folders, globs or arrays.

``explain`` mirrors ``classify``: same inputs, same decoding, one result per image in order,
and a file that cannot be read comes back with ``error`` set instead of raising. ``Explainer``
is the reusable part (video calls it per batch of frames): it keeps the compiled forward and
gradient functions, so explaining thousands of images compiles once and keeps memory flat.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from kerascope.cam.base import BaseCAM, as_classifier
from kerascope.cam.explanation import Explanation
from kerascope.cam.fitting import (
    DEFAULT_FIT,
    as_fractions,
    check_fit,
    fit_convention,
    place,
    untinted_outside,
)
from kerascope.cam.methods import check_class_choice, get_method
from kerascope.inference import Pending
from kerascope.zoo.models import Classifier


class Explainer:
    """A method bound to a classifier and a layer, reusable across calls.

    Args:
        clf: a `Classifier` or a bare Keras model.
        method: a name from `kerascope.cam.methods.METHODS` (``gradcam``, ``scorecam``, ...).
        layer: the layer to explain; default the zoo's ``cam_layer`` or the last spatial layer.
        analytic: see `BaseCAM` (``None``: closed-form gradient when the head allows it).
        aug_smooth: average over flipped and intensity-scaled copies (6x the cost).
        eigen_smooth: first principal component instead of the channel sum (less noise).
        precision: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (`kerascope.precision`);
            ``precision`` afterwards says what runs: reduced precision needs the device path
            (the gradient methods without smoothing), others run in float32.

    Example:
        >>> ex = Explainer(load_model("efficientnet_lite0"), "gradcam")
        >>> maps, classes, probs = ex.explain_batch(frames)  # frames: (N, 224, 224, 3) uint8
    """

    def __init__(
        self,
        clf: Classifier,
        method: str = "gradcam",
        layer: str | None = None,
        analytic=None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        precision: str | None = None,
    ):
        self.clf = as_classifier(clf)
        self.cam: BaseCAM = get_method(method)(
            self.clf, layer=layer, analytic=analytic, aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth, precision=precision,
        )  # fmt: skip
        self.method, self.layer = self.cam.name, self.cam.layer

    @property
    def precision(self) -> str:
        """The precision the maps are computed in (``float32``, ``bfloat16``, ``float16``)."""
        return self.cam.precision

    @property
    def on_device(self) -> bool:
        """Whether the whole map is computed in one compiled device call (`gradients.fused_fn`)."""
        return self.cam.on_device

    def compilations(self) -> int:
        """How many times the device function was compiled so far (JAX; 0 elsewhere)."""
        return self.cam.compilations()

    def explain_batch(
        self,
        pixels: np.ndarray,
        targets: None | int | Sequence[int] = None,
        pad_to: int | None = None,
        upsample: bool = False,
        levels: bool = False,
    ):
        """(N, h, w, 3) uint8 at ``clf.input_size`` -> (maps (N, fh, fw) float32 in [0, 1] at
        feature resolution, or at the input size with ``upsample``, class indices (N,),
        probabilities (N,)). ``pad_to``: the job's batch size (see `BaseCAM.explain_batch`).
        ``levels``: the maps as uint8 heat levels 0..255 (`to_levels`), what pictures draw."""
        running = self.start_batch(pixels, targets, pad_to=pad_to, upsample=upsample, levels=levels)
        return tuple(running.result())

    def start_batch(self, pixels: np.ndarray, targets=None, **options) -> Pending:
        """:meth:`explain_batch` (same arguments) dispatched: ``result()`` waits for the device
        (JAX, CUDA) and gives its tuple; meanwhile the caller prepares the next batch."""
        return self.cam.start_batch(pixels, targets, **options)


def _is_imagenet(clf: Classifier) -> bool:
    return clf.num_classes == 1000 and all(re.fullmatch(r"n\d{8}", i) for i, _ in clf.labels)


def resolve_target(clf: Classifier, target: int | str) -> int:
    """A class given as index, name or WordNet id -> its output index, or a clear ValueError."""
    if _is_imagenet(clf):
        from kerascope.zoo.imagenet import resolve_class

        return resolve_class(target)
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    if not isinstance(target, str):
        index = int(target)
        if not 0 <= index < clf.num_classes:
            raise ValueError(f"class index must be 0..{clf.num_classes - 1}, got {index}")
        return index
    key = re.sub(r"[\s_\-]+", " ", target).strip().lower()
    names = {re.sub(r"[\s_\-]+", " ", n).strip().lower(): i for i, (_, n) in enumerate(clf.labels)}
    if key in names:
        return names[key]
    shown = ", ".join(n for _, n in clf.labels[:20]) + (", ..." if clf.num_classes > 20 else "")
    raise ValueError(f"unknown class {target!r} for model '{clf.name}'; its classes: {shown}")


def _is_single(inputs) -> bool:
    from PIL import Image

    if isinstance(inputs, Image.Image):
        return True
    if isinstance(inputs, np.ndarray):
        return inputs.ndim in (2, 3)
    if isinstance(inputs, str | os.PathLike):
        path = os.fspath(inputs)
        return os.path.isfile(path) or not (os.path.isdir(path) or any(c in path for c in "*?["))
    return False


def explain(
    images_or_paths: str | os.PathLike | np.ndarray | Iterable,
    model: str | Classifier = "efficientnet_lite0",
    method: str = "gradcam",
    target: None | int | str | Sequence[int | str] = None,
    layer: str | None = None,
    batch_size: int = 16,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    precision: str | None = None,
    fit: str = DEFAULT_FIT,
) -> Explanation | list[Explanation]:
    """Explain the predictions for images given as paths, folders, globs, arrays or PIL Images.

    Args:
        images_or_paths: one image (path, (H, W, 3) array or PIL Image) or many (list,
            folder, glob).
        model: zoo name, ``.keras`` path or run directory, or a loaded `Classifier`.
        method: ``gradcam`` (default) or another name of `kerascope.cam.methods.METHODS`.
        target: the class to explain: ``None`` for each image's top-1, an index, a name
            (``"tabby"``) or a WordNet id; or a list, one per image found (in the order
            folders and globs expand to; missing inputs do not count). For ImageNet models
            also a group, any WordNet ancestor of its classes (``"cat"``, ``"dog"``,
            ``"vehicle"`` or a wnid): the map of the group's merged logit, the label its summed
            probability (`kerascope.cam.groups`).
        layer: the layer to explain (default: the zoo's, else the last spatial layer).
        batch_size: images per forward pass.
        aug_smooth: average the maps of flipped and intensity-scaled copies.
        eigen_smooth: first principal component of the weighted activations.
        precision: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (see `Explainer`).
        fit: ``whole`` (default): the model sees the whole picture resized to its input, and
            the map covers all of it; ``crop``: it sees what `classify` shows it (the zoo's
            centre crop), the map covers that part (`kerascope.cam.fitting`).

    Returns:
        One `Explanation` for a single image, else a list in input order. Unreadable inputs
        get ``error`` set; an unknown class, method or layer raises ValueError.

    Example:
        >>> e = kerascope.explain("chelsea.png")
        >>> e.class_name, e.heatmap.shape
        ('Egyptian_cat', (300, 451))
    """
    from kerascope.cam.groups import class_or_group
    from kerascope.sources import normalise_inputs
    from kerascope.zoo.shared import shared_model

    check_fit(fit)
    check_class_choice(method, target)
    clf = model if isinstance(model, Classifier) else shared_model(model)
    clf, target = class_or_group(clf, target)  # "cat": its classes merged (kerascope.cam.groups)
    explainer = _cached_explainer(clf, method, layer, aug_smooth, eigen_smooth, precision)
    single = _is_single(images_or_paths)
    sources, _, missing = normalise_inputs(images_or_paths)
    targets = spread_targets(resolve_targets(clf, target, len(sources) - len(missing)), sources)
    found = iter_explanations(clf, explainer, sources, targets, batch_size, fit=fit)
    results = [e for e, _ in found]
    return results[0] if single and len(results) == 1 else results


def resolve_targets(
    clf: Classifier, target: None | int | str | Sequence[int | str], n: int
) -> np.ndarray | None:
    """``target`` as `explain` takes it -> None (each image's top-1) or n output indices."""
    if isinstance(target, float) and target.is_integer():  # 3.0: class 3
        target = int(target)
    if not (target is None or isinstance(target, str | int | np.integer | Sequence)):
        raise TypeError(f"target is a class (index, name or WordNet id) or one per image, got "
                        f"{target!r:.60}")  # fmt: skip
    if target is None or isinstance(target, str | int | np.integer):
        return None if target is None else np.full(n, resolve_target(clf, target))
    if len(target) != n:
        raise ValueError(f"{len(target)} targets given for {n} images")
    return np.array([resolve_target(clf, t) for t in target], dtype=np.int64)


def spread_targets(targets: np.ndarray | None, sources: Sequence) -> np.ndarray | None:
    """Targets given per image found -> one per source, a placeholder at each missing input."""
    from kerascope.sources import Missing

    if targets is None:
        return None
    found = np.array([not isinstance(s, Missing) for s in sources], dtype=bool)
    full = np.zeros(len(sources), np.int64)
    full[found] = targets
    return full


def iter_explanations(
    clf: Classifier,
    explainer: Explainer,
    sources: Sequence,
    targets: np.ndarray | None = None,
    batch_size: int = 16,
    fit: str = DEFAULT_FIT,
) -> Iterator[tuple[Explanation, np.ndarray | None]]:
    """Explain sources (as `normalise_inputs` returns them) in order, one batch at a time.

    ``targets`` has one entry per source (see `spread_targets`); a missing or unreadable
    source yields an `Explanation` with ``error`` set at its place.

    Yields each `Explanation` with its full-resolution RGB image (None when unreadable), so a
    caller that draws the overlay does not decode the file again. ``fit``: what the model sees
    of each picture (`kerascope.cam.fitting`).

    The model's input is decoded as every other explain path decodes it (a large JPEG at
    reduced size, `kerascope.sources.decode_item`), so `kerascope.faithfulness`, ``--score``
    and ``--compare`` see the very pixels this explanation was computed on. That decode is
    the full-size picture, for the heatmap's resolution, unless it was reduced (a large file)
    or is too large to keep with the batches decoded ahead: then the picture is a second
    decode, one image at a time.
    """
    import dataclasses

    from kerascope.cam.overlay import upsample
    from kerascope.images import ImageError
    from kerascope.sources import kept_pixels, load_source

    keep = kept_pixels(batch_size)
    found = _iter_cams(clf, explainer, sources, targets, batch_size, keep, fit=fit)
    for source, (e, cam, it) in zip(sources, found, strict=True):
        if cam is None:
            yield e, None
            continue
        try:  # the picture at full size (the model's input may come from a reduced decode)
            original = load_source(source) if it.original is None else it.original
        except (ImageError, ValueError, OSError) as exc:  # changed or removed since
            yield dataclasses.replace(e, error=getattr(exc, "reason", str(exc))), None
            continue
        e.model_map = cam
        heat = upsample(place(cam, e.box, it.shape), original.shape[:2])
        peak = float(heat.max())  # maps peak at 1; resampling (twice, when placed) shaves it
        e.heatmap = untinted_outside(heat / peak if peak > 0 else heat, e.box)
        yield e, original


def iter_unplaced(
    clf: Classifier,
    explainer: Explainer,
    sources: Sequence,
    targets: np.ndarray | None = None,
    batch_size: int = 16,
    keep_up_to: int = 0,
    upsample: bool = True,
    fit: str = DEFAULT_FIT,
    levels: bool = False,
) -> Iterator[tuple[Explanation, np.ndarray | None, object]]:
    """As `iter_explanations`, but keeping no heatmap: each `Explanation` comes beside its map
    as the model saw it and its decoded item (whose ``shape`` and ``box``
    `overlay.place_in_picture` or `fitting.place` needs, and, as ``original``, the
    full-size picture where that decode is it and has at most ``keep_up_to`` pixels): so the
    caller can place and draw it in a worker thread, off the thread that feeds the device.
    ``upsample`` False: maps at feature resolution on the device path too (small to send to
    another process). ``levels``: maps as uint8 heat levels (what pictures draw: a quarter of
    the float maps' bytes to copy off the device, under the GIL)."""
    yield from _iter_cams(clf, explainer, sources, targets, batch_size, keep_up_to, upsample,
                          fit, levels)  # fmt: skip


def _iter_cams(
    clf,
    explainer,
    sources,
    targets,
    batch_size,
    keep_up_to,
    upsample=True,
    fit=DEFAULT_FIT,
    levels=False,
):
    """(Explanation without heatmap, map as the model saw it or None, decoded item) per source.

    Pictures are fitted under ``fit`` (`kerascope.cam.fitting.fit_convention`: ``whole``
    resizes the whole picture to the input, ``crop`` fits it as `classify` does), and the
    `Explanation` says which part the model saw (``box``). Where that is a part, the callers
    place the map over it (`fitting.place`), the rest staying untinted: the model did not see
    it. Placing is left to them so that `save_explanations` does it in its picture threads, not
    in the thread that feeds the device. Every number of the explanation (class, probability,
    map) comes from ``item.pixels``: the one input `faithfulness` scores too.

    On a GPU or TPU batch i + 1 is dispatched to the device before batch i's maps are copied
    back and given out, so the device computes while the host stacks and hands out the batch
    before (`_dispatch_ahead`).
    """
    from kerascope.dispatch import dispatch_ahead
    from kerascope.sources import iter_batches

    size, convention = clf.input_size, fit_convention(clf, fit)
    offset = 0  # of the batch in ``sources`` (and ``targets``)

    def start(items):
        nonlocal offset
        rows = [i for i, it in enumerate(items) if it.error is None]
        running = None
        if rows:
            batch_targets = None if targets is None else targets[offset + np.array(rows)]
            pixels = np.stack([items[i].pixels for i in rows])
            running = explainer.start_batch(
                pixels, batch_targets, pad_to=batch_size,
                upsample=upsample and explainer.on_device, levels=levels,
            )  # fmt: skip
        offset += len(items)
        return rows, running

    def finish(items, started):
        return _explained(clf, fit, explainer.method, items, *started)

    batches = iter_batches(sources, size, batch_size, keep_up_to, convention)
    yield from dispatch_ahead(batches, start, finish, ahead=_dispatch_ahead(explainer))


def _dispatch_ahead(explainer: Explainer) -> bool:
    """Whether to dispatch the next batch before a batch is given out: on an accelerator (on a
    CPU, Lite0's maps measured 3-7 % slower so: `benchmarks/explain_files.py --engine keras`)."""
    from kerascope.inference import on_cpu

    return explainer.cam.runs_async and not on_cpu()


def _explained(clf, fit, method, items, rows, running):
    """`_iter_cams`'s triples for one batch, once its device call has finished."""
    if rows:
        maps, classes, probs = running.result()
    row = {i: r for r, i in enumerate(rows)}
    for i, it in enumerate(items):
        if it.error is not None:
            yield Explanation(it.source, error=it.error), None, it
            continue
        r = row[i]
        c = int(classes[r])
        wnid, name = clf.labels[c]
        box = as_fractions(it.box, it.shape)
        e = Explanation(it.source, None, c, wnid, name, float(probs[r]), fit=fit, box=box,
                        method=method)  # fmt: skip
        yield e, maps[r], it
        items[i] = None  # the consumer may drop its full-size image as soon as it is done


def _cached_explainer(
    clf: Classifier,
    method: str,
    layer: str | None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    precision: str | None = None,
) -> Explainer:
    """One Explainer per (classifier, method, layer, options), so repeated calls compile
    nothing. The plain key stays ``(method, layer)``, as callers look it up."""
    cache = clf.extra.setdefault("explainers", {})
    kind = get_method(method)
    key = (kind.name, layer)
    if aug_smooth or eigen_smooth:
        key = (*key, bool(aug_smooth), bool(eigen_smooth))
    wanted = kind.map_precision(precision)  # "auto": a pixel method's float32, with its note
    key = key if wanted == "float32" else (*key, wanted)
    if key not in cache:
        cache[key] = Explainer(clf, method, layer, aug_smooth=aug_smooth,
                               eigen_smooth=eigen_smooth, precision=wanted)  # fmt: skip
    return cache[key]
