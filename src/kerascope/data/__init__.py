"""Folder datasets for training: scan and split, batches for ``fit``, augmentation (one
definition, ``sample_matrices``; executed by Pillow on the host or ``warp`` on the device).

Names are imported lazily: scanning a folder (``kerascope.data.folders``) needs neither Keras
nor a backend, while the loader and augmentation import Keras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "AugmentConfig",
    "Dataset",
    "DatasetError",
    "FolderSequence",
    "augment_preview",
    "build_augmentation",
    "make_sequences",
    "sample_matrices",
    "scan_dataset",
    "warp",
]

_WHERE = {
    "Dataset": "folders",
    "DatasetError": "folders",
    "scan_dataset": "folders",
    "FolderSequence": "loader",
    "make_sequences": "loader",
    "AugmentConfig": "augment",
    "augment_preview": "preview",
    "build_augmentation": "augment",
    "sample_matrices": "augment",
    "warp": "augment",
}

if TYPE_CHECKING:
    from kerascope.data.augment import (
        AugmentConfig,
        build_augmentation,
        sample_matrices,
        warp,
    )
    from kerascope.data.folders import Dataset, DatasetError, scan_dataset
    from kerascope.data.loader import FolderSequence, make_sequences
    from kerascope.data.preview import augment_preview


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"kerascope.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'kerascope.data' has no attribute {name!r}")
