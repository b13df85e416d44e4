"""Principal component analysis: the linear baseline every autoencoder should beat.

PCA with k components is the best linear code of size k in squared error, so
``ae eval`` compares a model's test SSE with PCA's at the same code size, and
``ae pca`` finds how many components a variance target needs. The fit runs on
the training split only, in float64 (covariance accumulated batch by batch,
then ``eigh``), so it is exact and does not depend on batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ShapeError
from aecore.evaluate import psnr

__all__ = ["PCA", "components_for_variance", "fit_pca", "pca_metrics"]

#: Above this many features the covariance matrix (features², float64) gets too large.
MAX_FEATURES = 8192


@dataclass
class PCA:
    """A fitted PCA: the mean, the principal axes (rows, by decreasing variance) and their variances."""

    mean: Tensor  # (D,) float64
    components: Tensor  # (k, D) float64
    explained_variance: Tensor  # (k,) float64
    total_variance: float

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def explained_variance_ratio(self) -> Tensor:
        """The share of the total variance along each axis."""
        return self.explained_variance / self.total_variance

    def transform(self, x: Tensor, k: int | None = None) -> Tensor:
        """Codes: coordinates of ``x`` (flattened) on the first ``k`` axes."""
        v = self.components[: k or self.n_components]
        return (x.flatten(1).double() - self.mean) @ v.T

    def inverse_transform(self, z: Tensor) -> Tensor:
        """Flat reconstructions from codes of any width up to ``n_components``."""
        return z.double() @ self.components[: z.shape[1]] + self.mean


def _flat_batches(data: TensorData, batch_size: int):
    for xb in data.batches(batch_size):
        yield xb.flatten(1).double()


def fit_pca(data: TensorData, n_components: int | None = None, *, batch_size: int = 10_000) -> PCA:
    """Fit PCA on ``data`` (flattened samples); keeps all components unless ``n_components``."""
    dim = math.prod(data.shape)
    if dim > MAX_FEATURES:
        raise ShapeError(f"PCA here handles up to {MAX_FEATURES} features per sample; this data has {dim}.")
    n = len(data)
    if n < 2:
        raise ShapeError(f"PCA needs at least 2 samples, got {n}.")
    total = torch.zeros(dim, dtype=torch.float64)
    for xb in _flat_batches(data, batch_size):
        total += xb.sum(0)
    mean = total / n
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for xb in _flat_batches(data, batch_size):
        xc = xb - mean
        cov += xc.T @ xc
    cov /= n - 1
    values, vectors = torch.linalg.eigh(cov)
    values = values.flip(0).clamp_min(0)
    vectors = vectors.flip(1)
    k = dim if n_components is None else min(int(n_components), dim)
    return PCA(mean, vectors[:, :k].T.contiguous(), values[:k].clone(), float(values.sum()))


def components_for_variance(pca: PCA, target: float) -> int:
    """The fewest leading components whose explained variance reaches ``target`` (a fraction)."""
    cumulative = pca.explained_variance_ratio.cumsum(0)
    reached = (cumulative >= target - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else pca.n_components


@torch.no_grad()
def pca_metrics(pca: PCA, data: TensorData, k: int, *, batch_size: int = 10_000) -> dict[str, float]:
    """Test error of the ``k``-component reconstruction, with the same keys as ``reconstruction_metrics``."""
    if not 1 <= k <= pca.n_components:
        raise ShapeError(f"PCA has {pca.n_components} components; cannot use {k}.")
    sse = 0.0
    for xb in _flat_batches(data, batch_size):
        recon = pca.inverse_transform(pca.transform(xb, k))
        sse += float((recon - xb).pow(2).sum())
    per_image = sse / len(data)
    mse = per_image / math.prod(data.shape)
    metrics = {"mse_per_pixel": mse, "sse_per_image": per_image}
    if data.normalisation.get("kind") == "scale":
        metrics["psnr"] = psnr(mse)
    return metrics
