"""Pixel-level attribution: which input pixels the class score is most sensitive to, behind the
same interface as the class-activation methods (``explain --method saliency``, ``--compare``,
the faithfulness metrics, the overlay and ``--colorbar``).

The score is the class logit ``y_c`` (pre-softmax, as for the CAM methods); gradients are taken
with respect to the input pixels on the 0..255 scale, before the model's own preprocessing.
Every method gives an (N, H, W, 3) attribution, reduced to an (H, W) map in [0, 1]:

* the gradient methods (saliency, SmoothGrad, Guided Backpropagation, Guided Grad-CAM):
  ``max_c |a|`` over the colour channels (Simonyan et al. 2014, Sec. 3.1);
* Integrated Gradients: ``ReLU(sum_c a)``: the pixel's share of ``y_c(x) - y_c(baseline)``
  (completeness), kept where it supports the class, as the CAM methods keep positive evidence;

then divided by its 99th percentile and clipped to 1: gradient maps are heavy-tailed, and
scaled to their peak most of the picture would be black. `PixelMethod.attributions` gives the
signed (N, H, W, 3) attributions before the reduction.

``sanity`` records the weight-randomisation check of Adebayo et al. 2018, run as for the CAM
methods (tests/test_cam_methods.py: Lite0's classifier and last block re-drawn, Pearson below
0.5 on each of four photos). Measured, highest (mean): saliency 0.49 (0.39), SmoothGrad 0.38
(0.23), Integrated Gradients 0.36 (0.28) from black at 128 steps; they pass. They fail: Guided
Backpropagation 0.99 (0.98, as Adebayo et al. found), Guided Grad-CAM 0.80 on rocket.jpg (0.47:
the guided factor survives) and Integrated Gradients from a blurred copy 0.55 on rocket.jpg
(0.31: its factor ``x - blur(x)`` is an edge map whatever the model).

Options are given after the name: ``ig:steps=64``, ``ig:baseline=blurred``,
``smoothgrad:samples=50,noise=0.2`` (`get_method` reads them).
"""

from __future__ import annotations

import numpy as np

from kerascope.cam.base import BaseCAM, MethodError, as_classifier, get_probe, model_pixels
from kerascope.inference import Pending

_OPTIONS = {"steps": int, "samples": int, "noise": float, "baseline": str, "seed": int}


