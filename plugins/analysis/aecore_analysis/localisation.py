"""Where an image is anomalous: per-pixel reconstruction error, and its ROC-AUC against defect masks.

An autoencoder trained on normal images reconstructs a defect badly exactly
where the defect is, so the squared error of each pixel (averaged over the
channels) is an anomaly map. With ground-truth masks (a test split's
``extras["mask"]``, uint8 ``(N, 1, H, W)``, 1 on anomalous pixels) every
pixel of every test image is a sample and the map's values are its scores:
the pixel-level ROC-AUC of anomaly localisation (MVTec AD's metric).

The test set can be large (hundreds of 1024×1024 images), so the pixels are
scored batch by batch and never held all at once beyond a budget:

- up to ``exact_pixels`` pixels (default 2**24, about 16.8 million, i.e. 256
  images of 256×256) the scores are kept, 5 bytes a pixel, and the AUC is
  exact (Mann–Whitney, ties counted one half);
- beyond it, each pixel goes into one of 2**20 bins by the leading bits of
  its float32 value (the bins follow the order of the values, each 2**-12 of
  its value wide), and the AUC is computed from the bin counts. Pairs of an
  anomalous and a normal pixel in the same bin count one half, so the result
  is off by at most half the share of such pairs: that bound is computed and
  reported with the figure (typically below 1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore.model import Autoencoder

__all__ = [
    "EXACT_PIXELS",
    "AUCAccumulator",
    "Localisation",
    "PixelMetrics",
    "gaussian_blur",
    "has_masks",
    "localise",
    "mask_batch",
    "pixel_errors",
    "roc_auc",
    "rows_per_batch",
]

#: Up to this many pixels the pixel-level AUC is exact; beyond, it is computed from 2**20 bins.
EXACT_PIXELS = 2**24
#: Float32 values share a bin when they agree in all but their last 11 bits (12 mantissa bits kept).
_SHIFT = 11
_BINS = 1 << (31 - _SHIFT)
#: Float values a scoring batch may hold, inputs and reconstructions each (64 MiB of float32).
_BATCH_VALUES = 2**24
_AUC_CHUNK = 2**20


def rows_per_batch(shape: Sequence[int], limit: int = 1000) -> int:
    """Samples per scoring batch: at most ``limit``, and at most 2**24 values, so big images stay bounded."""
    return max(1, min(limit, _BATCH_VALUES // max(1, math.prod(shape))))


def pixel_errors(x: Tensor, reconstruction: Tensor) -> Tensor:
    """Squared error per pixel, averaged over the channels: (N, C, H, W) → (N, H, W), float32."""
    if x.shape != reconstruction.shape or x.dim() != 4:
        raise ValueError(
            f"expected images and reconstructions of one shape (N, C, H, W), got {tuple(x.shape)} "
            f"and {tuple(reconstruction.shape)}"
        )
    return (reconstruction.float() - x.float()).pow(2).mean(dim=1)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Maps (N, H, W) smoothed by a Gaussian of ``sigma`` pixels (0: unchanged).

    The kernel is cut at 4 sigma and applied separably; borders repeat the
    edge pixel, which works for any kernel and image size. Smoothing the
    error map before scoring is the usual practice in anomaly localisation:
    single noisy pixels fade, defects (blobs of error) stay.
    """
    _check_sigma(sigma)
    if sigma == 0 or maps.numel() == 0:
        return maps
    radius = max(1, math.ceil(4 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps.float().unsqueeze(1)
    out = torch.nn.functional.pad(out, (radius, radius, 0, 0), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.reshape(1, 1, 1, -1))
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.reshape(1, 1, -1, 1))
    return out.squeeze(1)


def _check_sigma(sigma: float) -> None:
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"--smooth must be a finite number of pixels, 0 or more, got {sigma}.")


