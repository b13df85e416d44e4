"""Anomaly scores beyond the plain reconstruction error, and sums of them.

The plain score, squared error, weighs every pixel alike, so a thin stroke
in the wrong place costs little, while an unusual code that the decoder
still renders well costs nothing. Two more scores look at what it misses:

``mse``
    the mean squared reconstruction error of the sample (the plain score);
``ssim``
    1 − the mean structural similarity between image and reconstruction
    (Wang et al. 2004: local means, contrasts and correlation under an
    11×11 Gaussian window of σ 1.5, on images in [0, 1]), so a changed
    structure weighs more than a uniform shift of brightness; images only;
``code``
    the squared Mahalanobis distance of the sample's code from a Gaussian
    fitted to the codes of the reference (the normal training samples): a
    density on the codes;
``knn``
    the distance from the sample's code to its 5th nearest reference code:
    a density on the codes that assumes no shape (a reference sample's own
    code does not count among its neighbours).

A sum such as ``ssim+code`` adds the parts after putting them on one scale:
each part's log score, minus the mean of its logs over the reference, over
their standard deviation. Every part comes from one pass over the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore.model import Autoencoder

__all__ = [
    "MAX_CODE_SIZE",
    "NEIGHBOURS",
    "SCORES",
    "CodeGaussian",
    "CodeNeighbours",
    "FittedScore",
    "fit_score",
    "parse_score",
    "ssim",
]

#: Each score's one-line meaning, in the order a table lists them.
SCORES: dict[str, str] = {
    "mse": "mean squared reconstruction error (the plain score)",
    "ssim": "1 − structural similarity of image and reconstruction (images only)",
    "code": "Mahalanobis distance of the code from the normal codes' Gaussian",
    "knn": "distance of the code to its 5th nearest normal code",
}
#: The neighbour whose distance ``knn`` scores.
NEIGHBOURS = 5
#: The ``code`` score inverts a covariance of this many values a side at most.
MAX_CODE_SIZE = 4096
_WINDOW_SIGMA = 1.5
_WINDOW_RADIUS = 5
#: Scores are logged before a sum; this keeps a perfect reconstruction (score 0) finite.
_LOG_FLOOR = 1e-12


def parse_score(text: str) -> tuple[str, ...]:
    """The parts of a score name such as ``ssim`` or ``ssim+code``, checked; one-line error otherwise."""
    parts = tuple(p.strip() for p in text.split("+"))
    known = ", ".join(SCORES)
    if not text.strip() or any(not p for p in parts):
        raise ConfigError(
            f"--score {text!r} is empty or has an empty part; use one of {known}, or a sum such as ssim+code."
        )
    for part in parts:
        if part not in SCORES:
            raise ConfigError(f"unknown --score {part!r}; use one of {known}, or a sum such as ssim+code.")
    if len(set(parts)) != len(parts):
        raise ConfigError(
            f"--score {text!r} names a part twice; name each of {known} once at most, e.g. ssim+code."
        )
    return parts


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Mean structural similarity of each pair of images (N, C, H, W), over channels and positions: (N,).

    The Gaussian window (σ 1.5) is 11×11, cut to fit images smaller than
    that; positions are those where the whole window fits. Identical images
    give 1. Computed in float64, returned in float64.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"expected two image batches of one shape (N, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    c, h, w = x.shape[1:]
    radius = min(_WINDOW_RADIUS, (min(h, w) - 1) // 2)
    if radius < 1:
        raise DataError(f"--score ssim needs images of at least 3×3 pixels, got {h}×{w}.")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    g = torch.exp(-0.5 * (offsets / _WINDOW_SIGMA) ** 2)
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(5 * c, 1, -1, -1)
    a, b = x.double(), y.double()  # variances are differences of near-equal means: float32 loses them
    local = torch.nn.functional.conv2d(torch.cat([a, b, a * a, b * b, a * b], dim=1), window, groups=5 * c)
    mu_a, mu_b, aa, bb, ab = local.split(c, dim=1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(dim=1)


@dataclass(frozen=True)
class CodeGaussian:
    """A Gaussian over codes: their mean and the Cholesky factor of their (slightly shrunk) covariance."""

    mean: Tensor
    factor: Tensor

    @classmethod
    def fit(cls, codes: Tensor) -> CodeGaussian:
        """Fit to codes (N, D); the covariance gets 1e-3 of its mean variance added on the diagonal.

        That small ridge keeps the factor defined when some code values never
        vary (dead latents, fewer samples than dimensions), at a negligible
        cost to the distances along the directions that do vary.
        """
        from aecore_analysis.latent import fit_gaussian

        if len(codes) < 2:
            raise DataError(
                "--score code fits a Gaussian to the normal training codes and needs 2 or more of them."
            )
        gaussian = fit_gaussian(codes)
        cov = gaussian.cov.clone()
        cov.diagonal().add_(1e-3 * float(cov.diagonal().mean()) or 1e-12)
        return cls(gaussian.mean, torch.linalg.cholesky(cov))

    def distance(self, codes: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each code (N, D) from the mean, float64."""
        centred = (codes.double() - self.mean).T
        solved = torch.linalg.solve_triangular(self.factor, centred, upper=False)
        return solved.pow(2).sum(dim=0)


