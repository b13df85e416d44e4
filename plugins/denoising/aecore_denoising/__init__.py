"""Denoising: corrupt the encoder's input in training, reconstruct the clean one.

The model calls ``transform_input`` in training mode only and keeps the clean
batch as the reconstruction target, so this regularizer needs no penalty (it
returns a zero term). Corruptions, drawn fresh for every batch from torch's
global random generator:

``gaussian``
    x + factor · N(0, 1), then clamped to [0, 1] if ``clamp`` is set.
``mask``
    each input element is set to 0 with probability ``prob``.
``salt_pepper``
    each input element is replaced with probability ``prob``, by 0 or 1 with
    equal chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param

__all__ = ["Denoising", "DenoisingConfig", "corrupt"]

Kind = Literal["gaussian", "mask", "salt_pepper"]


@dataclass(frozen=True)
class DenoisingConfig:
    kind: Literal["gaussian", "mask", "salt_pepper"] = param(
        "gaussian", "gaussian: add factor·N(0,1); mask: zero inputs; salt_pepper: set to 0 or 1."
    )
    factor: float = param(0.3, "Standard deviation of the gaussian noise.")
    prob: float = param(0.3, "Probability that an input element is corrupted (mask, salt_pepper).")
    clamp: bool = param(True, "Clamp the gaussian-corrupted input to [0, 1].")

    def __post_init__(self) -> None:
        if self.factor < 0:
            raise ValueError(f"factor cannot be negative, got {self.factor}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")


def corrupt(x: Tensor, kind: Kind, *, factor: float = 0.3, prob: float = 0.3, clamp: bool = True) -> Tensor:
    """A corrupted copy of ``x`` (``x`` itself is never modified)."""
    if kind == "gaussian":
        noisy = x + factor * torch.randn_like(x)
        return noisy.clamp(0.0, 1.0) if clamp else noisy
    hit = torch.rand_like(x) < prob
    if kind == "mask":
        return x.masked_fill(hit, 0.0)
    if kind == "salt_pepper":
        salt = (torch.rand_like(x) < 0.5).to(x.dtype)
        return torch.where(hit, salt, x)
    raise ValueError(f"unknown corruption kind {kind!r}")


class Denoising(RegularizerBase):
    """Corrupts the encoder input in training; adds no penalty term."""

    Config = DenoisingConfig

    def transform_input(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        cfg = self.config
        return corrupt(x, cfg.kind, factor=cfg.factor, prob=cfg.prob, clamp=cfg.clamp)

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor:
        return torch.zeros((), device=recon.device, dtype=recon.dtype)
