"""Vector-quantised codes (van den Oord et al. 2017, "Neural Discrete Representation Learning").

The regularizer ``vq`` owns a codebook of K vectors of size D and replaces
each D-vector of the code by its nearest codebook vector (Euclidean). A code
of ``latent_dim`` values holds P = latent_dim / D such vectors, read in one
of two layouts:

``spatial``  the code is D channels × P positions, channel first, the way a
             conv encoder's spatial code (C×H×W, flattened) is laid out: each
             position's channel vector is quantised, with D = C.
``flat``     P consecutive groups of D values.

The decoder receives the quantised code; gradients pass straight through to
the encoder (``z + sg[q − z]``). The loss adds, under the regularizer's name,

    weight · (‖q − sg[z]‖² + β · ‖z − sg[q]‖²)      (means over the vectors' values)

the codebook term (its gradient moves only the codebook) and the commitment
term (its gradient reaches only the encoder). With ``ema=true`` the codebook
is a buffer moved by exponential moving averages of the encoder outputs
assigned to each vector (decay 0.99, counts Laplace-smoothed by epsilon),
as in the paper's appendix, and only the commitment term remains. Both terms
are reported per epoch as ``vq_codebook_loss`` and ``vq_commitment_loss``.

Codes unused for ``restart_after`` training steps are dead; with
``restart=true`` (the default) they are replaced by encoder outputs drawn
from a small ring buffer of recent ones. Every piece of state (the EMA
statistics, idle counters, the buffer, the epoch's counts) is a registered
buffer, so it travels in checkpoints and resume files, and the random draws
come from a generator seeded by ``seed`` and the step count, so a resumed
run repeats them exactly and the run's own random stream is left alone.

Per epoch the regularizer reports the codebook's perplexity
(exp of the entropy of the assignment frequencies) and the fraction of codes
used; ``ae eval`` reports the bits per image, P · log2 K, and the test split's
perplexity and usage. ``code_indices(z)`` and ``code_from_indices(idx)`` map
between codes and integer indices (``ae encode`` writes them).

In evaluation mode the forward pass is plain torch operations (squared
distances by a product, argmin, an embedding lookup), so it can be exported.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param
from aecore.data import Dataset
from aecore.distributed import all_reduce_sum
from aecore.errors import ConfigError, DataError, ShapeError
from aecore.model import split_code

__all__ = ["VQConfig", "VectorQuantiser", "perplexity"]

Layout = Literal["auto", "spatial", "flat"]

#: Each training step writes at most buffer_size // _REFRESH encoder outputs into the ring buffer.
_REFRESH = 8
#: Vectors per batch when eval_metrics assigns the test split (bounds the distance matrix).
_EVAL_BATCH = 256


@dataclass(frozen=True)
class VQConfig:
    codebook_size: int = param(512, "Codebook vectors K.", minimum=1)
    dim: int | None = param(
        None,
        "Size D of each codebook vector, dividing the latent size (none: the channels of a spatial code, "
        "or the whole of a flat code, one vector per sample).",
        minimum=1,
    )
    layout: Layout = param(
        "auto",
        "spatial: the code is D channels × positions (a conv spatial code), quantised per position; "
        "flat: consecutive groups of D; auto: spatial for an encoder's spatial code where known, else flat.",
    )
    beta: float = param(0.25, "Weight β of the commitment term, which pulls the encoder to its codes.")
    weight: float = param(1.0, "Multiplier of the codebook and commitment terms.")
    ema: bool = param(
        False, "Move codebook vectors by moving averages of their assigned outputs (no codebook loss)."
    )
    decay: float = param(0.99, "Decay of the moving averages (ema=true).")
    epsilon: float = param(1e-5, "Laplace smoothing of the moving-average counts (ema=true).")
    restart: bool = param(True, "Replace dead codes by recent encoder outputs.")
    restart_after: int = param(100, "Training steps without use after which a code is dead.", minimum=1)
    buffer_size: int = param(1024, "Recent encoder outputs kept to restart dead codes from.", minimum=1)
    seed: int = param(0, "Seed of the restarts' random draws (mixed with the step count).")

    def __post_init__(self) -> None:
        if not (0 <= self.beta < math.inf and 0 <= self.weight < math.inf):
            raise ValueError(
                f"beta and weight must be finite and not negative, got {self.beta} and {self.weight}"
            )
        if not 0 < self.decay < 1:
            raise ValueError(f"decay must be strictly between 0 and 1, got {self.decay}")
        if not 0 < self.epsilon < math.inf:
            raise ValueError(f"epsilon must be a positive number, got {self.epsilon}")


def perplexity(counts: Tensor) -> float:
    """exp(entropy) of the frequencies ``counts`` (K,): K when use is uniform, 1 when one code takes all."""
    total = counts.double().sum()
    if total <= 0:
        return math.nan
    p = counts.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _resolve(config: VQConfig, latent_dim: int, code_shape: tuple[int, ...] | None) -> tuple[str, int]:
    """(layout, D) from the config and, where known, the shape of the code the encoder gives."""
    spatial = tuple(code_shape) if code_shape is not None and len(code_shape) > 1 else None
    layout = config.layout
    if layout == "auto":
        layout = "spatial" if spatial else "flat"
    dim = config.dim
    if dim is None:
        if layout == "spatial" and spatial:
            dim = spatial[0]
        elif layout == "flat":
            dim = latent_dim  # the whole code is one codebook vector
        else:
            raise ShapeError(
                f"vq cannot tell the size of its codebook vectors for a code of {latent_dim} values; "
                "set --set vq.dim=D with D dividing it (for a conv spatial code: D = its channels, "
                "with --set vq.layout=spatial)."
            )
    if spatial and layout == "spatial" and dim != spatial[0]:
        raise ShapeError(
            f"vq.dim={dim}, but the spatial code {'×'.join(map(str, spatial))} has {spatial[0]} channels per "
            f"position; set --set vq.dim={spatial[0]}, or vq.layout=flat for groups of {dim}."
        )
    if latent_dim % dim:
        raise ShapeError(
            f"vq.dim={dim} does not divide the latent size {latent_dim}; choose a vq.dim that divides it, "
            f"or a --latent-dim that is a multiple of {dim}."
        )
    return layout, dim


def _full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """No autocast around the nearest-vector search: bfloat16 distances would pick the wrong codes."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


