"""The sparse autoencoder: encoder ``sae`` and decoder ``sae``.

Following Bricken et al. (2023) and Gao et al. (2024)::

    f = act(W_enc (x − b_pre) + b_enc)      the encoder (act: ReLU, or none for a code regularizer)
    x̂ = W_dec f + b_dec                     the decoder

``W_dec`` is stored as ``decoder.weight`` of shape (latents, d): row j is
latent j's dictionary direction (column j of W_dec in the papers' notation).
``W_enc`` is ``encoder.weight``, also (latents, d), as in ``nn.Linear(d, latents)``.

The papers share one bias, b_pre = b_dec. Here the encoder's ``pre_bias``
and the decoder's ``bias`` are two parameters that start at the same point
(the geometric median of a data sample): aecore builds, saves and reloads
an encoder and a decoder as separate components, and a parameter shared
across them would not survive that. The model class is the same either way
(b_pre can be folded into b_enc); only the optimiser's path differs.

The training conventions are switches (docs/sae.md says why each exists):
``tied_init`` (W_enc = W_decᵀ at the start), ``bias_init`` (geometric
median, mean or zero), ``unit_norm`` (every direction kept at unit norm,
the gradient's component along it removed before the step) and
``dead_window`` (a latent is dead when it has not fired in that many
training samples). The decoder also counts L0 and firings for
``epoch_metrics`` and computes the evaluation figures of ``ae eval``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.components import ImageComponent
from aecore.config import param
from aecore.data import Dataset, TensorData
from aecore.hooks import hookimpl
from aecore_sae.median import data_centre

__all__ = ["SAEDecoder", "SAEDecoderConfig", "SAEEncoder", "SAEEncoderConfig", "shared_dictionary"]

BiasInit = Literal["median", "mean", "zero"]

#: Codes with at most this share of nonzero entries are decoded by gathering only those (in training).
SPARSE_DENSITY = 1 / 8


@dataclass(frozen=True)
class SAEEncoderConfig:
    activation: Literal["relu", "none"] = param(
        "relu", "relu: f = ReLU(pre-activation); none: leave the code to a regularizer (topk, jumprelu...)."
    )
    pre_bias: bool = param(True, "Subtract a learned pre-encoder bias b_pre from x before encoding.")
    bias_init: BiasInit = param(
        "median", "Start of b_pre and b_dec: geometric median of a data sample (Weiszfeld), mean, or zero."
    )
    median_sample: int = param(
        8192, "Training rows (seeded draw) the geometric median or mean is computed on.", minimum=1
    )
    tied_init: bool = param(True, "Start the encoder as the decoder's transpose: W_enc = W_decᵀ.")


@dataclass(frozen=True)
class SAEDecoderConfig:
    bias_init: BiasInit = param(
        "median", "Start of b_dec: geometric median of a data sample (Weiszfeld), mean, or zero."
    )
    median_sample: int = param(
        8192, "Training rows (seeded draw) the geometric median or mean is computed on.", minimum=1
    )
    tied_init: bool = param(True, "Start the dictionary as the encoder's transpose: W_dec = W_encᵀ.")
    unit_norm: bool = param(
        True,
        "Keep each dictionary direction at unit norm: its gradient loses the part along it before the "
        "step, and it is rescaled after.",
    )
    dead_window: int = param(
        1_000_000, "A latent is dead when it has not fired in this many training samples.", minimum=1
    )
    sparse_decode: bool = param(
        True, "In training, decode a sparse code by gathering its nonzero entries (same result, faster)."
    )


def shared_dictionary(latents: int, dim: int) -> Tensor:
    """A random dictionary of unit rows, the same for every caller at the same point of the run.

    Its generator is seeded from the global random state without drawing from
    it, so the encoder and the decoder, initialised one after the other from
    the same state (aecore calls ``initialise`` on each), get the same matrix
    without referring to each other: that is how ``tied_init`` ties them.
    """
    state = torch.random.get_rng_state().numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little") >> 1
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(latents, dim, generator=generator)
    return directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _unit_rows(weight: Tensor) -> Tensor:
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)


def without_parallel(grad: Tensor, weight: Tensor) -> Tensor:
    """``grad`` with each row's component along the same row of ``weight`` removed."""
    unit = _unit_rows(weight)
    return grad - (grad * unit).sum(dim=1, keepdim=True) * unit


