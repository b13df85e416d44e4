"""Reconstruction error of a model on a dataset, computed the same way everywhere.

Training's final report, ``ae eval`` and the benchmarks all call
:func:`reconstruction_metrics`, so their figures agree to the last digit.
"""

from __future__ import annotations

import math

import torch

from aecore.data import TensorData
from aecore.model import Autoencoder

__all__ = ["reconstruction_metrics"]


@torch.no_grad()
def reconstruction_metrics(
    model: Autoencoder, data: TensorData, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """MSE per pixel, sum of squared errors per image, and PSNR (for data in [0, 1]).

    Errors are accumulated in float64 over fixed-size batches in order, so the
    result does not depend on anything but the weights and the data.
    """
    was_training = model.training
    model.eval()
    sse = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for xb in data.batches(batch_size):
            xb = xb.to(device)
            recon = model(xb)
            sse += (recon.double() - xb.double()).pow(2).sum()
    finally:
        model.train(was_training)
    n = len(data)
    per_image = sse.item() / n
    mse = per_image / math.prod(data.shape)
    metrics = {"mse_per_pixel": mse, "sse_per_image": per_image}
    if data.normalisation.get("kind") == "scale":
        metrics["psnr"] = 10 * math.log10(1.0 / mse) if mse > 0 else math.inf
    return metrics
