"""Bottleneck features of zoo backbones, cached in HDF5 (`store`), built from `branches`."""

from kerascope.bottleneck.branches import (
    POOLS,
    FeatureCacheError,
    FeatureSpec,
    build_body,
    features,
    forward_for,
    resizer,
    weights_checksum,
)
from kerascope.bottleneck.store import FeatureSet, FeatureStore, extract_features, partial_path

__all__ = [
    "POOLS",
    "FeatureCacheError",
    "FeatureSet",
    "FeatureSpec",
    "FeatureStore",
    "build_body",
    "extract_features",
    "features",
    "forward_for",
    "partial_path",
    "resizer",
    "weights_checksum",
]
