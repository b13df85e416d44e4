"""A dataset: train and test splits, and the description checkpoints record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from aecore.data.tensors import TensorData

__all__ = ["Dataset"]


@dataclass
class Dataset:
    """Train and test splits plus the description recorded in checkpoints.

    ``name`` is the ``--data`` text that reloads exactly this data (a data
    source fills it in); ``spec`` is what the checkpoint's ``data`` entry
    records besides the normalisation (paths, columns, label names...).
    ``tensors`` belong to the dataset as a whole rather than to one sample
    (the true dictionary of synthetic sparse features, say); the cache
    stores them with the splits.
    """

    name: str
    train: TensorData
    test: TensorData
    spec: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
