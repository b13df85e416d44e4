"""aecore-export: a trained model, or its encoder or decoder, as an ONNX file.

``ae export MODEL --part encoder`` writes ``encoder.onnx`` next to the
checkpoint; :func:`export_onnx` is the same in Python. The graph's first
axis (``batch``) takes any size, and the file's ``metadata_props`` describe
the model (:data:`METADATA_KEYS`). The graph takes and gives values in the
model's units: the caller applies the normalisation the file records
(:func:`normalise`, :func:`denormalise`). See docs/export.md.

torch, onnx and onnxruntime load on first use of the functions, so that
``ae --help`` and ``ae export --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aecore_export.common import (
    DEFAULT_FILES,
    DEFAULT_OPSET,
    FORMATS,
    IO_NAMES,
    METADATA_KEYS,
    PARTS,
    Part,
    UnexportableError,
)

if TYPE_CHECKING:
    from aecore_export.onnx_export import export_onnx, read_onnx_metadata
    from aecore_export.units import denormalise, normalise

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_OPSET",
    "FORMATS",
    "IO_NAMES",
    "METADATA_KEYS",
    "PARTS",
    "Part",
    "UnexportableError",
    "denormalise",
    "export_onnx",
    "normalise",
    "read_onnx_metadata",
]

_LAZY = {
    "export_onnx": "aecore_export.onnx_export",
    "read_onnx_metadata": "aecore_export.onnx_export",
    "normalise": "aecore_export.units",
    "denormalise": "aecore_export.units",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aecore_export' has no attribute {name!r}")
