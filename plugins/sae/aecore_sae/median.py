"""The geometric median (Weiszfeld's iterations) and the data centre the SAE biases start at.

The geometric median minimises the sum of Euclidean distances to the
points. Bricken et al. (2023) start b_dec there: unlike the mean it is not
dragged by the few activation vectors of very large norm that real models
produce.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aecore.data import TensorData

__all__ = ["data_centre", "geometric_median"]

#: Seed of the rows the centre is computed on: the same rows for the encoder and the decoder.
SAMPLE_SEED = 0


def geometric_median(points: Tensor, *, iterations: int = 200, tolerance: float = 1e-7) -> Tensor:
    """argmin_y Σ_i ‖x_i − y‖ over the rows of ``points`` (N, d), by Weiszfeld's iterations.

    Starts at the mean and stops when a step moves the estimate by less than
    ``tolerance`` relative to the points' spread. Computed in float64; a
    point that the estimate lands on is handled as in Vardi and Zhang (2000):
    it is left out of the weighted mean and pulls the estimate by its own
    weight, so the iteration neither divides by zero nor sticks there.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (N, d) matrix, got shape {tuple(points.shape)}")
    x = points.double()
    y = x.mean(dim=0)
    scale = float((x - y).norm(dim=1).mean()) or 1.0
    for _ in range(iterations):
        distance = (x - y).norm(dim=1)
        at = distance <= 1e-12 * scale
        weight = 1.0 / distance.masked_fill(at, 1.0)
        weight = weight.masked_fill(at, 0.0)
        if float(weight.sum()) == 0.0:  # every point coincides with y
            break
        mean = (weight[:, None] * x).sum(dim=0) / weight.sum()
        coinciding = int(at.sum())
        if coinciding:  # Vardi-Zhang: move only as far as the other points out-pull the coinciding ones
            pull = ((weight[:, None] * (x - y)).sum(dim=0)).norm()
            share = min(1.0, coinciding / float(pull)) if float(pull) > 0 else 1.0
            new = (1 - share) * mean + share * y
        else:
            new = mean
        moved = float((new - y).norm())
        y = new
        if moved <= tolerance * scale:
            break
    return y.to(points.dtype)


def data_centre(data: TensorData, kind: str, sample: int) -> Tensor:
    """The geometric median (``median``) or mean (``mean``) of a seeded sample of ``data``'s rows, flat."""
    n = len(data)
    if n == 0:
        raise ValueError("cannot centre on an empty training split")
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    index = torch.randperm(n, generator=generator)[: min(sample, n)].sort().values
    rows = data.batch(index).flatten(1).float()
    return geometric_median(rows) if kind == "median" else rows.mean(dim=0)
