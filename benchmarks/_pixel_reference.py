"""The pixel-attribution methods written plainly in PyTorch on the reference EfficientNet-Lite0,
for benchmarks/explain.py to time beside kerascope's (pytorch-grad-cam has no SmoothGrad or
Integrated Gradients, and its guided backprop swaps only ReLU modules, not Lite0's ReLU6).

Each is what a PyTorch user would write: eager autograd, the batch at once, the noisy copies
or path points one batch at a time (Captum's ``internal_batch_size`` = the batch), the same
options as kerascope's defaults. Correctness is tests/test_pixel_methods.py's business.
"""

from __future__ import annotations

import numpy as np

from kerascope.testing.torch_reference import guided_copy
from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD


def pixel_reference_runs(net, methods) -> dict:
    """{kerascope method name: run(uint8 pixels (N, H, W, 3)) -> (N, H, W) maps}."""
    import torch
    import torch.nn.functional as F

    from kerascope.cam.methods import get_method

    guided, _ = guided_copy(net)

    def logits_of(model, pixels):
        return model(((pixels - INPUT_MEAN) / INPUT_STD).permute(0, 3, 1, 2))

    def grad(model, z, classes):
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(logits_of(model, z).gather(1, classes[:, None]).sum(), z)
        return g

    def blur(x, sigma):
        radius = int(4 * sigma + 0.5)
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
        taps = (taps / taps.sum()).repeat(3, 1, 1)
        y = x.permute(0, 3, 1, 2)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), taps[:, :, None], groups=3)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), taps[..., None], groups=3)
        return y.permute(0, 2, 3, 1)

    def gradcam(x, classes):
        a = net.extract_features(((x - INPUT_MEAN) / INPUT_STD).permute(0, 3, 1, 2))
        logits = net._fc(net._dropout(net._avg_pooling(a).flatten(start_dim=1)))
        (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)
        cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, x.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
        return cam / cam.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)

    def attribute(method: str, x, classes):
        spec = get_method(method).spec()
        if spec.kind == "gradient":
            return grad(net, x, classes)
        if spec.kind == "guided":
            return grad(guided, x, classes)
        if spec.kind == "guidedcam":
            return grad(guided, x, classes) * gradcam(x, classes)[..., None]
        if spec.kind == "smooth":
            sd = spec.noise * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))[:, None, None, None]
            total = sum(
                grad(net, x + sd * torch.randn_like(x), classes) for _ in range(spec.samples)
            )
            return total / spec.samples
        start = torch.zeros_like(x)
        if spec.baseline == "blurred":
            start = blur(x, spec.blur * max(x.shape[1:3]))
        path = x - start
        total = sum(
            grad(net, start + (k + 0.5) / spec.samples * path, classes) for k in range(spec.samples)
        )
        return path * total / spec.samples

    def run_for(method: str):
        positive = get_method(method).spec().reduce == "positive"

        def run(pixels: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(pixels.astype(np.float32))
            with torch.no_grad():
                classes = logits_of(net, x).argmax(1)
            a = attribute(method, x, classes)
            maps = torch.relu(a.sum(-1)) if positive else a.abs().amax(-1)
            level = torch.quantile(maps.flatten(1), 0.99, dim=1)[:, None, None]
            return torch.clamp(maps / level.clamp(min=1e-12), max=1.0).numpy()

        return run

    return {m: run_for(m) for m in methods if get_method(m).__module__ == "kerascope.cam.pixel"}