def roc_auc(scores: Tensor, positive: Tensor) -> float:
    """Exact ROC-AUC of ``scores`` with ``positive`` (bool) marking the positives; ties count one half.

    The Mann–Whitney statistic: the share of (positive, negative) pairs in
    which the positive scores higher, plus half the share of tied pairs. The
    negatives are sorted once and each positive is placed among them, so
    memory is about 16 bytes per negative (scikit-learn's needs over 50 per
    sample), which is what lets the pixel-level AUC stay exact for millions
    of pixels.
    """
    scores = scores.detach().reshape(-1).cpu()
    positive = positive.detach().reshape(-1).cpu().bool()
    if scores.shape != positive.shape:
        raise ValueError(f"{scores.numel()} scores but {positive.numel()} labels")
    negatives = torch.sort(scores[~positive]).values
    n_pos, n_neg = int(positive.sum()), negatives.numel()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative sample")
    twice = 0  # 2 × (pairs won + half the ties), in integers: exact
    for chunk in scores[positive].split(_AUC_CHUNK):
        chunk = chunk.to(negatives.dtype)
        below = torch.searchsorted(negatives, chunk, side="left")
        up_to = torch.searchsorted(negatives, chunk, side="right")
        twice += int((below + up_to).sum())
    return twice / (2.0 * n_pos * n_neg)


@dataclass(frozen=True)
class PixelMetrics:
    """The pixel-level ROC-AUC and how it was obtained."""

    roc_auc: float
    pixels: int
    anomalous: int
    exact: bool
    error_bound: float  # 0 when exact: the AUC lies within roc_auc ± error_bound
    smooth: float  # sigma of the Gaussian applied to the error maps (0: none)

    def to_dict(self) -> dict[str, Any]:
        return {
            "roc_auc": self.roc_auc,
            "pixels": self.pixels,
            "anomalous_pixels": self.anomalous,
            "exact": self.exact,
            "error_bound": self.error_bound,
            "smooth": self.smooth,
        }


class AUCAccumulator:
    """Per-pixel scores and ground truth gathered batch by batch, for one ROC-AUC at the end.

    ``total`` (the number of values to come) chooses the method up front:
    exact (the values kept) up to ``exact_limit``, binned (2**20 counts per
    class, 16 MiB) beyond it; see the module's description. Scores must be
    finite and not negative (squared errors are).
    """

    def __init__(self, total: int, *, exact_limit: int = EXACT_PIXELS) -> None:
        self.total = total
        self.exact = total <= exact_limit
        self._filled = 0
        self._anomalous = 0
        if self.exact:
            self._scores = torch.empty(total, dtype=torch.float32)
            self._truth = torch.empty(total, dtype=torch.bool)
        else:
            self._counts = torch.zeros(2, _BINS, dtype=torch.int64)  # [normal, anomalous]

    def update(self, scores: Tensor, truth: Tensor) -> None:
        """Add a batch: ``scores`` and ``truth`` (nonzero = anomalous) of the same number of values."""
        values = scores.detach().reshape(-1).float().cpu()
        labels = truth.detach().reshape(-1).cpu().bool()
        if values.numel() != labels.numel():
            raise ValueError(f"{values.numel()} scores but {labels.numel()} ground-truth values")
        if self._filled + values.numel() > self.total:
            raise ValueError(f"more than the {self.total} values announced")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise DataError(
                "the per-pixel reconstruction errors are not all finite (the model outputs NaN or "
                "infinity); check the checkpoint with 'ae eval'."
            )
        n = values.numel()
        if self.exact:
            self._scores[self._filled : self._filled + n] = values
            self._truth[self._filled : self._filled + n] = labels
        else:
            bins = values.abs().view(torch.int32) >> _SHIFT  # abs: -0.0 into the bin of 0
            self._counts[1] += torch.bincount(bins[labels], minlength=_BINS)
            self._counts[0] += torch.bincount(bins[~labels], minlength=_BINS)
        self._filled += n
        self._anomalous += int(labels.sum())

    @property
    def anomalous(self) -> int:
        """Anomalous values added so far."""
        return self._anomalous

    def compute(self) -> tuple[float, float]:
        """(ROC-AUC, error bound): the bound is 0 when exact. Needs both classes present."""
        n = self._filled
        if self._anomalous == 0 or self._anomalous == n:
            raise ValueError("ROC-AUC needs both anomalous and normal values")
        if self.exact:
            return roc_auc(self._scores[:n], self._truth[:n]), 0.0
        normal, anomalous = self._counts.double()
        below = torch.cumsum(normal, 0) - normal  # normal values in lower bins
        pairs = float(self._anomalous) * float(n - self._anomalous)
        auc = float((anomalous * (below + 0.5 * normal)).sum()) / pairs
        return auc, 0.5 * float((anomalous * normal).sum()) / pairs


