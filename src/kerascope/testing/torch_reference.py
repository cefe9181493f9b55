"""Pieces of the PyTorch reference EfficientNet-Lite0 (``efficientnet-lite-pytorch``) that both
the pixel-method tests and benchmarks/explain.py use: one definition of guided backprop."""

from __future__ import annotations

import copy

ACTIVATIONS = ("_swish", "_head_act")  # the package's shared ReLU6; benchmarks' separate head


def guided_copy(net):
    """(a deep copy of ``net`` whose ReLU6 modules pass back ``g 1[0 < z < 6] 1[g > 0]``, how
    many modules were swapped). As pytorch-grad-cam's GuidedBackpropReLUModel swaps ReLUs,
    which would miss Lite0's ReLU6."""
    import torch

    class GuidedReLU6(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return z.clamp(0, 6)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * ((z > 0) & (z < 6)).to(g.dtype) * (g > 0).to(g.dtype)

    class Guided(torch.nn.Module):
        def forward(self, z):
            return GuidedReLU6.apply(z)

    guided = copy.deepcopy(net)
    swapped = 0
    for module in guided.modules():
        for name in ACTIVATIONS:
            if isinstance(getattr(module, name, None), torch.nn.ReLU6):
                setattr(module, name, Guided())
                swapped += 1
    return guided.eval(), swapped
