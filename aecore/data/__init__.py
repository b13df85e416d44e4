"""The data model: datasets as tensors (memory-mapped once prepared), batched by index slicing.

Data sources (``--data``) are plugins of the ``aecore.datasets`` group that
return a :class:`Dataset`; :func:`aecore.load_dataset` finds them by name.
"""

from aecore.data.convert import as_dataset
from aecore.data.dataset import Dataset
from aecore.data.idx import read_idx, write_idx
from aecore.data.store import TensorStore
from aecore.data.tensors import UINT8_IMAGES, TensorData

__all__ = ["UINT8_IMAGES", "Dataset", "TensorData", "TensorStore", "as_dataset", "read_idx", "write_idx"]
