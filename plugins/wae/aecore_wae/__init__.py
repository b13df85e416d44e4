"""Wasserstein autoencoders (Tolstikhin et al. 2018, WAE-MMD): pull the codes' distribution to a prior.

A deterministic encoder's codes Q(z) of a batch are compared with as many
draws from the prior P(z) = N(0, σ²·I) by the maximum mean discrepancy with
the inverse multiquadratic kernel

    k(x, y) = C / (C + ‖x − y‖²),   C = 2 · d · σ² · scale

(the paper's choice, d the code size; ``scales`` sums the kernel over several
multiples of C). The estimate is the unbiased U-statistic

    MMD² = Σ_{i≠j} k(z_i, z_j) / (n(n−1)) + Σ_{i≠j} k(z̃_i, z̃_j) / (n(n−1)) − 2 Σ_{i,j} k(z_i, z̃_j) / n²,

which is 0 in expectation when the two distributions agree, and may then be
slightly negative. The penalty is ``weight · MMD² / D`` with D the number of
input values: aecore's losses are means over pixels, so with ``--loss mse``
the run minimises (‖x − x̂‖² + weight · MMD²) / D per image, and ``weight``
is the paper's λ for c(x, x̂) = ‖x − x̂‖² (λ = 10 on MNIST).

``sample_prior`` makes ``ae sample`` draw codes from P(z), so a trained WAE
generates images with a deterministic encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param

__all__ = ["EVAL_CODES", "EVAL_SEED", "WAE", "WAEConfig", "imq_kernel", "mmd_unbiased", "squared_distances"]

#: Test codes (and as many prior draws) that ``ae eval``'s ``wae_test_mmd`` compares.
EVAL_CODES = 2000
#: Seed of the prior draws ``eval_metrics`` compares with.
EVAL_SEED = 0


@dataclass(frozen=True)
class WAEConfig:
    weight: float = param(
        10.0, "λ: multiplier of MMD² relative to the per-image sum of the run's loss (paper: 10 on MNIST)."
    )
    prior_var: float = param(1.0, "σ²: variance of the prior N(0, σ²·I) the codes are pulled to.")
    scales: tuple[float, ...] = param(
        (1.0,), "Multiples of C = 2·d·σ² to sum the kernel over, e.g. 0.1,0.2,0.5,1,2,5,10."
    )

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight cannot be negative, got {self.weight}")
        if not self.prior_var > 0:
            raise ValueError(f"prior_var must be positive, got {self.prior_var}")
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales must be one or more positive numbers, got {self.scales}")


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """‖a_i − b_j‖² for every pair of rows, (N, M); clamped at 0 against rounding."""
    sq = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T
    return sq.clamp_min(0)


def imq_kernel(sq_dist: Tensor, c: float) -> Tensor:
    """The inverse multiquadratic kernel C / (C + ‖x − y‖²) from squared distances."""
    return c / (c + sq_dist)


def mmd_unbiased(x: Tensor, y: Tensor, cs: Sequence[float]) -> Tensor:
    """The unbiased U-statistic of MMD² between samples ``x`` (N, d) and ``y`` (M, d), N, M ≥ 2.

    The kernel is the sum of inverse multiquadratic kernels with constants
    ``cs``. The diagonal pairs (a point with itself) are left out of the
    within-sample terms, which is what makes the estimate unbiased.
    """
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points on each side, got {n} and {m}")
    dxx, dyy, dxy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    off_x = ~torch.eye(n, dtype=torch.bool, device=x.device)
    off_y = ~torch.eye(m, dtype=torch.bool, device=y.device)
    total = x.new_zeros(())
    for c in cs:
        kxx = imq_kernel(dxx, c).masked_fill(~off_x, 0).sum() / (n * (n - 1))
        kyy = imq_kernel(dyy, c).masked_fill(~off_y, 0).sum() / (m * (m - 1))
        total = total + kxx + kyy - 2 * imq_kernel(dxy, c).mean()
    return total


class WAE(RegularizerBase):
    """WAE-MMD: weight · MMD²(codes, prior samples) / pixels, with the prior to sample from."""

    Config = WAEConfig

    def __init__(self, config: WAEConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self._mmd_sum = 0.0
        self._batches = 0

    @property
    def prior(self) -> str:
        """The prior in words, for ``ae sample``'s report."""
        return f"N(0, {self.config.prior_var:g}·I)"

    def kernel_constants(self) -> list[float]:
        """C = 2·d·σ² times each scale."""
        base = 2 * self.latent_dim * self.config.prior_var
        return [base * s for s in self.config.scales]

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from N(0, σ²·I) (aecore's optional ``sample_prior``, which ``ae sample`` uses)."""
        return math.sqrt(self.config.prior_var) * torch.randn(n, self.latent_dim, generator=generator)

    def mmd(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MMD² between codes ``z`` and as many fresh draws from the prior."""
        prior = self.sample_prior(z.shape[0], generator).to(device=z.device, dtype=z.dtype)
        return mmd_unbiased(z, prior, self.kernel_constants())

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor:
        """weight · MMD²(z, prior) / pixels; a batch of one code has no MMD and gives 0."""
        if z.shape[0] < 2:
            return z.sum() * 0.0
        value = self.mmd(z.flatten(1))
        if self.training:
            self._mmd_sum += float(value.detach())
            self._batches += 1
        return self.config.weight * value / x[0].numel()

    def epoch_metrics(self) -> dict[str, float]:
        """``wae_mmd``: the epoch's mean MMD² between batch codes and prior draws (unweighted); resets it."""
        total, batches = self._mmd_sum, self._batches
        self._mmd_sum, self._batches = 0.0, 0
        return {"wae_mmd": total / batches} if batches else {}

    @torch.no_grad()
    def eval_metrics(self, model: nn.Module, dataset: Any, *, device: torch.device | str) -> dict[str, float]:
        """``wae_test_mmd``: MMD² between the codes of the first test images and seeded prior draws."""
        test = dataset.test
        n = min(len(test), EVAL_CODES)
        if n < 2:
            return {}
        codes = torch.cat(
            [model.encode(test.batch(slice(s, min(n, s + 500))).to(device)) for s in range(0, n, 500)]
        )
        generator = torch.Generator().manual_seed(EVAL_SEED)
        return {"wae_test_mmd": float(self.mmd(codes.flatten(1), generator))}
