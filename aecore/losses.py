"""Reconstruction losses, published through the ``aecore.losses`` entry-point group.

aecore's own are ``mse`` and ``l1`` (torch's functions themselves) and
``bce`` (torch's, with a clear error when the decoder's outputs leave
[0, 1]). All average over every element. A loss plugin is a function
``loss(recon, target) -> 0-d tensor``, or a class with a ``Config`` whose
instances are such functions (``--set loss.PARAM=VALUE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from aecore import registry
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.model import LossFn

__all__ = ["bce", "build_loss"]


def bce(recon: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy, for decoder outputs and data in [0, 1]."""
    try:
        return F.binary_cross_entropy(recon, target)
    except RuntimeError:
        if recon.numel() and (recon.min() < 0 or recon.max() > 1):
            raise ConfigError(
                "--loss bce needs decoder outputs in [0, 1], but they fall outside it; "
                "use a sigmoid output (e.g. --set decoder.output_activation=sigmoid) or --loss mse."
            ) from None
        raise


def build_loss(name: str, params: Mapping[str, Any] | None = None) -> LossFn:
    """The loss registered as ``name``, built with ``params`` when it declares a ``Config``."""
    obj = registry.get("loss", name)
    if isinstance(obj, type):
        return obj(config_from_dict(obj.Config, dict(params or {}), owner="loss"))
    if params:
        raise ConfigError(f"loss '{name}' takes no parameters; drop the loss.{next(iter(params))} setting.")
    return obj
