"""Medians, ratios and targets, shared by every section.

Medians, not means: on a shared machine one repetition can be slowed by a
neighbour, and the median of three or five ignores a single outlier.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["at_least", "median", "ratio", "target"]


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return float(statistics.median(values)) if values else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN where that is undefined."""
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def target(name: str, value: float, limit: float, *, note: str = "") -> dict[str, Any]:
    """A target ``value <= limit`` and whether it is met (NaN never passes)."""
    return {"name": name, "value": value, "limit": limit, "passed": bool(value <= limit), "note": note}


def at_least(name: str, value: float, limit: float, *, note: str = "") -> dict[str, Any]:
    """A target ``value >= limit`` (a quality floor) and whether it is met (NaN never passes)."""
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "passed": bool(value >= limit),
        "note": note,
        "at_least": True,
    }