class _RemoveParallel(torch.autograd.Function):
    """The identity on the dictionary; its backward removes each row's gradient along the row.

    Built into the graph rather than registered as a tensor hook, so it holds
    for copies of the model (hooks are not deep-copied) and before any
    gradient is averaged across processes.
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (weight,) = ctx.saved_tensors
        return without_parallel(grad, weight)


def sparse_entries(t: Tensor, density: float = SPARSE_DENSITY) -> tuple[Tensor, Tensor, Tensor] | None:
    """(rows, cols, values) of the nonzero entries of a 2-D ``t``, row by row; None when there are
    none or more than ``density`` of all entries (then a dense product is the cheaper one)."""
    flat = t.reshape(-1)
    where = flat.nonzero().squeeze(1)
    if where.numel() == 0 or where.numel() > density * flat.numel():
        return None
    width = t.shape[1]
    return where // width, where % width, flat.index_select(0, where)


def _offsets(sorted_bags: Tensor, bags: int) -> Tensor:
    """Start of each bag in a sorted list of bag numbers (what ``embedding_bag`` takes)."""
    counts = torch.bincount(sorted_bags, minlength=bags)
    return torch.cumsum(counts, 0) - counts


def _per_latent_sums(rows: Tensor, cols: Tensor, values: Tensor, source: Tensor, latents: int) -> Tensor:
    """Row j: Σ of v·source[r] over the entries (r, j, v): a (latents, d) gradient from sparse entries."""
    order = torch.argsort(cols, stable=True)
    return F.embedding_bag(
        rows.index_select(0, order),
        source,
        _offsets(cols.index_select(0, order), latents),
        mode="sum",
        per_sample_weights=values.index_select(0, order),
    )


def _zeros_take_no_gradient(z: Tensor) -> bool:
    """Whether the op that made ``z`` ignores the gradient at z's zero entries.

    True for a ReLU (its gradient is zero where its output is) and for a code
    scattered into zeros (TopK's and BatchTopK's ``scatter``/``index_put`` into
    ``zeros_like``: only the kept entries lead anywhere). Anything else, a
    JumpReLU among them (its threshold learns from the entries just below it),
    gets the dense gradient. The test is by autograd node, a whitelist: an op
    it does not know costs speed, never correctness.
    """
    node = z.grad_fn
    if node is None:
        return False
    kind = type(node).__name__
    if kind == "ReluBackward0":
        return True
    if kind in ("ScatterBackward0", "IndexPutBackward0"):
        return node.next_functions[0][0] is None  # the tensor written into needs no gradient: zeros
    return False


class _SparseCombine(torch.autograd.Function):
    """``z @ weight`` computed from z's nonzero entries only, with the same gradients.

    The product is ``embedding_bag`` over each row's nonzero latents, and the
    weight's gradient the same over each latent's rows, so both cost the
    number of nonzeros times d instead of batch × latents × d. The code's
    gradient is computed at the nonzero entries only when the op behind the
    code ignores the rest (:func:`_zeros_take_no_gradient`); otherwise it is
    the dense product (a JumpReLU's threshold learns from entries that are zero).
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        weight: Tensor,
        rows: Tensor,
        cols: Tensor,
        values: Tensor,
        project: bool,
        sparse_grad: bool,
    ) -> Tensor:
        out = F.embedding_bag(cols, weight, _offsets(rows, z.shape[0]), mode="sum", per_sample_weights=values)
        ctx.save_for_backward(weight, rows, cols, values)
        ctx.project, ctx.sparse_grad, ctx.code_shape = project, sparse_grad, tuple(z.shape)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        weight, rows, cols, values = ctx.saved_tensors
        grad = grad.contiguous()
        grad_z = grad_w = None
        if ctx.needs_input_grad[0]:
            if ctx.sparse_grad:
                at = (grad.index_select(0, rows) * weight.index_select(0, cols)).sum(dim=1)
                batch, width = ctx.code_shape
                flat = torch.zeros(batch * width, dtype=grad.dtype, device=grad.device)
                grad_z = flat.index_copy_(0, rows * width + cols, at).view(batch, width)
            else:
                grad_z = grad @ weight.T
        if ctx.needs_input_grad[1]:
            grad_w = _per_latent_sums(rows, cols, values, grad, weight.shape[0])
            if ctx.project:
                grad_w = without_parallel(grad_w, weight)
        return grad_z, grad_w, None, None, None, None, None


