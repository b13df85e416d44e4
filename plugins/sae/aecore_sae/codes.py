"""Sparse codes and the auxiliary loss, as regularizers: ``batchtopk``, ``jumprelu`` and ``auxk``.

``batchtopk`` (Bussmann et al. 2024): in training, keep the k·B largest
activations of the whole batch of B samples, so that samples share a
budget of k per sample on average; in evaluation, keep every activation
above a threshold estimated during training (an exponential average of the
smallest activation kept in each batch), so that a sample's code does not
depend on the batch it came with.

``jumprelu`` (Rajamanoharan et al. 2024): f_j = z_j·H(z_j − θ_j) with a
learned threshold θ_j = exp(t_j) per latent, and an L0 penalty
λ·mean_batch Σ_j H(z_j − θ_j). Both pass gradient to θ by a straight-through
estimator with a rectangle kernel of bandwidth ε: ∂f_j/∂θ_j = −(θ_j/ε)·1{|z_j − θ_j| < ε/2}
and ∂H/∂θ_j = −(1/ε)·1{|z_j − θ_j| < ε/2}; only samples within ε/2 of the
threshold move it.

``auxk`` (Gao et al. 2024): reconstruct the main model's residual
e = x − x̂ from the k_aux largest pre-activations of the dead latents
(those that have not fired in its ``dead_window`` of training samples),
ê = W_dec·a_aux, and add α·‖e − ê‖²/‖e‖² (sums over the batch) to the loss;
zero while no latent is dead. It reads the encoder's output, so it comes
first among the regularizers: ``--reg auxk --reg topk``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param
from aecore.errors import ConfigError

__all__ = [
    "AuxK",
    "AuxKConfig",
    "BatchTopK",
    "BatchTopKConfig",
    "JumpReLU",
    "JumpReLUConfig",
    "batch_topk",
]


# -- BatchTopK ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchTopKConfig:
    k: int = param(16, "Active latents per sample on average: k·B are kept over a batch of B.", minimum=1)
    threshold_beta: float = param(
        0.99,
        "Decay of the exponential average of each batch's smallest kept activation: the threshold "
        "used in evaluation.",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold_beta < 1.0:
            raise ValueError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}")


def batch_topk(z: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """Row and column of the ``total`` largest entries of ``z`` (B, n), largest first.

    Exact, but faster than one top-k over all B·n entries: each row's top m
    candidates (m = 4·total/B) are ranked, and the answer is taken from them
    when every row's m-th candidate lies strictly below the total-th largest
    candidate (so nothing outside the candidates can reach the top); else the
    full top-k is taken.
    """
    b, n = z.shape
    m = min(n, max(1, 4 * math.ceil(total / b)))
    if m < n and total <= b * m:
        values, cols = z.topk(m, dim=1)
        best, where = values.flatten().topk(total)
        if bool((values[:, -1] < best[-1]).all()):
            return where // m, cols.flatten()[where]
    where = z.flatten().topk(total).indices
    return where // n, where % n


class BatchTopK(RegularizerBase):
    """Keep the k·B largest activations over a batch in training; those above a threshold in evaluation."""

    Config = BatchTopKConfig

    def __init__(self, config: BatchTopKConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        if config.k > latent_dim:
            raise ConfigError(
                f"batchtopk.k={config.k} is larger than the latent size {latent_dim}; "
                f"choose k <= {latent_dim}."
            )
        self.register_buffer("threshold_average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.int64))

    @property
    def threshold(self) -> float | None:
        """The evaluation threshold (bias-corrected average), or None before any training batch."""
        if self.threshold_batches.is_meta:  # built to be measured, not run
            return None
        batches = int(self.threshold_batches)
        if batches == 0:
            return None
        beta = self.config.threshold_beta
        return float(self.threshold_average) / (1.0 - beta**batches)

    def transform_code(self, z: Tensor) -> Tensor:
        if self.training:
            total = self.config.k * z.shape[0]
            if total >= z.numel():
                return z
            rows, cols = batch_topk(z, total)
            kept = z[rows, cols]
            self._update_threshold(kept.detach())
            return torch.zeros_like(z).index_put((rows, cols), kept)
        # Tensor operations only, no Python branch on a value, so the model exports: before any
        # training batch (no threshold yet) each sample keeps its own k largest instead.
        trained = self.threshold_batches > 0
        batches = self.threshold_batches.clamp_min(1).to(z.dtype)
        threshold = self.threshold_average.to(z.dtype) / (1.0 - self.config.threshold_beta**batches)
        kth = z.topk(self.config.k, dim=1).values[:, -1:]
        bound = torch.where(trained, threshold, kth)
        keep = (z > bound) | ((z == bound) & ~trained)  # trained: above the threshold; else >= the kth
        return torch.where(keep, z, torch.zeros_like(z))

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        positive = kept[kept > 0]
        if positive.numel() == 0:
            return
        beta = self.config.threshold_beta
        self.threshold_average.mul_(beta).add_(positive.min().double(), alpha=1.0 - beta)
        self.threshold_batches.add_(1)


# -- JumpReLU ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JumpReLUConfig:
    weight: float = param(1e-3, "λ: multiplier of the mean L0 (active latents per sample) in the loss.")
    threshold: float = param(1e-3, "Initial threshold θ of every latent.")
    bandwidth: float = param(1e-3, "ε: width of the rectangle kernel of the straight-through estimator.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight < math.inf:
            raise ValueError(f"weight must be a finite non-negative number, got {self.weight}")
        for name in ("threshold", "bandwidth"):
            value = getattr(self, name)
            if not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value}")


def _window(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """The rectangle kernel K((z − θ)/ε): 1 where |z − θ| < ε/2."""
    return ((z - threshold).abs() < bandwidth / 2).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """z·H(z − θ); ∂/∂z = H(z − θ), ∂/∂θ = −(θ/ε)·K((z − θ)/ε) (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, threshold = ctx.saved_tensors
        grad_z = grad * (z > threshold)
        kernel = _window(z, threshold, ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth) * (kernel * grad).sum(dim=0)
        return grad_z, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(z − θ); ∂/∂z = 0, ∂/∂θ = −(1/ε)·K((z − θ)/ε) (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, threshold = ctx.saved_tensors
        kernel = _window(z, threshold, ctx.bandwidth)
        return torch.zeros_like(z), -(kernel * grad).sum(dim=0) / ctx.bandwidth, None


class JumpReLU(RegularizerBase):
    """Per-latent learned thresholds, trained through a straight-through estimator, and an L0 penalty."""

    Config = JumpReLUConfig

    def __init__(self, config: JumpReLUConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self.log_threshold = nn.Parameter(torch.full((latent_dim,), math.log(config.threshold)))

    @property
    def threshold(self) -> Tensor:
        """θ = exp(t) per latent (kept positive by its parametrisation)."""
        return self.log_threshold.exp()

    def transform_code(self, z: Tensor) -> tuple[Tensor, Tensor]:
        threshold = self.threshold
        if self.training and torch.is_grad_enabled():
            code = _JumpReLU.apply(z, threshold, self.config.bandwidth)
        else:  # plain tensor operations: what an exported model computes
            code = z * (z > threshold)
        return code, z

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module, *, aux: Tensor) -> Tensor:
        """λ · mean over the batch of the number of latents above their threshold."""
        if self.config.weight == 0:
            return torch.zeros((), device=z.device, dtype=z.dtype)
        active = _Step.apply(aux, self.threshold, self.config.bandwidth)
        return self.config.weight * active.sum(dim=1).mean()


# -- AuxK --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuxKConfig:
    k: int = param(
        256, "k_aux: dead latents (largest pre-activations) used to rebuild the residual.", minimum=1
    )
    weight: float = param(1 / 32, "α: multiplier of the auxiliary loss (Gao et al. use 1/32).")
    dead_window: int = param(
        1_000_000,
        "A latent is dead, and gets the residual, when it has not fired in this many training samples "
        "(counted from the start of training; 0: every latent counts as dead).",
        minimum=0,
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight < math.inf:
            raise ValueError(f"weight must be a finite non-negative number, got {self.weight}")


class AuxK(RegularizerBase):
    """Feeds the residual to the dead latents, so that they learn something and come back.

    It keeps its own count of the training samples since each latent last
    fired (``since_fired``, saved with the model), read from the final code,
    so it works with any decoder: ê is ``decoder.directions`` where the
    decoder has it (the ``sae`` decoder, which then counts nothing), else
    decoder(a_aux) − decoder(0), which is W_dec·a_aux for any linear decoder.
    """

    Config = AuxKConfig
    #: A fresh model has no dead latent, so its penalty is 0: the conformance kit checks it with all dead.
    conformance_params: ClassVar[dict[str, Any]] = {"dead_window": 0}

    def __init__(self, config: AuxKConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self.register_buffer("since_fired", torch.zeros(latent_dim, dtype=torch.int64))

    def transform_code(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z, z  # the code passes unchanged; the penalty gets the encoder's output

    def dead_mask(self) -> Tensor:
        """Latents that have not fired in the last ``dead_window`` training samples."""
        return self.since_fired >= self.config.dead_window

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module, *, aux: Tensor) -> Tensor:
        """α·‖e − ê‖²/‖e‖² over the batch, e = x − x̂ (no gradient), ê from the top-k_aux dead latents.

        A training batch first updates the count from the final code ``z``,
        so a latent that fired in this batch is not dead (as in Gao et al.'s code).
        """
        self._check_first(model)
        if self.training:
            with torch.no_grad():
                fired = (z.detach() != 0).flatten(1).any(dim=0)
                self.since_fired.add_(z.shape[0]).masked_fill_(fired, 0)
        dead = self.dead_mask()
        zero = torch.zeros((), device=z.device, dtype=z.dtype)
        count = int(dead.sum())
        if self.config.weight == 0 or count == 0:
            return zero
        values, index = aux.masked_fill(~dead, -math.inf).topk(min(self.config.k, count), dim=1)
        values = values.clamp_min(0)
        residual = (x.flatten(1) - recon.flatten(1)).detach()
        rebuilt = self._decode(model, index, values, aux)
        error = (rebuilt - residual).pow(2).sum() / residual.pow(2).sum().clamp_min(1e-12)
        return self.config.weight * error

    def _decode(self, model: nn.Module, index: Tensor, values: Tensor, aux: Tensor) -> Tensor:
        decoder: Any = model.decoder
        if callable(getattr(decoder, "directions", None)):
            return decoder.directions(index, values)
        code = torch.zeros_like(aux).scatter(1, index, values)
        both = decoder(torch.cat([code, torch.zeros_like(code)])).flatten(1)
        rebuilt, offset = both.chunk(2)
        return rebuilt - offset

    def _check_first(self, model: nn.Module) -> None:
        regularizers = getattr(model, "regularizers", {})
        if next(iter(regularizers.values()), None) is not self:
            raise ConfigError(
                "auxk reads the encoder's output, so it must be the first regularizer: "
                "--reg auxk --reg topk (or batchtopk)."
            )
