"""Reconstruction error of a model on a dataset, computed the same way everywhere.

Training's final report, ``ae eval`` and the benchmarks all call
:func:`reconstruction_metrics`, so their figures agree to the last digit.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from aecore.data import Dataset, TensorData
from aecore.distributed import all_reduce_sum
from aecore.model import Autoencoder, _figures

__all__ = ["EVAL_BATCH", "bce_per_pixel", "component_metrics", "psnr", "reconstruction_metrics"]

#: Samples per evaluation batch: large enough to be fast, small enough to bound memory.
EVAL_BATCH = 1000


@torch.no_grad()
def reconstruction_metrics(
    model: Autoencoder,
    data: TensorData,
    *,
    batch_size: int = EVAL_BATCH,
    device: torch.device | str = "cpu",
    part: tuple[int, int] | None = None,
) -> dict[str, float]:
    """MSE per pixel, sum of squared errors per image, and PSNR (for data in [0, 1]).

    Errors are accumulated in float64 over fixed-size batches in order, so the
    result does not depend on anything but the weights and the data. In a
    distributed job, ``part`` = (rank, world size) splits the work and the
    sums are added up across ranks.
    """
    was_training = model.training
    model.eval()
    sse = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for xb in data.batches(batch_size, part=part, reuse=True):
            xb = xb.to(device)
            recon = model(xb)
            sse += (recon.double() - xb.double()).pow(2).sum()
    finally:
        model.train(was_training)
    if part is not None:
        all_reduce_sum(sse)
    n = len(data)
    per_image = sse.item() / n
    mse = per_image / math.prod(data.shape)
    metrics = {"mse_per_pixel": mse, "sse_per_image": per_image}
    if data.normalisation.get("kind") == "scale":
        metrics["psnr"] = psnr(mse)
    return metrics


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error, for data in [0, 1]."""
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


@torch.no_grad()
def bce_per_pixel(
    model: Autoencoder, data: TensorData, *, batch_size: int = EVAL_BATCH, device: torch.device | str = "cpu"
) -> float | None:
    """Mean binary cross-entropy per element, for data in [0, 1] (``scale``) and outputs in [0, 1].

    None where BCE does not apply: other normalisations, or outputs outside
    [0, 1] (a decoder without a sigmoid). Accumulated in float64 like
    :func:`reconstruction_metrics`.
    """
    if data.normalisation.get("kind") != "scale":
        return None
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for xb in data.batches(batch_size, reuse=True):
            xb = xb.to(device)
            recon = model(xb).double()
            if recon.min() < 0 or recon.max() > 1:
                return None
            total += torch.nn.functional.binary_cross_entropy(recon, xb.double(), reduction="sum")
    finally:
        model.train(was_training)
    return total.item() / (len(data) * math.prod(data.shape))


def component_metrics(
    model: Autoencoder,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    out_dir: Path | None = None,
) -> dict[str, float]:
    """The figures each component's optional ``eval_metrics(model, dataset, *, device)`` reports.

    These are a family's own measures (codebook perplexity, importance-sampled
    likelihood, L0 and dead latents...), computed by ``ae eval`` beside the
    reconstruction error. ``out_dir`` reaches a method that takes it, for
    files such as a histogram. The model is in eval mode throughout.
    """
    was_training = model.training
    model.eval()
    figures: dict[str, float] = {}
    try:
        for name, part in model.parts():
            method = getattr(part, "eval_metrics", None)
            if not callable(method):
                continue
            extra = {"out_dir": out_dir} if out_dir is not None and _takes(method, "out_dir") else {}
            with torch.no_grad():
                figures.update(
                    _figures(method(model, dataset, device=device, **extra), f"{name}.eval_metrics()")
                )
    finally:
        model.train(was_training)
    return figures


def _takes(method: Any, keyword: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