class _Encode(torch.autograd.Function):
    """(x − b_pre) W_encᵀ + b_enc, whose weight gradient uses only the nonzero entries of its gradient.

    Behind a TopK or BatchTopK code (or a ReLU that is mostly off) the
    gradient reaching the pre-activations is zero outside the kept latents,
    so the weight's gradient is gathered from those entries (``embedding_bag``),
    costing their number times d; a dense gradient takes the usual product.
    b_pre's gradient is −(Σ_rows grad) W_enc, one vector-matrix product; the
    input's gradient is computed only when the input needs one.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, pre_bias: Tensor | None) -> Tensor:
        centred = x if pre_bias is None else x - pre_bias
        ctx.save_for_backward(centred, weight)
        return torch.addmm(bias, centred, weight.T)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        centred, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            entries = sparse_entries(grad)
            if entries is None:
                grad_w = grad.T @ centred
            else:
                rows, cols, values = entries
                grad_w = _per_latent_sums(rows, cols, values, centred, weight.shape[0])
        total = grad.sum(dim=0) if ctx.needs_input_grad[2] or ctx.needs_input_grad[3] else None
        grad_b = total if ctx.needs_input_grad[2] else None
        grad_pre = -(total @ weight) if ctx.needs_input_grad[3] and total is not None else None
        return grad_x, grad_w, grad_b, grad_pre


class SAEEncoder(ImageComponent):
    """f = act(W_enc (x − b_pre) + b_enc), on flattened inputs."""

    Config = SAEEncoderConfig

    def __init__(self, config: SAEEncoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        dim = math.prod(self.input_shape)
        self.weight = nn.Parameter(torch.empty(latent_dim, dim))
        self.bias = nn.Parameter(torch.zeros(latent_dim))
        self.pre_bias = nn.Parameter(torch.zeros(dim)) if config.pre_bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default, until initialise

    def pre_activation(self, x: Tensor) -> Tensor:
        """W_enc (x − b_pre) + b_enc, before the activation."""
        x = x.flatten(1)
        if self.training and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return _Encode.apply(x, self.weight, self.bias, self.pre_bias)
        if self.pre_bias is not None:
            x = x - self.pre_bias
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.pre_activation(x)
        return F.relu(pre) if self.config.activation == "relu" else pre

    @torch.no_grad()
    def initialise(self, data: TensorData) -> None:
        """Tied start (W_enc = the shared dictionary) and b_pre at the data's centre (a fresh run only)."""
        if self.config.tied_init:
            self.weight.copy_(shared_dictionary(*self.weight.shape))
        if self.pre_bias is not None and self.config.bias_init != "zero":
            centre = data_centre(data, self.config.bias_init, self.config.median_sample)
            self.pre_bias.copy_(centre.to(self.pre_bias))


