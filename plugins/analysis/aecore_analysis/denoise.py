"""Denoising: how much a model cleans corrupted inputs, in dB of PSNR.

The corruptions match the denoising regularizer's (gaussian, mask,
salt-and-pepper) but draw from their own seeded generator, so a report is
reproducible and does not disturb torch's global random state. The core does
not depend on the plugin; this is the evaluation-side copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore.model import Autoencoder

__all__ = ["NOISE_KINDS", "DenoiseReport", "corrupt", "denoise_report", "psnr"]

NOISE_KINDS: tuple[str, ...] = ("gaussian", "mask", "salt_pepper")


def corrupt(
    x: Tensor, kind: str, *, factor: float = 0.3, prob: float = 0.3, generator: torch.Generator | None = None
) -> Tensor:
    """A corrupted copy of ``x`` in [0, 1]: x + factor·N(0,1) clamped, zeroed, or set to 0/1 at random."""
    if kind == "gaussian":
        if factor < 0:
            raise ConfigError(f"--factor cannot be negative, got {factor}.")
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (x + factor * noise).clamp(0.0, 1.0)
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"--prob must be in [0, 1], got {prob}.")
    hit = (torch.rand(x.shape, generator=generator) < prob).to(x.device)
    if kind == "mask":
        return x.masked_fill(hit, 0.0)
    if kind == "salt_pepper":
        salt = (torch.rand(x.shape, generator=generator) < 0.5).to(x.device, x.dtype)
        return torch.where(hit, salt, x)
    raise ConfigError(f"unknown noise '{kind}'; choose {', '.join(NOISE_KINDS)}.")


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for data in [0, 1]."""
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


@dataclass
class DenoiseReport:
    """PSNR of noisy and denoised images against the clean ones, and example rows."""

    noisy_psnr: float
    denoised_psnr: float
    clean_recon_psnr: float
    n: int
    noisy: Tensor
    denoised: Tensor
    clean: Tensor

    @property
    def gain_db(self) -> float:
        return self.denoised_psnr - self.noisy_psnr


@torch.no_grad()
def denoise_report(
    model: Autoencoder,
    data: TensorData,
    *,
    kind: str = "gaussian",
    factor: float = 0.3,
    prob: float = 0.3,
    seed: int = 0,
    limit: int | None = None,
    examples: int = 8,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> DenoiseReport:
    """Corrupt ``data`` (the first ``limit`` samples), reconstruct, and measure PSNRs over all pixels.

    The reconstruction of the clean input is measured too: a model cannot
    denoise beyond what it reconstructs.
    """
    norm = data.normalisation
    if norm.get("kind") != "scale" or "mean" in norm or "std" in norm:
        raise DataError("denoising needs data scaled to [0, 1]; this dataset is normalised otherwise.")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}.")
        data = data.subset(torch.arange(min(limit, len(data))))
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    shown: list[tuple[Tensor, Tensor, Tensor]] = []
    try:
        for xb in data.batches(batch_size):
            noisy = corrupt(xb, kind, factor=factor, prob=prob, generator=generator)
            xb, noisy = xb.to(device), noisy.to(device)
            out, recon = model(noisy), model(xb)
            clean = xb.double()
            sums[0] += (noisy.double() - clean).pow(2).sum().cpu()
            sums[1] += (out.double() - clean).pow(2).sum().cpu()
            sums[2] += (recon.double() - clean).pow(2).sum().cpu()
            if sum(len(s[0]) for s in shown) < examples:
                shown.append((noisy.cpu(), out.cpu(), xb.cpu()))
    finally:
        model.train(was_training)
    n = len(data)
    per_element = (sums / (n * math.prod(data.shape))).tolist()
    noisy_all, denoised_all, clean_all = (torch.cat([s[i] for s in shown])[:examples] for i in range(3))
    return DenoiseReport(
        noisy_psnr=psnr(per_element[0]),
        denoised_psnr=psnr(per_element[1]),
        clean_recon_psnr=psnr(per_element[2]),
        n=n,
        noisy=noisy_all,
        denoised=denoised_all,
        clean=clean_all,
    )
