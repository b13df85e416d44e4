"""Named recipes: a full set of component names and parameters under one name.

Plugins publish :class:`Preset` objects through the ``aecore.presets``
entry-point group; the registry finds them like any other plugin
(``registry.get("preset", "deep")``). ``ae train --preset deep`` starts from
one, and explicit options and ``--set`` values override it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset"]


@dataclass(frozen=True)
class Preset:
    """A reproducible model recipe.

    ``params`` maps ``encoder``, ``decoder``, ``trainer`` and regularizer
    names to parameter dicts, as the run request's ``params`` does.
    ``reference_params`` is the parameter count the recipe is known to give
    on ``input_shape``; a test holds every preset to it.
    """

    encoder: str
    latent_dim: int
    decoder: str | None = None
    regularizers: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    input_shape: tuple[int, ...] = (1, 28, 28)
    reference_params: int | None = None

    @property
    def compression_ratio(self) -> float:
        return math.prod(self.input_shape) / self.latent_dim

    @property
    def component_params(self) -> dict[str, dict[str, Any]]:
        """``params`` without the trainer's: what :func:`aecore.compose` takes."""
        return {k: dict(v) for k, v in self.params.items() if k != "trainer"}
