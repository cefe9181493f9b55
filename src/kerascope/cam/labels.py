"""What a heatmap's label says it is: the class it explains, or that it explains no class.

Every map is drawn relative to its own maximum (`kerascope.cam.overlay`), so a class the model
all but rules out still gets a bright "hot" region: goldfish at <0.01 % on a cat photo drew a
band as bright as the cat's own class. Such a label says the map is its shape only. A
class-independent method (EigenCAM: the layer's first principal component) explains no class:
its label names the layer's main component, not the top class as if the map were about it.
"""

from __future__ import annotations

from kerascope.cam.wording import NOT_A_CLASS, NOT_CLASS_SPECIFIC, shown_name
from kerascope.output import percent

NEGLIGIBLE = 0.01
"""Below this probability, as printed, the explained class's map is its shape only: the model
gives the class next to nothing, though the map is drawn as brightly as any (its maximum is 1)."""
RELATIVE_SCALE = "colours are relative to each map's maximum"
"""The colour scale of every picture: the map divided by its own maximum."""


def is_class_independent(method: str | None) -> bool:
    """Whether ``method`` (a registry name, options allowed) draws the same map for any class."""
    if not method:
        return False
    from kerascope.cam.methods import get_method

    try:
        return bool(getattr(get_method(method), "class_independent", False))
    except ValueError:
        return False


def is_negligible(probability: float | None) -> bool:
    """Whether the model gives the explained class next to nothing: the probability *as
    printed* (`kerascope.output.percent`) is under 1 %. 0.00996 prints "1.0%" and is not
    negligible; an unknown (None, NaN) probability is not either."""
    if probability is None:
        return False
    shown = percent(probability)
    if shown == "n/a":
        return False
    return float(shown.lstrip("<").rstrip("%")) < 100 * NEGLIGIBLE


def picture_label(class_name: str, probability: float | None, method: str | None = None) -> str:
    """The label of an explain picture or a video frame, class and probability first (a label
    too long for a small picture is shrunk or wrapped, `kerascope.cam.overlay`, and what is
    read first is what matters): ``Egyptian cat 77.1% (gradcam)``; ``goldfish <0.01%
    (gradcam): map shape only`` for a class the model all but rules out; ``Egyptian cat 72.4%
    (eigencam: the layer's main component, not class-specific)`` for a class-independent
    method, whose class is the top one the map is not about (``(eigencam: no class)`` where the
    bar is narrow: `kerascope.cam.wording`). ``probability`` None: no number."""
    name = shown_name(class_name)
    head = name if probability is None else f"{name} {percent(probability)}"
    if is_class_independent(method):
        return f"{head} ({method}: {NOT_A_CLASS})"
    how = f" ({method})" if method else ""
    if is_negligible(probability):
        return f"{head}{how}: map shape only"
    return f"{head}{how}"


def class_cell(class_name: str, method: str | None = None) -> str:
    """The class column of a table (Keras's name, as tables print it): ``Egyptian_cat``, or for
    a class-independent method, whose map is about no class, ``not class-specific (top class
    Egyptian_cat)``: the table showed the top class as the class explained."""
    if is_class_independent(method):
        return f"{NOT_CLASS_SPECIFIC} (top class {class_name})"
    return class_name
