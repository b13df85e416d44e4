"""Penalties and constraints on the code: three regularizers in one distribution.

``sparse``, kind ``l1``: weight · mean(|z|), which pushes code units to zero.
``sparse``, kind ``kl``: with ρ̂ the batch mean of sigmoid(z) per unit,
weight · Σ KL(ρ ‖ ρ̂), using both terms of the Bernoulli KL,
ρ log(ρ/ρ̂) + (1−ρ) log((1−ρ)/(1−ρ̂)).
``topk``: keeps the k largest code units of each sample and zeroes the rest
(in training and evaluation); it adds no loss term.
``l2``: weight · mean over the batch of ‖z‖₂.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param
from aecore.errors import ConfigError

__all__ = ["CodeL2", "CodeL2Config", "Sparse", "SparseConfig", "TopK", "TopKConfig", "kl_sparsity"]

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


@dataclass(frozen=True)
class TopKConfig:
    k: int = param(16, "Code units kept per sample; the others are set to zero.")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")


class TopK(RegularizerBase):
    """Keep the k largest code units of each sample (k-sparse code)."""

    Config = TopKConfig

    def __init__(self, config: TopKConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        if config.k > latent_dim:
            raise ConfigError(
                f"topk.k={config.k} is larger than the latent size {latent_dim}; choose k <= {latent_dim}."
            )

    def transform_code(self, z: Tensor) -> Tensor:
        values, index = z.topk(self.config.k, dim=1)
        return torch.zeros_like(z).scatter(1, index, values)


@dataclass(frozen=True)
class CodeL2Config:
    weight: float = param(1e-5, "Multiplier λ of the mean L2 norm of the code.")

    def __post_init__(self) -> None:
        if not 0 <= self.weight < math.inf:
            raise ValueError(f"weight cannot be negative, got {self.weight}")


class CodeL2(RegularizerBase):
    """λ · ‖z‖₂ averaged over the batch: keeps codes small."""

    Config = CodeL2Config

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor:
        return self.config.weight * z.flatten(1).norm(dim=1).mean()
