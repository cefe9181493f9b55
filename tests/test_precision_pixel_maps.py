"""``--precision auto`` on a GPU with native bfloat16: CAM methods in bfloat16, pixel
attributions (input gradients, too coarse in bfloat16) in float32 with the reason said; and
torch's bf16 test counts no emulated bf16 (V100, T4) as native. Forced on the CPU by
monkeypatching the device decisions."""

from __future__ import annotations

import pytest

import kerascope.precision as precision


@pytest.fixture
def bf16_gpu(monkeypatch):
    """The decision "this device computes bfloat16 natively", as on an H100."""
    monkeypatch.delenv("KERASCOPE_PRECISION", raising=False)
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)


@pytest.mark.parametrize(
    "method, asked, runs",
    [
        ("gradcam", "auto", "bfloat16"),
        ("gradcam", None, "bfloat16"),  # auto by default
        ("saliency", "auto", "float32"),
        ("saliency", None, "float32"),
        ("integratedgradients", "auto", "float32"),
        ("saliency", "bfloat16", "bfloat16"),  # asked by name: honoured
        ("saliency", "float16", "float16"),
    ],
)
def test_auto_is_float32_for_pixel_attributions_only(tiny_clf, bf16_gpu, method, asked, runs):
    from kerascope.cam.explain import Explainer, _cached_explainer

    explainer = Explainer(tiny_clf, method, precision=asked)
    assert explainer.precision == runs
    noted = method != "gradcam" and asked in (None, "auto")
    assert bool(explainer.cam.precision_note) == noted
    if noted:
        assert "float32" in explainer.cam.precision_note and "--precision bfloat16" in (
            explainer.cam.precision_note)  # fmt: skip
    cached = _cached_explainer(tiny_clf, method, None, precision=asked)
    assert (cached.precision, cached.cam.precision_note) == (runs, explainer.cam.precision_note)


def test_auto_saliency_maps_compute_in_float32(tiny_clf, bf16_gpu, chelsea):
    import numpy as np

    import kerascope

    pixels = np.asarray(chelsea[:64, :64])
    maps = {p: kerascope.explain(pixels, model=tiny_clf, method="saliency", precision=p).heatmap
            for p in ("auto", "float32", "bfloat16")}  # fmt: skip
    np.testing.assert_allclose(maps["auto"], maps["float32"], atol=1e-6)
    assert np.abs(maps["bfloat16"] - maps["float32"]).max() > 1e-3  # bf16 does differ


def test_without_native_bf16_auto_is_float32_and_says_nothing(tiny_clf, monkeypatch):
    from kerascope.cam.explain import Explainer

    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    explainer = Explainer(tiny_clf, "saliency", precision="auto")
    assert (explainer.precision, explainer.cam.precision_note) == ("float32", "")


class _Cuda:
    """torch.cuda on a V100: bf16 only emulated (``is_bf16_supported()`` says True)."""

    def __init__(self, major: int):
        self.major = major

    def is_available(self) -> bool:
        return True

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return self.major >= 8 or including_emulation

    def get_device_capability(self, device=None) -> tuple[int, int]:
        return self.major, 0


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_torch_counts_no_emulated_bf16(monkeypatch, major, native):
    import keras
    import torch

    import kerascope.batch_sizes as batch_sizes

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(batch_sizes, "device_kind", lambda: "gpu")
    monkeypatch.setattr(torch, "cuda", _Cuda(major))
    assert precision.native_bfloat16() is native  # before: True on a V100 (sm 7.0)