class VectorQuantiser(RegularizerBase):
    """Nearest-codebook-vector code with straight-through gradients, EMA and dead-code restarts."""

    Config = VQConfig

    def __init__(
        self, config: VQConfig, *, latent_dim: int, code_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self.layout, self.dim = _resolve(config, self.latent_dim, code_shape)
        self.positions = self.latent_dim // self.dim
        k, d = config.codebook_size, self.dim
        # The paper's initialisation: small uniform vectors (dead codes are what restarts are for).
        initial = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)
        if config.ema:
            self.register_buffer("codebook", initial)
            # As if each vector had been assigned once, to itself: unused vectors stay put at first.
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("idle_steps", torch.zeros(k, dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("recent", torch.zeros(config.buffer_size, d))
        self.register_buffer("recent_written", torch.zeros((), dtype=torch.int64))
        # This epoch's figures: assignments per code, restarts, and (codebook, commitment, samples).
        self.register_buffer("epoch_counts", torch.zeros(k, dtype=torch.int64))
        self.register_buffer("epoch_restarts", torch.zeros((), dtype=torch.int64))
        self.register_buffer("epoch_losses", torch.zeros(3, dtype=torch.float64))
        self._model_checked = False

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # ------------------------------------------------------------------ layout

    def _vectors(self, z: Tensor) -> Tensor:
        """The code (N, latent_dim) as its vectors, (N · P, D), position by position."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ShapeError(
                f"vq quantises codes of {self.latent_dim} values, got a tensor of shape {tuple(z.shape)}."
            )
        n = z.shape[0]
        if self.layout == "spatial":
            return z.reshape(n, self.dim, self.positions).transpose(1, 2).reshape(-1, self.dim)
        return z.reshape(-1, self.dim)

    def _code(self, vectors: Tensor) -> Tensor:
        """The inverse of :meth:`_vectors`: (N · P, D) back to (N, latent_dim)."""
        n = vectors.shape[0] // self.positions
        if self.layout == "spatial":
            return vectors.reshape(n, self.positions, self.dim).transpose(1, 2).reshape(n, self.latent_dim)
        return vectors.reshape(n, self.latent_dim)

    def _nearest(self, vectors: Tensor) -> Tensor:
        """The index of the nearest codebook vector to each row of ``vectors``: argmin of ‖x − c‖².

        ‖x‖² is the same for every c, so the argmin is that of ‖c‖² − 2 x·c, one fused product.
        """
        with _full_precision(vectors):
            x, c = vectors.detach().float(), self.codebook.detach().float()
            return torch.addmm((c * c).sum(1), x, c.t(), alpha=-2).argmin(1)

    # ------------------------------------------------------------------ the transform and the loss

    def transform_code(self, z: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The quantised code (straight-through when ``z`` carries a gradient) and (vectors, q) for the loss.

        In training, dead codes are restarted first, then this batch's
        assignments update the usage counters (and the moving averages).
        """
        vectors = self._vectors(z)
        if self.training:
            with torch.no_grad():
                self._restart_dead()
        index = self._nearest(vectors)
        q = F.embedding(index, self.codebook)
        if self.training:
            with torch.no_grad():
                self._record(vectors.detach(), index)
        out = vectors + (q - vectors).detach() if vectors.requires_grad else q
        return self._code(out), (vectors, q)

    def penalty(
        self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module, *, aux: tuple[Tensor, Tensor]
    ) -> Tensor:
        """weight · (codebook term + β · commitment term); the codebook term only without EMA."""
        if self.training and not self._model_checked:
            self._check_model(model)
        vectors, q = aux
        vectors, q = vectors.float(), q.float()
        commitment = self.config.weight * self.config.beta * F.mse_loss(vectors, q.detach())
        if self.config.ema:
            codebook = torch.zeros((), device=commitment.device)
        else:
            codebook = self.config.weight * F.mse_loss(q, vectors.detach())
        if self.training:
            with torch.no_grad():
                n = vectors.shape[0] / self.positions
                step = torch.stack([codebook.detach() * n, commitment.detach() * n])
                self.epoch_losses[:2] += step.double()
                self.epoch_losses[2] += n
        return codebook + commitment

    # ------------------------------------------------------------------ training state

    def _generator(self, salt: int) -> torch.Generator:
        """A CPU generator for this step's draws: the same after a resume, and apart from the run's stream."""
        mixed = (self.config.seed * 0x9E3779B97F4A7C15 + int(self.steps) * 0xBF58476D1CE4E5B9 + salt) % 2**63
        return torch.Generator().manual_seed(mixed)

    def _record(self, vectors: Tensor, index: Tensor) -> None:
        """Usage counters, the moving averages and the ring buffer, after one training batch."""
        k = self.codebook_size
        counts = all_reduce_sum(torch.bincount(index, minlength=k))
        self.epoch_counts += counts
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.config.ema:
            decay, eps = self.config.decay, self.config.epsilon
            sums = torch.zeros_like(self.ema_sum).index_add_(0, index, vectors.float())
            self.ema_count.mul_(decay).add_(counts.to(self.ema_count.dtype), alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(all_reduce_sum(sums), alpha=1 - decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + eps) / (total + k * eps) * total
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.config.restart:
            self._remember(vectors)
        self.steps += 1

    def _remember(self, vectors: Tensor) -> None:
        """Write a random sample of this batch's vectors into the ring buffer of recent outputs."""
        size = self.recent.shape[0]
        take = min(vectors.shape[0], max(1, size // _REFRESH))
        rows = torch.randperm(vectors.shape[0], generator=self._generator(1))[:take].to(vectors.device)
        written = int(self.recent_written)
        slots = (torch.arange(take) + written) % size
        self.recent[slots.to(vectors.device)] = vectors[rows].to(self.recent.dtype)
        self.recent_written += take

    def _restart_dead(self) -> int:
        """Replace every code idle for ``restart_after`` steps by a recent encoder output; how many."""
        if not self.config.restart:
            return 0
        dead = (self.idle_steps >= self.config.restart_after).nonzero().squeeze(1)
        filled = min(int(self.recent_written), self.recent.shape[0])
        if len(dead) == 0 or filled == 0:
            return 0
        generator = self._generator(2)
        if filled >= len(dead):
            pick = torch.randperm(filled, generator=generator)[: len(dead)]
        else:
            pick = torch.randint(filled, (len(dead),), generator=generator)
        fresh = self.recent[pick.to(self.recent.device)]
        self.codebook[dead] = fresh.to(self.codebook.dtype)
        if self.config.ema:
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        self.idle_steps[dead] = 0
        self.epoch_restarts += len(dead)
        return len(dead)

    def _check_model(self, model: nn.Module) -> None:
        """Refuse a spatial encoder code read in a layout that would mix its positions."""
        self._model_checked = True
        shape = getattr(getattr(model, "encoder", None), "code_shape", None)
        if not shape or len(shape) < 2:
            return
        shown = "×".join(map(str, shape))
        if self.layout == "flat":
            raise ShapeError(
                f"the encoder's code is spatial ({shown}) but vq reads it as flat groups of {self.dim}, "
                f"which mixes positions; set --set vq.layout=spatial --set vq.dim={shape[0]}."
            )
        if self.dim != shape[0]:
            raise ShapeError(
                f"vq.dim={self.dim}, but the encoder's spatial code {shown} has {shape[0]} channels per "
                f"position; set --set vq.dim={shape[0]}."
            )

    # ------------------------------------------------------------------ figures

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's codebook perplexity, fraction of codes used, restarts and loss terms; then reset."""
        counts = self.epoch_counts.cpu()
        if int(counts.sum()) == 0:
            return {}
        losses = self.epoch_losses.cpu()
        samples = float(losses[2]) or 1.0
        figures = {
            "vq_perplexity": perplexity(counts),
            "vq_used_fraction": float((counts > 0).double().mean()),
            "vq_restarts": float(self.epoch_restarts),
            "vq_codebook_loss": float(losses[0]) / samples,
            "vq_commitment_loss": float(losses[1]) / samples,
        }
        self.epoch_counts.zero_()
        self.epoch_restarts.zero_()
        self.epoch_losses.zero_()
        return figures

    def eval_metrics(self, model: nn.Module, dataset: Dataset, *, device: Any) -> dict[str, float]:
        """Bits per image (P · log2 K), and the test split's codebook perplexity and fraction used."""
        self._check_model(model)
        figures = {"vq_bits_per_image": self.positions * math.log2(self.codebook_size)}
        counts = torch.zeros(self.codebook_size, dtype=torch.int64)
        for xb in dataset.test.batches(_EVAL_BATCH, reuse=True):
            if len(xb):
                index = self.code_indices(self._input_code(model, xb.to(device)))
                counts += torch.bincount(index.flatten(), minlength=self.codebook_size).cpu()
        if int(counts.sum()):
            figures["vq_test_perplexity"] = perplexity(counts)
            figures["vq_test_used_fraction"] = float((counts > 0).double().mean())
        return figures

    def _input_code(self, model: nn.Module, x: Tensor) -> Tensor:
        """The code this regularizer receives in ``model``: the encoder's, after the ones listed before it."""
        z = model.encoder(x)
        for reg in model.regularizers.values():
            if reg is self:
                return z
            z = split_code(reg.transform_code(z))[0]
        raise ConfigError("this vq regularizer is not part of the model it was asked to measure.")

    # ------------------------------------------------------------------ integer codes

    def code_indices(self, z: Tensor) -> Tensor:
        """The index of each position's codebook vector, (N, P) int64; changes no state."""
        return self._nearest(self._vectors(z)).reshape(z.shape[0], self.positions)

    def code_from_indices(self, index: Tensor) -> Tensor:
        """The quantised code (N, latent_dim) of indices (N, P): what ``transform_code`` gives in eval."""
        if index.dim() != 2 or index.shape[1] != self.positions:
            got = f"{index.shape[1]} per row" if index.dim() == 2 else f"shape {tuple(index.shape)}"
            raise ShapeError(
                f"vq codes are {self.positions} indices per row (one per code position), got {got}; "
                "decode indices with the model that wrote them."
            )
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise DataError(f"codebook indices must be whole numbers, got {str(index.dtype)[6:]} values.")
        if index.numel():
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= self.codebook_size:
                bad = low if low < 0 else high
                raise DataError(
                    f"codebook index {bad} is out of range for a codebook of {self.codebook_size} vectors "
                    f"(0 to {self.codebook_size - 1}); decode indices with the model that wrote them."
                )
        flat = index.reshape(-1).to(device=self.codebook.device, dtype=torch.int64)
        return self._code(F.embedding(flat, self.codebook.detach()))

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, positions={self.positions}, "
            f"layout={self.layout}, ema={self.config.ema}, restart={self.config.restart}"
        )
