"""aecore: autoencoders composed from plugins.

The heavy parts (torch, models, checkpoints) load on first use, so
``import aecore`` and the ``ae`` CLI's help stay fast.

>>> import aecore
>>> model = aecore.load("runs/conv-sparse/model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aecore import registry
from aecore.errors import AecoreError

if TYPE_CHECKING:
    from aecore.checkpoint import load, read_metadata, save
    from aecore.composition import compose
    from aecore.model import Autoencoder
    from aecore.request import RunRequest
    from aecore.sources import load_dataset
    from aecore.training import TrainResult, resume, train

__all__ = [
    "AecoreError",
    "Autoencoder",
    "RunRequest",
    "TrainResult",
    "__version__",
    "compose",
    "load",
    "load_dataset",
    "read_metadata",
    "registry",
    "resume",
    "save",
    "train",
]

_LAZY = {
    "load": "aecore.checkpoint",
    "save": "aecore.checkpoint",
    "read_metadata": "aecore.checkpoint",
    "Autoencoder": "aecore.model",
    "compose": "aecore.composition",
    "load_dataset": "aecore.sources",
    "RunRequest": "aecore.request",
    "TrainResult": "aecore.training",
    "resume": "aecore.training",
    "train": "aecore.training",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the installed metadata on first use only
        from aecore.entry_points import installed_version

        return installed_version("aecore")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aecore' has no attribute {name!r}")
