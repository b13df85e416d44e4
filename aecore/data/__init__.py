"""Datasets as in-memory tensors: loaded once, batched by index slicing."""

from aecore.data.sources import DATASETS, Dataset, load_dataset
from aecore.data.tensors import TensorData

__all__ = ["DATASETS", "Dataset", "TensorData", "load_dataset"]
