"""Phrases the pictures' labels and the tables share, and the shorter wording a label takes
where its bar is narrow (`kerascope.cam.text.fit_bar`).

On a 224 px video frame, "Egyptian cat 77.1% (eigencam: the layer's main component, not
class-specific)" wrapped to two lines at 8 px, readable only zoomed in, while "goldfish <0.01%
(gradcam): map shape only" got one line at 10 px; "(eigencam: no class)" gets 11 px there.
"""

from __future__ import annotations

NOT_A_CLASS = "the layer's main component, not class-specific"
"""What a class-independent method's map is (said in labels, titles and score lines)."""
NO_CLASS = "no class"
""":data:`NOT_A_CLASS` where a label's bar is too narrow for it at full size."""
NOT_CLASS_SPECIFIC = "not class-specific"
"""A class-independent map in a table's class column, beside the top class."""
_SHORTER = ((NOT_A_CLASS, NO_CLASS),)


def shorter(label: str) -> str | None:
    """``label`` in its shorter wording (:data:`NO_CLASS` for :data:`NOT_A_CLASS`), None when
    it has none."""
    for long, short in _SHORTER:
        if long in label:
            return label.replace(long, short)
    return None


def shown_name(class_name: str) -> str:
    """A class name as pictures show it: Keras's ``tiger_cat`` as ``tiger cat`` (tables, CSV
    and JSON keep Keras's name, which ``--class`` takes and users grep)."""
    return class_name.replace("_", " ")
