"""The numbers a variational autoencoder is judged by, as plain functions of tensors.

Everything here is per image and in nats: sums over pixels and code units,
never means, so that β = 1 is the evidence lower bound itself and figures
compare with the literature. The regularizer divides by the number of
pixels where it has to match aecore's per-pixel mean losses.

- :func:`gaussian_kl`: closed-form KL(N(mu, σ²) ‖ N(0, I)) of each image.
- :func:`bernoulli_log_prob`, :func:`gaussian_log_prob`: log p(x | z) of each image.
- :func:`log_normal`, :func:`log_standard_normal`: diagonal Gaussian log densities of codes.
- :func:`log_mean_exp`: the importance-weighted bound from log weights (Burda et al. 2016).
- :func:`tc_decomposition`: index-code MI, total correlation and dimension-wise KL
  (Chen et al. 2018), with the minibatch-weighted sampling estimator of log q(z).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "Decomposition",
    "bernoulli_log_prob",
    "gaussian_kl",
    "gaussian_kl_per_image",
    "gaussian_log_prob",
    "log_mean_exp",
    "log_normal",
    "log_standard_normal",
    "tc_decomposition",
]

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl_per_image(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) of each row, summed over code units: shape (N,)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Batch mean of KL(N(mu, exp(logvar)) ‖ N(0, I)), summed over code units."""
    return gaussian_kl_per_image(mu, logvar).mean()


def bernoulli_log_prob(probs: Tensor, target: Tensor) -> Tensor:
    """log p(target | probs) of each image under independent Bernoulli pixels: shape (N,).

    Computed with torch's binary cross-entropy, which clamps each log at -100,
    exactly as aecore's ``bce`` loss does, so the two agree to rounding.
    ``target`` may be grey levels in [0, 1]: the result is then minus a
    cross-entropy rather than a log-likelihood.
    """
    return -F.binary_cross_entropy(probs, target, reduction="none").flatten(1).sum(dim=1)


def gaussian_log_prob(mean: Tensor, target: Tensor, log_variance: Tensor) -> Tensor:
    """log N(target; mean, exp(log_variance)·I) of each image: shape (N,).

    ``log_variance`` is a scalar or anything that broadcasts against a row.
    """
    sq = (target - mean).pow(2).flatten(1)
    pixels = sq.shape[1]
    return -0.5 * (sq.sum(dim=1) * torch.exp(-log_variance).reshape(()) + pixels * (LOG_2PI + log_variance))


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(dim=-1)


def log_mean_exp(log_w: Tensor, dim: int = -1) -> Tensor:
    """log((1/k) Σ exp(log_w)) along ``dim``: the k-sample importance-weighted bound from log weights.

    By Jensen's inequality it is never below the mean of ``log_w`` (the
    k-sample average of single-sample ELBOs), and it tightens towards
    log p(x) as k grows.
    """
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


class Decomposition(NamedTuple):
    """The three parts of the batch's KL term (nats per image); they add up to its Monte Carlo KL."""

    mutual_information: Tensor
    total_correlation: Tensor
    dimension_kl: Tensor


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int) -> Decomposition:
    """Index-code MI, total correlation and dimension-wise KL of codes ``z`` ~ q(z | x) of one batch.

    The aggregate posterior q(z) = (1/N) Σ_n q(z | x_n) and its marginals
    q(z_j) are estimated from the batch by minibatch-weighted sampling (Chen
    et al. 2018): z_i was drawn from q(z | x_i), so image i's own posterior
    counts with its probability 1/N and each of the M − 1 others with
    (N − 1) / (N (M − 1)), weights that sum to one. (The published code's
    constant −log(N·M) instead shifts MI by log N, TC by (D − 1)·log N and
    dimension-wise KL by −D·log N: the same gradients, but figures that are
    not 0 for a posterior equal to the prior.) Per image,

        MI  = log q(z|x) − log q(z),  TC = log q(z) − Σ_j log q(z_j),
        dim-KL = Σ_j log q(z_j) − log p(z_j),

    averaged over the batch. The three add up, exactly, to the batch mean of
    log q(z|x) − log p(z): a one-sample estimate of the KL term, equal to the
    closed-form KL in expectation. Each part alone is a consistent, biased
    estimate (MI can show at most about log M); memory is M²·D.
    """
    m = z.shape[0]
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be at least 1, got {dataset_size}")
    n = max(dataset_size, m)  # a batch cannot hold more images than the data set
    # pair[i, k, j] = log q(z_ij | x_k): code i scored under image k's posterior, unit by unit
    pair = -0.5 * (LOG_2PI + logvar[None] + (z[:, None] - mu[None]).pow(2) * torch.exp(-logvar[None]))
    log_q_zx = pair.diagonal(dim1=0, dim2=1).sum(dim=0)  # (M,): each code under its own image
    if m == 1:
        log_weights = z.new_zeros(1, 1)
    else:
        log_weights = torch.full((m, m), math.log((n - 1) / (n * (m - 1))), dtype=z.dtype, device=z.device)
        log_weights.fill_diagonal_(-math.log(n))
    log_q_z = torch.logsumexp(pair.sum(dim=2) + log_weights, dim=1)
    log_prod_q_zj = torch.logsumexp(pair + log_weights[:, :, None], dim=1).sum(dim=1)
    log_p_z = log_standard_normal(z)
    return Decomposition(
        (log_q_zx - log_q_z).mean(),
        (log_q_z - log_prod_q_zj).mean(),
        (log_prod_q_zj - log_p_z).mean(),
    )