@dataclass(frozen=True)
class CodeNeighbours:
    """The reference codes, and the distance to the k-th nearest of them."""

    codes: Tensor
    k: int = NEIGHBOURS

    def distance(self, codes: Tensor, *, exclude_self: bool = False) -> Tensor:
        """Euclidean distance of each code (N, D) to its k-th nearest reference code, float64.

        With ``exclude_self`` the codes are the reference's own, in order, and
        each one's zero distance to itself is skipped. Distances are taken in
        blocks of at most 2**24 pairs, so memory stays bounded.
        """
        ref = self.codes.float()
        k = min(self.k + int(exclude_self), len(ref))
        step = max(1, 2**24 // max(1, len(ref)))
        out = []
        for start in range(0, len(codes), step):
            block = torch.cdist(codes[start : start + step].float(), ref)
            out.append(block.topk(k, dim=1, largest=False).values[:, -1].double())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@dataclass
class FittedScore:
    """A score fitted to the reference: what ``code`` and the sums need to score new samples.

    ``reference`` holds every part's scores (and the sum's) on the reference
    samples themselves, which is what a percentile threshold is taken of.
    """

    parts: tuple[str, ...]
    gaussian: CodeGaussian | None
    neighbours: CodeNeighbours | None
    log_stats: dict[str, tuple[float, float]]
    reference: dict[str, Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "+".join(self.parts)

    def score(
        self, model: Autoencoder, data: TensorData, *, device: torch.device | str = "cpu"
    ) -> dict[str, Tensor]:
        """Every part's score of each sample of ``data`` and, for a sum, the sum: name → (N,) float64.

        The plain ``mse`` is always among them, so the chosen score can be
        reported beside it.
        """
        table, codes = _one_pass(model, data, self.parts, device)
        table = self._complete(table, codes, reference=False)
        if len(self.parts) > 1:
            table[self.name] = self._sum(table)
        return table

    def _complete(
        self, table: dict[str, Tensor], codes: Tensor | None, *, reference: bool
    ) -> dict[str, Tensor]:
        """The pass's table with ``code`` and ``knn`` added from its codes, as mse then the parts in order.

        ``reference``: the codes are the reference's own, so knn skips each one's zero distance to itself.
        """
        if self.gaussian is not None:
            assert codes is not None
            table["code"] = self.gaussian.distance(codes)
        if self.neighbours is not None:
            assert codes is not None
            table["knn"] = self.neighbours.distance(codes, exclude_self=reference)
        return {name: table[name] for name in dict.fromkeys(("mse", *self.parts))}

    def _sum(self, table: dict[str, Tensor]) -> Tensor:
        total = torch.zeros_like(table[self.parts[0]])
        for part in self.parts:
            mean, std = self.log_stats[part]
            total += (table[part].clamp_min(_LOG_FLOOR).log() - mean) / std
        return total


def fit_score(
    model: Autoencoder, reference: TensorData, parts: Iterable[str], *, device: torch.device | str = "cpu"
) -> FittedScore:
    """Fit the score made of ``parts`` (see :func:`parse_score`) to the normal ``reference`` samples.

    ``code`` fits the Gaussian of the reference codes; a sum takes the mean
    and spread of each part's log scores over the reference.
    """
    parts = tuple(parts)
    if "ssim" in parts and len(reference.shape) != 3:
        raise ConfigError(
            f"--score ssim compares images; the samples have shape {reference.shape}, not (C, H, W). "
            "Use --score mse or code."
        )
    if len(reference) == 0:
        raise DataError("no normal training samples to fit the score to (the reference is empty).")
    table, codes = _one_pass(model, reference, parts, device)
    gaussian = neighbours = None
    if codes is not None:
        if "code" in parts:
            if codes.shape[1] > MAX_CODE_SIZE:
                raise ConfigError(
                    f"--score code fits a Gaussian over the code's {codes.shape[1]} values, more than the "
                    f"{MAX_CODE_SIZE} it can invert; use --score knn, mse or ssim for this model."
                )
            gaussian = CodeGaussian.fit(codes)
        if "knn" in parts:
            if len(codes) <= NEIGHBOURS:
                raise DataError(
                    f"--score knn needs more than {NEIGHBOURS} normal training samples, got {len(codes)}."
                )
            neighbours = CodeNeighbours(codes)
    fitted = FittedScore(parts, gaussian, neighbours, {})
    table = fitted._complete(table, codes, reference=True)
    if len(parts) > 1:
        for part in parts:
            logs = table[part].clamp_min(_LOG_FLOOR).log()
            std = float(logs.std()) if len(logs) > 1 else 0.0
            if not (math.isfinite(std) and std > 0):
                raise DataError(
                    f"--score {fitted.name}: the part {part!r} takes one value on every normal training "
                    "sample, so it cannot be put on a scale with the others; score with fewer parts."
                )
            fitted.log_stats[part] = (float(logs.mean()), std)
        table[fitted.name] = fitted._sum(table)
    fitted.reference = table
    return fitted


@torch.no_grad()
def _one_pass(
    model: Autoencoder, data: TensorData, parts: tuple[str, ...], device: torch.device | str
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Encode and decode each batch once: ``mse`` (always) and ``ssim`` per sample, and the codes
    (float32, CPU, flattened) when ``code`` or ``knn`` needs them, else None."""
    from aecore_analysis.localisation import rows_per_batch

    want_ssim, want_codes = "ssim" in parts, "code" in parts or "knn" in parts
    mse: list[Tensor] = []
    structure: list[Tensor] = []
    codes: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for xb in data.batches(rows_per_batch(data.shape)):
            x = xb.to(device)
            z = model.encode(x)
            recon = model.decode(z)
            mse.append((recon.double() - x.double()).pow(2).flatten(1).mean(dim=1).cpu())
            if want_ssim:
                structure.append((1.0 - ssim(x, recon)).cpu())
            if want_codes:
                codes.append(z.flatten(1).float().cpu())
    finally:
        model.train(was_training)

    def joined(values: list[Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.cat(values) if values else torch.zeros(0, dtype=dtype)

    table = {"mse": joined(mse)}
    if want_ssim:
        table["ssim"] = joined(structure)
    return table, joined(codes, torch.float32) if want_codes else None
