"""Bottleneck features of zoo backbones, built from `branches`, cached in HDF5 (`extract` writes
the store, `groups` brings each backbone's group up to date, `store` reads it)."""

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
from kerascope.bottleneck.extract import extract_features
from kerascope.bottleneck.store import FeatureSet, FeatureStore, partial_path

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
