"""What a heatmap's label says it is: the class it explains, or that it explains no class.

Every map is drawn relative to its own maximum (`kerascope.cam.overlay`), so a class the model
all but rules out still gets a bright "hot" region: goldfish at <0.01 % on a cat photo drew a
band as bright as the cat's own class. Such a label says the map is its shape only. A
class-independent method (EigenCAM: the layer's first principal component) explains no class:
its label names the layer's main component, not the top class as if the map were about it.
"""

from __future__ import annotations

from kerascope.output import percent

NEGLIGIBLE = 0.01
"""Below this probability the explained class's map is its shape only: the model gives the
class next to nothing, though the map is drawn as brightly as any (its own maximum is 1)."""
NOT_A_CLASS = "the layer's main component, not class-specific"
"""What a class-independent method's map is (said in labels, titles and score lines)."""
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
    """Whether the model gives the explained class next to nothing (:data:`NEGLIGIBLE`)."""
    return probability is not None and float(probability) < NEGLIGIBLE


def picture_label(class_name: str, probability: float, method: str | None = None) -> str:
    """The label of an explain picture or a video frame: ``Egyptian cat 77.1% (gradcam)``;
    ``goldfish (gradcam) - map shape only: the model gives this class <0.01%`` for a class the
    model all but rules out; ``eigencam: the layer's main component, not class-specific (top
    class tiger cat 40.3%)`` for a class-independent method."""
    name = class_name.replace("_", " ")
    chance = percent(probability)
    if is_class_independent(method):
        return f"{method}: {NOT_A_CLASS} (top class {name} {chance})"
    how = f" ({method})" if method else ""
    if is_negligible(probability):
        return f"{name}{how} - map shape only: the model gives this class {chance}"
    return f"{name} {chance}{how}"
