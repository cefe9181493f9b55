"""Helpers for kerascope's own tests and benchmarks (as ``numpy.testing`` is for NumPy's):
real-photo datasets, a count of XLA compilations, and PyTorch reference pieces.

Nothing in the library imports this package; it imports only downward (images, zoo) and
needs the test extras (scikit-image for the photos, torch for the references) only when the
function that uses them is called. Benchmarks import it instead of importing tests.
"""

from __future__ import annotations

from .compiles import CompileCounter, count_compiles
from .photos import cat_and_coffee, grey_photo_crops, skimage_data

__all__ = ["CompileCounter", "cat_and_coffee", "count_compiles", "grey_photo_crops", "skimage_data"]