class SAEDecoder(ImageComponent):
    """x̂ = W_dec f + b_dec, with the SAE's training conventions and measures.

    In training it counts, per latent, the samples since it last fired
    (``since_fired``, a buffer saved with the model, so a resumed run and
    ``ae eval`` see the training window), and the epoch's L0.
    """

    Config = SAEDecoderConfig

    def __init__(self, config: SAEDecoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        dim = math.prod(self.input_shape)
        self.weight = nn.Parameter(torch.empty(latent_dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        with torch.no_grad():
            nn.init.normal_(self.weight)
            self.weight.copy_(_unit_rows(self.weight))
        self.register_buffer("since_fired", torch.zeros(latent_dim, dtype=torch.int64))
        self._reset_epoch()

    # -- the model ---------------------------------------------------------------------------------

    def forward(self, z: Tensor) -> Tensor:
        out = self._combine(z, observe=self.training) + self.bias
        return out.unflatten(1, self.input_shape)

    def directions(self, index: Tensor, values: Tensor) -> Tensor:
        """Σ_j values[:, j]·W_dec[:, index[:, j]] per row: a code given by its (B, m) latents and values,
        decoded without the bias (AuxK's ê). Nothing is counted as firing."""
        weight: Tensor = self.weight
        if self.config.unit_norm and weight.requires_grad and torch.is_grad_enabled():
            weight = _RemoveParallel.apply(weight)
        return F.embedding_bag(index, weight, mode="sum", per_sample_weights=values.to(weight.dtype))

    def _combine(self, z: Tensor, *, observe: bool) -> Tensor:
        weight: Tensor = self.weight
        project = self.config.unit_norm and weight.requires_grad and torch.is_grad_enabled()
        if self.training and self.config.sparse_decode and not torch.is_autocast_enabled(z.device.type):
            entries = sparse_entries(z.detach())
            if entries is not None:
                rows, cols, values = entries  # no gradient: z's comes from the backward, dense
                if observe:
                    self._observe(torch.bincount(cols, minlength=self.latent_dim), z.shape[0])
                sparse_grad = _zeros_take_no_gradient(z)
                return _SparseCombine.apply(z, weight, rows, cols, values, project, sparse_grad)
        if observe:
            self._observe(torch.count_nonzero(z.detach(), dim=0), z.shape[0])
        return z @ (_RemoveParallel.apply(weight) if project else weight)

    # -- the training conventions ------------------------------------------------------------------

    @torch.no_grad()
    def initialise(self, data: TensorData) -> None:
        """Tied start (W_dec = the shared dictionary, the encoder's transpose), b_dec at the data's centre."""
        if self.config.tied_init:
            self.weight.copy_(shared_dictionary(*self.weight.shape))
        if self.config.bias_init != "zero":
            centre = data_centre(data, self.config.bias_init, self.config.median_sample)
            self.bias.copy_(centre.to(self.bias))

    @hookimpl
    def ae_after_step(self, run: Any, model: nn.Module, epoch: int, step: int) -> None:
        """Back to unit-norm directions after each optimizer step (``unit_norm``)."""
        if self.config.unit_norm:
            self.renormalise_()

    @torch.no_grad()
    def renormalise_(self) -> None:
        """Rescale every dictionary direction to unit norm, in place."""
        self.weight.copy_(_unit_rows(self.weight))

    @torch.no_grad()
    def _observe(self, fired: Tensor, batch: int) -> None:
        self.since_fired.add_(batch).masked_fill_(fired > 0, 0)
        total = fired.sum()
        self._active = total if self._active is None else self._active + total
        self._samples += batch

    def _reset_epoch(self) -> None:
        self._active: Tensor | None = None
        self._samples = 0

    def dead_mask(self) -> Tensor:
        """Latents that have not fired in the last ``dead_window`` training samples."""
        return self.since_fired >= self.config.dead_window

    # -- measures -----------------------------------------------------------------------------------

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean L0 per training sample and the dead fraction under the window; then reset."""
        figures = {"sae_dead_fraction": float(self.dead_mask().float().mean())}
        if self._samples and self._active is not None:
            figures["sae_l0"] = float(self._active) / self._samples
        self._reset_epoch()
        return figures

    def eval_metrics(
        self,
        model: nn.Module,
        dataset: Dataset,
        *,
        device: torch.device | str = "cpu",
        out_dir: Path | None = None,
    ) -> Mapping[str, float]:
        """L0, FVU, dead fractions and, with a true dictionary, feature recovery (docs/sae.md)."""
        from aecore_sae.metrics import evaluate_sae

        return evaluate_sae(model, self, dataset, device=device, out_dir=out_dir)
