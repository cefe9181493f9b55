"""Shared fixtures: real photos from scikit-image and a private weights cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # plain `import keras` would default to TF


def pytest_configure(config):
    """A fresh weights cache per session: exercises the port from the installed .pth packages
    and never touches the user's ~/.keras. Runs before kerascope (and Keras) are imported."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="kerascope-test-home-"))
    os.environ["KERASCOPE_HOME"] = str(home)
    os.environ["KERASCOPE_OFFLINE"] = "1"  # CI has no network; never try to download


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="session")
def chelsea(skimage_data) -> np.ndarray:
    """A real photo (cat, 300x451) shipped with scikit-image."""
    from PIL import Image

    with Image.open(skimage_data / "chelsea.png") as img:
        return np.array(img.convert("RGB"))


@pytest.fixture(scope="session")
def photo_paths(skimage_data) -> dict[str, Path]:
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    return {n.split(".")[0]: skimage_data / n for n in names}


@pytest.fixture(scope="session")
def lite0():
    """The default model with real ported weights, built once per session."""
    from kerascope.zoo.models import load_model

    return load_model("efficientnet_lite0")


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    from kerascope.images import load_image, resize

    image = load_image(path)
    return resize(image, (size, size)) if size else image
