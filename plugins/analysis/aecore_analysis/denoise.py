"""Denoising: how much a model cleans corrupted inputs, in dB of PSNR.

The corruption is not defined here: it is what regularizers do to a model's
input in training, their ``transform_input`` called in training mode. By
default that is the model's own regularizers (a model trained with
``--reg denoising`` is measured on the noise it learnt to remove); any
installed regularizer can be built to corrupt instead. The random draws
happen inside :func:`torch.random.fork_rng` from a fixed seed, so a report
is reproducible and torch's global random state is left as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from aecore import registry
from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore.evaluate import EVAL_BATCH, psnr, reconstruction_metrics
from aecore.model import Autoencoder

__all__ = ["DenoiseReport", "build_corruption", "changes_input", "corrupt", "denoise_report", "seeded"]


def build_corruption(name: str, params: Mapping[str, Any] | None, *, latent_dim: int) -> nn.Module:
    """An installed regularizer, built by name from ``params`` (text values parsed as for ``--set``)."""
    return registry.build("regularizer", name, dict(params or {}), latent_dim=latent_dim)


@contextlib.contextmanager
def _training(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Within this block the modules are in training mode; afterwards each is as it was."""
    before = [m.training for m in modules]
    try:
        for m in modules:
            m.train(True)
        yield
    finally:
        for m, mode in zip(modules, before, strict=True):
            m.train(mode)


def corrupt(x: Tensor, corruption: Sequence[nn.Module]) -> Tensor:
    """``x`` through each module's ``transform_input`` in training mode, in order (as training does)."""
    with _training(corruption):
        for module in corruption:
            x = module.transform_input(x)
    return x


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """torch's random generators seeded with ``seed`` within the block, restored after it."""
    device = torch.device(device)
    if device.type == "cpu":  # the CPU generator is always forked; no accelerator's is touched
        fork = torch.random.fork_rng(devices=[])
    else:
        index = (
            device.index
            if device.index is not None
            else (torch.cuda.current_device() if device.type == "cuda" else 0)
        )
        fork = torch.random.fork_rng(devices=[index], device_type=device.type)
    with fork:
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def changes_input(corruption: Sequence[nn.Module], x: Tensor, *, seed: int = 0) -> bool:
    """Whether the corruption changes ``x`` at all (an identity ``transform_input`` does not)."""
    with seeded(seed, x.device):
        return not torch.equal(corrupt(x, corruption), x)


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
    corruption: Sequence[nn.Module],
    *,
    seed: int = 0,
    limit: int | None = None,
    examples: int = 8,
    device: torch.device | str = "cpu",
) -> DenoiseReport:
    """Corrupt ``data`` (its first ``limit`` samples), reconstruct, and measure PSNRs over all pixels.

    Batches of :data:`aecore.evaluate.EVAL_BATCH` are corrupted in order
    from one seeded stream, so the same seed and device give the same noisy
    images. The reconstruction of the clean input is measured too, with
    :func:`aecore.evaluate.reconstruction_metrics` (what ``ae eval``
    reports): a model cannot denoise beyond what it reconstructs.
    """
    norm = data.normalisation
    if norm.get("kind") != "scale" or "mean" in norm or "std" in norm:
        raise DataError("denoising needs data scaled to [0, 1]; this dataset is normalised otherwise.")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}.")
        data = data.subset(torch.arange(min(limit, len(data))))
    was_training = model.training
    model.eval()
    sse = torch.zeros(2, dtype=torch.float64)
    shown: list[tuple[Tensor, Tensor, Tensor]] = []
    try:
        with seeded(seed, device):
            for xb in data.batches(EVAL_BATCH):
                xb = xb.to(device)
                noisy = corrupt(xb, corruption)
                out = model(noisy)
                clean = xb.double()
                sse[0] += (noisy.double() - clean).pow(2).sum().cpu()
                sse[1] += (out.double() - clean).pow(2).sum().cpu()
                if sum(len(s[0]) for s in shown) < examples:
                    shown.append((noisy.cpu(), out.cpu(), xb.cpu()))
    finally:
        model.train(was_training)
    clean_psnr = reconstruction_metrics(model, data, device=device)["psnr"]
    per_element = (sse / (len(data) * math.prod(data.shape))).tolist()
    noisy_all, denoised_all, clean_all = (torch.cat([s[i] for s in shown])[:examples] for i in range(3))
    return DenoiseReport(
        noisy_psnr=psnr(per_element[0]),
        denoised_psnr=psnr(per_element[1]),
        clean_recon_psnr=clean_psnr,
        n=len(data),
        noisy=noisy_all,
        denoised=denoised_all,
        clean=clean_all,
    )
