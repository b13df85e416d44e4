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
    from aecore.model import Autoencoder, compose
    from aecore.training import train

__all__ = [
    "AecoreError",
    "Autoencoder",
    "__version__",
    "compose",
    "load",
    "read_metadata",
    "registry",
    "save",
    "train",
]

_LAZY = {
    "load": "aecore.checkpoint",
    "save": "aecore.checkpoint",
    "read_metadata": "aecore.checkpoint",
    "Autoencoder": "aecore.model",
    "compose": "aecore.model",
    "train": "aecore.training",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the installed metadata on first use only
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("aecore")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0.0.0+unknown"
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aecore' has no attribute {name!r}")
