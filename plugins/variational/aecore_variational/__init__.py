"""Variational code on top of any encoder: a Gaussian head, sampling, and a KL term.

The regularizer owns a linear head, ``latent_dim -> 2 · latent_dim``, that
reads the encoder's output h and gives the mean and log-variance of a
diagonal Gaussian q(z | x) = N(mu, exp(logvar)). ``transform_code`` returns a
reparameterised sample mu + exp(logvar / 2) · eps, eps ~ N(0, I), in training
and the mean mu in evaluation, so evaluation is deterministic. The penalty is

    weight · mean over the batch of KL(q ‖ N(0, I)),
    KL = -1/2 · Σ_units (1 + logvar − mu² − exp(logvar)),

with weight 1.0 by default, the plain VAE objective when the reconstruction
loss is a log-likelihood; other values give the β-VAE (the weight *is* β).
With the default MSE loss (a mean over pixels) the reconstruction term is
small next to the KL; a weight around 1/(number of pixels), e.g. 1e-3 for
MNIST, balances them like a sum-over-pixels loss would.

The penalty needs mu and logvar: ``transform_code`` returns them beside the
code, as its auxiliary value, and the model hands them to ``penalty`` as
``aux`` (aecore's ``(code, aux)`` protocol), so nothing is kept between
calls. logvar is clamped to [-30, 20] so exp(logvar) neither overflows nor
underflows.

The head starts as the identity for mu (a trained encoder's code keeps its
meaning) and with zero weights and bias for logvar (unit variance, the prior).
Its weights live in the model's state_dict as ``regularizers.variational.*``
and travel in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param

__all__ = ["LOGVAR_RANGE", "Variational", "VariationalConfig", "gaussian_kl"]

LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class VariationalConfig:
    weight: float = param(1.0, "Multiplier (β) of the KL term to N(0, I); 1 is the plain VAE.")

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight cannot be negative, got {self.weight}")


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Batch mean of KL(N(mu, exp(logvar)) ‖ N(0, I)), summed over code units."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


class Variational(RegularizerBase):
    """Gaussian code: (mu, logvar) head, reparameterised sampling in training, KL penalty."""

    Config = VariationalConfig

    def __init__(self, config: VariationalConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self.head = nn.Linear(self.latent_dim, 2 * self.latent_dim)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[: self.latent_dim].copy_(torch.eye(self.latent_dim))

    def moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) for encoder outputs ``h``; logvar clamped to ``LOGVAR_RANGE``."""
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def transform_code(self, z: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """A sample in training, the mean in evaluation; (mu, logvar) for the penalty."""
        mu, logvar = self.moments(z)
        if not self.training:
            return mu, (mu, logvar)
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu), (mu, logvar)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from the prior the KL term pulls codes towards: N(0, I) (aecore's optional
        ``sample_prior`` protocol, which ``ae sample`` uses)."""
        return torch.randn(n, self.latent_dim, generator=generator)

    prior = "N(0, I)"

    def penalty(
        self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module, *, aux: tuple[Tensor, Tensor]
    ) -> Tensor:
        mu, logvar = aux
        return self.config.weight * gaussian_kl(mu, logvar)
