"""Working in the code space: encode a split, walk between codes, add them, sample, project to 2-D.

The ``ae reconstruct``, ``interpolate``, ``arithmetic``, ``sample`` and
``plot`` commands are thin wrappers around these functions, so the numbers
behind every figure can be checked (and reused) from Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from aecore.data import Dataset, TensorData
from aecore.errors import ConfigError, DataError, ShapeError
from aecore.model import Autoencoder

__all__ = [
    "GaussianFit",
    "Projection",
    "arithmetic",
    "check_images",
    "check_index",
    "decode",
    "encode",
    "fit_gaussian",
    "interpolate",
    "is_image_shape",
    "is_variational",
    "plot_scatter",
    "prior_of",
    "project_2d",
    "sample_codes",
    "to_display",
]


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """Whether samples of ``shape`` are pictures: ``(C, H, W)`` with 1 (grey) or 3 (colour) channels."""
    return len(shape) == 3 and shape[0] in (1, 3) and shape[1] > 0 and shape[2] > 0


def check_images(dataset: Dataset, command: str) -> tuple[int, int, int]:
    """The dataset's sample shape ``(C, H, W)``, or a one-line refusal when its samples are not images.

    The data decides, not the model: an MLP takes any shape, and a table of
    784 columns is not a 28×28 picture unless its source says so.
    """
    shape = tuple(dataset.test.shape)
    if not is_image_shape(shape):
        raise DataError(
            f"ae {command} draws images; data '{dataset.name}' has samples of shape {shape}, "
            "not C×H×W with 1 or 3 channels."
        )
    c, h, w = shape
    return c, h, w


def check_index(index: int, data: TensorData, option: str) -> int:
    """``index`` if it names a sample of ``data``, else a one-line error naming the valid range."""
    if not 0 <= index < len(data):
        raise ConfigError(
            f"{option} {index} is out of range; the test split has {len(data)} samples (0–{len(data) - 1})."
        )
    return index


@torch.inference_mode()
def encode(
    model: Autoencoder,
    data: TensorData | Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Codes of every sample (eval mode, in order), as float32 on the CPU.

    Codes are what the decoder receives: ``Autoencoder.encode``, so a
    regularizer's ``transform_code`` (TopK, the variational mean) is applied.
    """
    was_training = model.training
    model.eval()
    batches = data.batches(batch_size, reuse=True) if isinstance(data, TensorData) else data.split(batch_size)
    codes = torch.empty(len(data), model.latent_dim)  # filled in place: no list of pieces to join
    start = 0
    try:
        for xb in batches:
            z = model.encode(xb.to(device))
            codes[start : start + len(z)] = z
            start += len(z)
    finally:
        model.train(was_training)
    return codes


@torch.no_grad()
def decode(model: Autoencoder, z: Tensor, *, device: torch.device | str = "cpu") -> Tensor:
    """Decoder outputs for codes ``z`` (eval mode), on the CPU."""
    was_training = model.training
    model.eval()
    try:
        return model.decode(z.to(device=device, dtype=torch.float32)).float().cpu()
    finally:
        model.train(was_training)


def interpolate(z1: Tensor, z2: Tensor, steps: int) -> Tensor:
    """``steps`` codes (1−t)·z1 + t·z2 for t evenly spaced from 0 to 1 inclusive: shape (steps, D)."""
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 (both end points), got {steps}.")
    t = torch.linspace(0.0, 1.0, steps, dtype=z1.dtype).unsqueeze(1)
    out = (1 - t) * z1.reshape(1, -1) + t * z2.reshape(1, -1)
    out[0], out[-1] = z1.reshape(-1), z2.reshape(-1)  # exact end points, no rounding from (1 - t)
    return out


def arithmetic(za: Tensor, zb: Tensor, zc: Tensor) -> Tensor:
    """z_A + z_B − z_C: "A is to C as ? is to B" in the code space."""
    return za + zb - zc


@dataclass
class GaussianFit:
    """A full-covariance Gaussian over codes, for sampling a deterministic autoencoder.

    A plain autoencoder has no prior: decoding N(0, I) lands far from where
    its codes live. Sampling from the Gaussian that matches the training
    codes' mean and covariance stays in the region the decoder was trained on.
    """

    mean: Tensor  # (D,), float64
    cov: Tensor  # (D, D), float64
    n: int

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws, float32, shape (n, D): mean + L·eps with L·Lᵀ = cov."""
        eps = torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64)
        return (self.mean + eps @ self._factor().T).float()

    def _factor(self) -> Tensor:
        """A square root of the covariance; eigen-decomposition when it is singular (dead units)."""
        try:
            return torch.linalg.cholesky(self.cov)
        except RuntimeError:
            values, vectors = torch.linalg.eigh(self.cov)
            return vectors * values.clamp(min=0).sqrt()


def fit_gaussian(codes: Tensor) -> GaussianFit:
    """Mean and full (unbiased) covariance of ``codes`` (N, D), in float64."""
    if codes.dim() != 2 or codes.shape[0] < 2:
        raise ShapeError(
            f"fitting a Gaussian needs at least 2 codes of shape (N, D), got {tuple(codes.shape)}."
        )
    x = codes.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return GaussianFit(mean, cov, x.shape[0])


def prior_of(model: Autoencoder) -> tuple[str, Any] | None:
    """The model's first regularizer that offers ``sample_prior(n, generator)``, with its name."""
    for name, reg in model.regularizers.items():
        if callable(getattr(reg, "sample_prior", None)):
            return name, reg
    return None