def has_masks(data: TensorData) -> bool:
    """Whether ``data`` carries ground-truth anomaly masks (``extras["mask"]``)."""
    return "mask" in data.extra_names


def mask_batch(data: TensorData, index: Tensor | slice | Sequence[int]) -> Tensor:
    """The masks of the samples at ``index`` as bool (N, H, W), checked against the images.

    A mask must be (1, H, W) at the images' height and width, with values 0
    and 1 only; anything else is a one-line :class:`DataError` naming the
    data's problem.
    """
    raw = data.extra_batch("mask", index)
    h, w = data.shape[-2:]
    if tuple(raw.shape[1:]) != (1, h, w):
        raise DataError(
            f"the data's masks (extras['mask']) have shape {tuple(raw.shape[1:])} per sample; "
            f"anomaly masks must be 1×{h}×{w}, like the images."
        )
    if raw.dtype != torch.bool and bool(((raw != 0) & (raw != 1)).any()):
        raise DataError("the data's masks (extras['mask']) hold values other than 0 and 1.")
    return raw[:, 0].bool()


@dataclass
class Localisation:
    """Per-image scores of one pass over the test images, and the pixel-level AUC where masks allow."""

    scores: Tensor  # (N,) float64: mean squared error per image, as reconstruction_scores gives
    pixel: PixelMetrics | None
    note: str = ""


@torch.no_grad()
def localise(
    model: Autoencoder,
    data: TensorData,
    *,
    smooth: float = 0.0,
    exact_pixels: int = EXACT_PIXELS,
    device: torch.device | str = "cpu",
) -> Localisation:
    """Score every image of ``data`` and, with masks, every pixel: one pass, memory bounded.

    The image score is the mean squared error over the whole sample (what
    :func:`aecore_analysis.anomaly.reconstruction_scores` gives); the pixel
    score is :func:`pixel_errors`, smoothed by :func:`gaussian_blur` when
    ``smooth`` > 0. Without masks, or when no pixel is anomalous, the pixel
    AUC is None and ``note`` says why.
    """
    _check_sigma(smooth)  # before any work
    if len(data.shape) != 3:
        raise ValueError(f"localise scores images (C, H, W), got samples of shape {data.shape}")
    masks = has_masks(data)
    n = len(data)
    h, w = data.shape[-2:]
    accumulator = AUCAccumulator(n * h * w, exact_limit=exact_pixels) if masks else None
    scores = torch.empty(n, dtype=torch.float64)
    step = rows_per_batch(data.shape)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            x = data.batch(rows).to(device)
            recon = model(x)
            scores[rows] = (recon.double() - x.double()).pow(2).flatten(1).mean(dim=1).cpu()
            if accumulator is not None:
                truth = mask_batch(data, rows)
                accumulator.update(gaussian_blur(pixel_errors(x, recon), smooth), truth)
    finally:
        model.train(was_training)
    if accumulator is None:
        return Localisation(scores, None, "the test split has no anomaly masks: no pixel-level ROC-AUC.")
    if accumulator.anomalous in (0, n * h * w):
        which = "no pixel" if accumulator.anomalous == 0 else "every pixel"
        return Localisation(scores, None, f"the test masks mark {which} anomalous: no pixel-level ROC-AUC.")
    auc, bound = accumulator.compute()
    metrics = PixelMetrics(auc, n * h * w, accumulator.anomalous, accumulator.exact, bound, float(smooth))
    return Localisation(scores, metrics)
