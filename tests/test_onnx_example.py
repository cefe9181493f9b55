"""examples/onnx_predict.py sees the same pixels as `kerascope classify`, for every pixel format.

The example runs without kerascope, so it carries a copy of kerascope's conversion rule; these
tests hold the copy to the original: identical fitted arrays for 16-bit, transparent, palette,
float, CMYK and rotated files, and the same top-1 from the exported model on a 16-bit PNG.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascope.images import fit, load_image
from kerascope.zoo.registry import InputConvention
from tests.test_export import lite0_onnx  # noqa: F401  (the exported Lite0, a fixture)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "onnx_predict.py"
FITS = {
    "crop-bicubic": {"resize": "crop", "crop_fraction": 0.875, "interpolation": "bicubic"},
    "squash": {},
}


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("onnx_predict", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gray16(chelsea: np.ndarray, path: Path) -> Path:
    """Chelsea as a 16-bit grayscale PNG using the whole 16-bit range (Pillow: mode I;16)."""
    gray = np.asarray(Image.fromarray(chelsea).convert("L"), dtype=np.uint32)
    Image.fromarray((gray * 257).astype(np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")
    return path


def pictures(chelsea: np.ndarray, folder: Path) -> dict[str, Path]:
    """One file per conversion branch of `kerascope.images.to_rgb`."""
    rng = np.random.default_rng(0)
    h, w = chelsea.shape[:2]
    alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(chelsea).convert("L"))
    made = {"16-bit gray": gray16(chelsea, folder / "gray16.png")}
    saves = {
        "rgba.png": Image.fromarray(np.concatenate([chelsea, alpha], axis=-1), "RGBA"),
        "la.png": Image.fromarray(np.concatenate([gray[..., None], alpha], axis=-1), "LA"),
        "int32.tif": Image.fromarray(gray.astype(np.int32) * 3, "I"),  # 0..765: stretched
        "float.tif": Image.fromarray(gray.astype(np.float32) / 255.0, "F"),
        "cmyk.jpg": Image.fromarray(chelsea).convert("CMYK"),
        "palette.png": Image.fromarray(chelsea).quantize(64),
    }
    for name, image in saves.items():
        image.save(folder / name)
        made[name] = folder / name
    trns = Image.fromarray(chelsea).quantize(64)
    trns.info["transparency"] = 3
    trns.save(folder / "palette-trns.png", transparency=3)
    made["palette-trns.png"] = folder / "palette-trns.png"
    rotated = Image.fromarray(chelsea)
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to show it
    rotated.save(folder / "rotated.jpg", exif=exif)
    made["rotated.jpg"] = folder / "rotated.jpg"
    return made


@pytest.mark.parametrize("fit_name", list(FITS))
def test_example_fits_every_pixel_format_exactly_as_kerascope(example, chelsea, tmp_path,
                                                              fit_name):  # fmt: skip
    fit_entry = FITS[fit_name]
    convention = InputConvention(**fit_entry) if fit_entry else None
    for name, path in pictures(chelsea, tmp_path).items():
        want = fit(load_image(path, min_size=(224, 224)), (224, 224), convention)
        got = example.load(str(path), 224, 224, fit_entry)
        assert got.dtype == np.uint8 and got.shape == (224, 224, 3), name
        assert np.array_equal(got, want), f"{name}: max difference {np.abs(got - want).max()}"


def test_example_and_classify_agree_on_a_16bit_png(lite0_onnx, lite0, chelsea, tmp_path):  # noqa: F811
    from kerascope.classification import classify

    path = gray16(chelsea, tmp_path / "chelsea16.png")
    done = subprocess.run([sys.executable, str(SCRIPT), str(lite0_onnx), str(path), "--top", "3"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    best = classify(str(path), model=lite0, top=3)[0].predictions
    assert [int(r[2]) for r in rows] == [p.index for p in best]
    assert abs(float(rows[0][5]) - best[0].probability) <= 1e-4
    # and the picture is still a cat for both (a clipped, all-white picture was not)
    assert best[0].index in {281, 282, 283, 284, 285}, best[0]
