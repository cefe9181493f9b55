"""Class activation maps: which pixels made the model choose a class.

``methods`` holds CAM, Grad-CAM and Grad-CAM++; ``base`` the shared machinery; ``graph`` finding
and re-calling the target layer; ``gradients`` the backend-specific autodiff; ``overlay`` the
colouring. Most users want `kerascope.explain`.
"""

from kerascope.cam.base import BaseCAM, LayerError, MethodError, candidate_layers, find_layer
from kerascope.cam.methods import CAM, METHODS, GradCAM, GradCAMPlusPlus, get_method

__all__ = [
    "BaseCAM",
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerError",
    "METHODS",
    "MethodError",
    "candidate_layers",
    "find_layer",
    "get_method",
]
