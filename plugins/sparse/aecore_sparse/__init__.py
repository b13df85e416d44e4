"""Sparsity penalties on the code.

``l1``: weight · mean(|z|), which pushes code units to exactly zero.
``kl``: with ρ̂ the batch mean of sigmoid(z) per unit, weight · Σ KL(ρ ‖ ρ̂),
using both terms of the Bernoulli KL, ρ log(ρ/ρ̂) + (1−ρ) log((1−ρ)/(1−ρ̂)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param

__all__ = ["Sparse", "SparseConfig", "kl_sparsity"]

_EPS = 1e-6


@dataclass(frozen=True)
class SparseConfig:
    kind: Literal["l1", "kl"] = param("l1", "l1: mean absolute code; kl: KL to a target mean activation.")
    weight: float = param(1e-3, "Multiplier of the penalty in the loss.")
    target: float = param(0.05, "Target mean activation ρ for the kl kind.")

    def __post_init__(self) -> None:
        if not 0 <= self.weight < math.inf:  # also rejects nan
            raise ValueError(f"weight must be a finite non-negative number, got {self.weight}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be strictly between 0 and 1, got {self.target}")


def kl_sparsity(z: Tensor, target: float) -> Tensor:
    """Σ over units of KL(target ‖ mean activation), activations being sigmoid(z)."""
    rho_hat = torch.sigmoid(z).mean(dim=0).clamp(_EPS, 1 - _EPS)
    rho = torch.full_like(rho_hat, target)
    return (rho * (rho / rho_hat).log() + (1 - rho) * ((1 - rho) / (1 - rho_hat)).log()).sum()


class Sparse(RegularizerBase):
    """L1 or KL sparsity penalty on the code."""

    Config = SparseConfig

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor:
        if self.config.kind == "l1":
            return self.config.weight * z.abs().mean()
        return self.config.weight * kl_sparsity(z, self.config.target)
