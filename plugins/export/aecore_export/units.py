"""The normalisation an exported graph leaves to its caller, in numpy alone.

An exported part takes and gives values in the units the model was trained
in: float32 after the data's normalisation record (``aecore.normalisation``
in the file's metadata). A record divides by ``divisor``, then subtracts
``mean`` and divides by ``std`` (each optional), exactly as aecore's data
pipeline does; these two functions apply it and undo it, with nothing but
numpy, so a serving process needs neither torch nor aecore's data code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["denormalise", "normalise"]


def _parts(record: Mapping[str, Any] | None) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    if record is None:
        return 1.0, None, None
    if not isinstance(record, Mapping):
        raise TypeError(f"a normalisation record is a mapping, got {type(record).__name__}")
    divisor = float(record.get("divisor", 1.0))
    mean, std = record.get("mean"), record.get("std")
    return (
        divisor,
        None if mean is None else np.asarray(mean, dtype=np.float32),
        None if std is None else np.asarray(std, dtype=np.float32),
    )


def normalise(raw: np.ndarray, record: Mapping[str, Any] | None) -> np.ndarray:
    """Raw samples (uint8 pixels, table rows) as the float32 inputs the graph takes.

    ``record`` is the file's ``aecore.normalisation`` (parsed JSON); None or
    an identity record only converts to float32.
    """
    divisor, mean, std = _parts(record)
    out = np.asarray(raw).astype(np.float32, copy=True)
    if divisor != 1.0:
        out /= np.float32(divisor)
    if mean is not None:
        out -= mean
    if std is not None:
        out /= std
    return out


def denormalise(values: np.ndarray, record: Mapping[str, Any] | None) -> np.ndarray:
    """Graph outputs (a reconstruction) back in the data's own units: the inverse of :func:`normalise`."""
    divisor, mean, std = _parts(record)
    out = np.asarray(values).astype(np.float32, copy=True)
    if std is not None:
        out *= std
    if mean is not None:
        out += mean
    if divisor != 1.0:
        out *= np.float32(divisor)
    return out