def is_variational(model: Autoencoder) -> bool:
    """Whether the model has a prior to sample from (a regularizer with ``sample_prior``)."""
    return prior_of(model) is not None


def sample_codes(
    model: Autoencoder, n: int, *, seed: int = 0, fit: GaussianFit | None = None
) -> tuple[Tensor, str]:
    """``n`` codes to decode, and a sentence saying where they came from.

    A model with a prior (a regularizer offering ``sample_prior``, such as
    aecore-variational's N(0, I)): draws from it, and the decoder takes them
    directly. Otherwise: draws from ``fit``, the Gaussian fitted to the
    training codes, which must be given.
    """
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}.")
    generator = torch.Generator().manual_seed(seed)
    found = prior_of(model)
    if found is not None:
        name, reg = found
        z = reg.sample_prior(n, generator).reshape(n, model.latent_dim)
        law = getattr(reg, "prior", "its prior")
        return z, f"{name} model: z ~ {law} in {model.latent_dim} dimensions (the prior)"
    if fit is None:
        raise ValueError("a deterministic model needs the Gaussian fitted to its training codes")
    source = (
        f"deterministic model (no prior): z drawn from a Gaussian fitted to {fit.n} training codes "
        f"(their mean and full {model.latent_dim}×{model.latent_dim} covariance)"
    )
    return fit.sample(n, generator), source


Method = Literal["pca", "tsne"]


@dataclass
class Projection:
    """2-D points for a scatter plot and how they were obtained."""

    points: Any  # numpy array (N, 2)
    method: str  # "identity", "pca", "tsne" or "pad"
    explained: list[float] | None = None  # PCA: variance ratio of the two components
    kl_divergence: float | None = None  # t-SNE: final KL divergence


def project_2d(codes: Tensor, method: Method = "pca", *, seed: int = 0) -> Projection:
    """Codes (N, D) as 2-D points: the codes themselves when D == 2, else PCA or t-SNE (scikit-learn).

    A 1-D code is shown against a zero second axis.
    """
    import numpy as np

    x = codes.detach().double().cpu().numpy()
    n, d = x.shape
    if d == 2:
        return Projection(x.copy(), "identity")
    if d == 1:
        return Projection(np.concatenate([x, np.zeros_like(x)], axis=1), "pad")
    if method == "pca":
        from sklearn.decomposition import PCA

        if n < 2:
            raise ShapeError(f"PCA needs at least 2 codes, got {n}.")
        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(x)
        return Projection(points, "pca", explained=[float(v) for v in pca.explained_variance_ratio_])
    if method == "tsne":
        from sklearn.manifold import TSNE

        if n < 5:
            raise ShapeError(f"t-SNE needs at least 5 codes, got {n}; use --method pca.")
        perplexity = float(min(30.0, (n - 1) / 3))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        points = tsne.fit_transform(x)
        return Projection(points, "tsne", kl_divergence=float(tsne.kl_divergence_))
    raise ConfigError(f"unknown projection method '{method}'; choose pca or tsne.")


def to_display(x: Tensor, normalisation: dict[str, Any]) -> Tensor:
    """Model-space images back to [0, 1] for display: undo mean/std standardisation, then clamp.

    The statistics broadcast against the trailing sample dimensions exactly as
    :meth:`aecore.data.TensorData.normalise` applied them (a per-channel mean
    is stored as ``(C, 1, 1)``), so one image ``(C, H, W)`` and a batch
    ``(N, C, H, W)`` are both undone correctly. Scaled data (``divisor``: 255)
    already lives in [0, 1] in model space.
    """
    out = x.detach().float().cpu()
    std, mean = normalisation.get("std"), normalisation.get("mean")
    if std is not None:
        out = out * torch.tensor(std, dtype=torch.float32)
    if mean is not None:
        out = out + torch.tensor(mean, dtype=torch.float32)
    return out.clamp(0, 1)


def plot_scatter(points: Any, labels: Tensor | None, path: Path, title: str = "") -> Path:
    """2-D points coloured by class (tab10 for up to 10 classes), with a legend."""
    import numpy as np

    from aecore_analysis.plots import figure, save_figure

    fig, ax = figure(figsize=(5.5, 5))
    pts = np.asarray(points)
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.6)
    else:
        y = labels.cpu().numpy()
        classes = np.unique(y)
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        import matplotlib

        colours = matplotlib.colormaps[cmap]
        for i, cls in enumerate(classes):
            mask = y == cls
            ax.scatter(
                pts[mask, 0], pts[mask, 1], s=4, alpha=0.7, color=colours(i % colours.N), label=str(cls)
            )
        ax.legend(markerscale=3, fontsize=7, title="class", title_fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path, dpi=100)
