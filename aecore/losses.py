"""Reconstruction losses by name: ``mse``, ``bce``, ``l1`` (all averaged per element)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from aecore.errors import ConfigError, suggest

__all__ = ["LOSSES", "get_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _bce(recon: Tensor, target: Tensor) -> Tensor:
    try:
        return F.binary_cross_entropy(recon, target)
    except RuntimeError as exc:
        if "between 0 and 1" not in str(exc):
            raise
        raise ConfigError(
            "--loss bce needs decoder outputs in [0, 1], but they fall outside it; "
            "use a sigmoid output (e.g. --set decoder.output_activation=sigmoid) or --loss mse."
        ) from None


LOSSES: dict[str, LossFn] = {"mse": F.mse_loss, "bce": _bce, "l1": F.l1_loss}


def get_loss(name: str) -> LossFn:
    """The loss function called ``name``; unknown names raise with suggestions."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown loss '{name}'.{suggest(name, LOSSES)} Choose one of: {', '.join(LOSSES)}."
        ) from None
