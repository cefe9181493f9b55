"""Class activation maps: which pixels made the model choose a class.

``methods`` holds the methods (CAM, Grad-CAM, Grad-CAM++, Score-CAM, Ablation-CAM, XGrad-CAM,
HiResCAM, Eigen-CAM, LayerCAM); ``base`` the shared machinery; ``graph`` finding and re-calling
the target layer; ``gradients`` the backend-specific autodiff; ``perturbation`` the batched
forward passes of the gradient-free methods; ``smoothing`` the aug/eigen smoothing options;
``overlay`` the colouring. Most users want `kerascope.explain`.
"""

from kerascope.cam.base import BaseCAM, LayerError, MethodError, candidate_layers, find_layer
from kerascope.cam.methods import (
    CAM,
    METHODS,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    get_method,
)

__all__ = [
    "AblationCAM",
    "BaseCAM",
    "CAM",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerError",
    "METHODS",
    "MethodError",
    "ScoreCAM",
    "XGradCAM",
    "candidate_layers",
    "find_layer",
    "get_method",
]