class PixelMethod(BaseCAM):
    """Pixel attribution: the whole map in one compiled device call per batch (JAX: one
    ``jax.jit`` over the batch; torch: its autograd). Takes no layer, except Guided Grad-CAM,
    and no ``aug_smooth`` / ``eigen_smooth`` (SmoothGrad is the smoothed gradient)."""

    kind = "gradient"
    reduce = "maxabs"
    uses_layer = False
    steps = 1  # SmoothGrad's samples, Integrated Gradients' steps
    noise = 0.15
    baseline = "black"
    seed = 0

    def __init__(
        self,
        clf,
        layer: str | None = None,
        analytic=None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        precision: str | None = None,
    ):
        import keras

        from kerascope.precision import PIXEL_AUTO_NOTE, auto_kept_float32, map_precision

        if aug_smooth or eigen_smooth:
            raise MethodError(
                f"{self.name} attributes input pixels: aug_smooth and eigen_smooth are for the "
                "CAM methods (smoothgrad is the smoothed gradient)"
            )
        if layer is not None and not self.uses_layer:
            raise MethodError(
                f"{self.name} attributes the input pixels and takes no layer; drop the layer "
                "(guidedgradcam uses one)"
            )
        if keras.backend.backend() not in ("jax", "torch"):
            raise MethodError(
                f"{self.name} runs on the JAX or torch backend; set KERAS_BACKEND=jax"
            )
        self.clf = as_classifier(clf)
        self.probe = get_probe(self.clf, layer)
        self.layer = self.probe.layer if self.uses_layer else "input"
        self.aug_smooth = self.eigen_smooth = False
        self.analytic = False
        self.on_device = True  # every pixel map is computed in one device call
        self.precision = map_precision(precision, pixels=True)  # auto: float32 (its note)
        self.precision_note = PIXEL_AUTO_NOTE if auto_kept_float32(precision) else ""

    @classmethod
    def map_precision(cls, precision: str | None) -> str:
        """``"auto"`` where auto means bfloat16 here: the maps compute in float32 and say why
        (`kerascope.precision.PIXEL_AUTO_NOTE`); else what ``precision`` resolves to."""
        from kerascope.precision import auto_kept_float32, map_precision

        return "auto" if auto_kept_float32(precision) else map_precision(precision, pixels=True)

    @property
    def runs_async(self) -> bool:
        return False  # `start_batch` computes the maps before it returns

    @classmethod
    def spec(cls):
        """The device-side description of this method (`pixel_device.PixelSpec`)."""
        from kerascope.cam.pixel_device import PixelSpec

        return PixelSpec(cls.kind, cls.reduce, int(cls.steps), float(cls.noise),
                         cls.baseline, seed=int(cls.seed))  # fmt: skip

    @classmethod
    def configured(cls, options: str) -> type[PixelMethod]:
        """This method with options read from ``"steps=64,baseline=blurred"`` (a subclass named
        ``ig:steps=64,...``, cached, so equal options give the same class)."""
        given = {}
        for part in filter(None, (p.strip() for p in options.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            allowed = cls._allowed()
            if not eq or key not in allowed:
                raise ValueError(
                    f"unknown option {part!r} for {cls.name}; it takes "
                    f"{', '.join(f'{k}=' for k in allowed) or 'no options'}"
                )
            try:
                given[key] = _OPTIONS[key](value.strip().lower())
            except ValueError:
                raise ValueError(f"{cls.name}: {key} must be a number, got {value!r}") from None
        parsed = {("steps" if k == "samples" else k): v for k, v in given.items()}
        _check(cls, parsed)
        canonical = ",".join(f"{k}={given[k]}" for k in sorted(given))
        name = f"{cls.name}:{canonical}" if canonical else cls.name
        if name not in _CONFIGURED:
            _CONFIGURED[name] = type(cls.__name__, (cls,), {**parsed, "name": name})
        return _CONFIGURED[name]

    @classmethod
    def _allowed(cls) -> tuple[str, ...]:
        return ()

    def compilations(self) -> int:
        return self._fn().traces()

    def _fn(self):
        """The compiled call, built once per (model, method options, precision)."""
        from kerascope.cam.pixel_device import pixel_fn

        models = self.probe._models
        key = (self.spec(), self.precision)
        cache = models.setdefault("pixel", {})
        if key not in cache:
            probe, score = self.probe._probe_and_score()
            plain = self.probe._model("logits", self.probe.head.score_input)  # image -> head
            guided = None
            if self.kind in ("guided", "guidedcam"):
                if "pixel_guided" not in models:
                    models["pixel_guided"] = _guided(self.clf.model, plain, self.name)
                guided = models["pixel_guided"]
            cache[key] = pixel_fn(self.spec(), plain, guided, probe, score, self.precision)
        return cache[key]

    def start_batch(self, pixels, targets=None, pad_to=None, upsample=False, levels=False):
        """(maps (N, H, W) float32 in [0, 1] at the input size, whatever ``upsample`` says,
        class indices (N,), probabilities (N,)), computed now; arguments as
        `BaseCAM.explain_batch`."""
        pixels = model_pixels(self.clf, pixels)
        maps, classes, probs = self._fn()(pixels, self._targets(targets, len(pixels)),
                                          pad_to=pad_to)  # fmt: skip
        if levels:
            from kerascope.cam.overlay import to_levels

            maps = to_levels(maps)
        return Pending([maps, classes, probs], len(pixels), single=False)

    def attributions(self, pixels: np.ndarray, targets=None) -> tuple:
        """The signed attributions before the reduction: ((N, H, W, 3) float32 per input pixel
        and channel, class indices (N,), class logits (N,)). For Integrated Gradients their
        sum is ~ ``y_c(x) - y_c(baseline)`` (completeness; see `IntegratedGradients`)."""
        pixels = model_pixels(self.clf, pixels)
        return self._fn()(pixels, self._targets(targets, len(pixels)), raw=True)


_CONFIGURED: dict[str, type[PixelMethod]] = {}


def _check(cls, parsed: dict) -> None:
    if parsed.get("steps", 1) < 1 or parsed.get("steps", 1) > 10_000:
        raise ValueError(f"{cls.name}: steps must be 1..10000, got {parsed['steps']}")
    if not 0 < parsed.get("noise", 0.15) <= 10:
        raise ValueError(f"{cls.name}: noise must be in (0, 10], got {parsed['noise']}")
    if parsed.get("baseline", "black") not in ("black", "blurred"):
        raise ValueError(
            f"{cls.name}: baseline must be black or blurred, got {parsed['baseline']!r}"
        )


def _guided(model, plain, name: str):
    """The model to the head input, with guided ReLUs; a clear error when it has none."""
    from kerascope.cam.pixel_device import guided_model

    guided, relus = guided_model(plain)
    if relus == 0:
        raise MethodError(
            f"{name} needs ReLU activations and model '{model.name}' has none; use saliency"
        )
    return guided


class Saliency(PixelMethod):
    """Vanilla gradients (Simonyan et al. 2014, "Deep Inside Convolutional Networks", Sec. 3.1):
    ``M_ij = max_c |dy_c / dx_ijc|``."""

    name = "saliency"
    cost = "1 forward + 1 backward to the pixels"


class SmoothGrad(PixelMethod):
    """SmoothGrad (Smilkov et al. 2017, Eq. 3): the gradient averaged over ``samples`` copies
    with Gaussian noise of sd ``noise x (max - min)`` of the image (defaults 25 and 0.15, in
    their recommended 10-20 %), then reduced as saliency. The noise is drawn on the device from
    a fixed seed, the same for every image of a batch, so a map does not depend on its batch."""

    name = "smoothgrad"
    kind = "smooth"
    steps = 25
    cost = "25 noisy forwards + backwards (~25x saliency; smoothgrad:samples=N)"

    @classmethod
    def _allowed(cls):
        return ("samples", "noise", "seed")


class IntegratedGradients(PixelMethod):
    """Integrated Gradients (Sundararajan et al. 2017, Eq. 3, Riemann sum at the midpoints):
    ``a_i = (x_i - x'_i) / m sum_k dy_c/dx_i (x' + (k + 1/2)/m (x - x'))``. The baseline ``x'``
    is a black image (``ig``) or the image blurred with a Gaussian of sd 5 % of its longer side
    (``ig-blur``; Sturmfels et al. 2020: black pixels get no attribution against black).
    Completeness: ``sum_i a_i ~ y_c(x) - y_c(x')``, the error shrinking with ``steps``; measured
    on Lite0 and chelsea (tests/test_pixel_methods.py): from black 41 % off at 32 steps, 33 % at
    64, 9.7 % at 128; from the blurred copy 11 % at 32, 1.8 % at 64 and 128. Hence the defaults,
    128 and 64 steps."""

    name = "ig"
    kind = "integrated"
    reduce = "positive"
    steps = 128
    cost = "128 forwards + backwards along the path from black (~128x saliency; ig:steps=N)"

    @classmethod
    def _allowed(cls):
        return ("steps", "baseline")


BLACK_BASELINE_BIAS = (
    "from a black baseline a pixel's share grows with its brightness: blank white areas "
    "(padding bars, white walls) are credited over the object; ig-blur starts from a "
    "blurred copy instead"
)
"""Measured on catcoffee.png (a cat photo beside a coffee photo with white bars above and below
it): ig's map per pixel on the white bars was 1.48x its density on the cat half (Grad-CAM's
0.04x): ``a_i`` is proportional to ``x_i - 0``."""


def baseline_bias(method: type) -> str:
    """The black-baseline caveat for an Integrated Gradients method from black, else ""."""
    black = getattr(method, "kind", "") == "integrated" and method.baseline == "black"
    return BLACK_BASELINE_BIAS if black else ""


class IntegratedGradientsBlur(IntegratedGradients):
    __doc__ = IntegratedGradients.__doc__
    name = "ig-blur"
    baseline = "blurred"
    sanity = False  # measured: 0.55 on rocket.jpg (mean 0.31): x - blur(x) is an edge map
    steps = 64
    cost = "64 forwards + backwards along the path from a blurred copy (~64x saliency)"


class GuidedBackprop(PixelMethod):
    """Guided Backpropagation (Springenberg et al. 2015, Sec. 3.4, Fig. 1): at every ReLU only
    positive gradients pass back where the input was positive, ``1[z > 0] 1[g > 0] g``; reduced
    as saliency. Adebayo et al. 2018 found its maps nearly unchanged by randomising the
    network's weights (a partial edge detector); see ``sanity``."""

    name = "guidedbackprop"
    kind = "guided"
    sanity = False  # measured: 0.97-0.99 on all four photos (module docstring)
    cost = "1 forward + 1 guided backward to the pixels"


class GuidedGradCAM(PixelMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017, Sec. 3.2): Guided Backpropagation multiplied
    pixel by pixel with the Grad-CAM map at the target layer, upsampled bilinearly (peak 1);
    then reduced as saliency. Takes a layer, as Grad-CAM does."""

    name = "guidedgradcam"
    kind = "guidedcam"
    sanity = False  # measured: 0.80 on rocket.jpg (mean 0.47): guided backprop's edges survive
    uses_layer = True
    cost = "2 forwards + 2 backwards (Grad-CAM x guided backprop)"


PIXEL_METHODS: dict[str, type[PixelMethod]] = {
    m.name: m
    for m in (
        Saliency,
        SmoothGrad,
        IntegratedGradients,
        IntegratedGradientsBlur,
        GuidedBackprop,
        GuidedGradCAM,
    )  # fmt: skip
}
PIXEL_ALIASES = {
    "vanillagradients": "saliency", "gradients": "saliency", "integratedgradients": "ig",
    "igblur": "ig-blur", "guidedbp": "guidedbackprop", "guidedbackpropagation": "guidedbackprop",
    "gbp": "guidedbackprop",
}  # fmt: skip
