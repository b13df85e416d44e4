"""The composed model: encoder + decoder + regularizers, and the spec that rebuilds it.

:func:`aecore.compose` builds an :class:`Autoencoder` from names; this module
holds only the model itself, so that the contracts in :mod:`aecore.protocols`
can name it without depending on the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["Autoencoder", "ComponentSpec", "LossFn", "ModelSpec", "code_shape", "split_code"]

#: A reconstruction loss: ``loss(recon, target)``, averaged to a 0-d tensor.
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ComponentSpec:
    """Which component, from which distribution, with which parameters."""

    name: str
    dist: str
    version: str
    params: dict[str, Any]

    @property
    def qualified_name(self) -> str:
        """``dist:name``: the form that picks this very plugin even when another publishes the name."""
        return f"{self.dist}:{self.name}"


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture."""

    input_shape: tuple[int, ...]
    latent_dim: int
    encoder: ComponentSpec
    decoder: ComponentSpec
    regularizers: list[ComponentSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        return cls(
            input_shape=tuple(d["input_shape"]),
            latent_dim=d["latent_dim"],
            encoder=ComponentSpec(**d["encoder"]),
            decoder=ComponentSpec(**d["decoder"]),
            regularizers=[ComponentSpec(**r) for r in d.get("regularizers", [])],
        )


class Autoencoder(nn.Module):
    """Encoder + decoder + regularizers, with the spec that rebuilds them.

    ``model(x)`` is the reconstruction; ``model(x, loss_fn)`` returns the
    training loss terms by name (``recon`` and one per regularizer), so that
    a DistributedDataParallel wrapper sees the whole training computation.
    A model without regularizers has exactly one term,
    ``{"recon": loss_fn(model(x), x)}``: backends that compute a step
    themselves rely on that.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        regularizers: Mapping[str, nn.Module],
        spec: ModelSpec,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.regularizers = nn.ModuleDict(dict(regularizers))
        self.spec = spec
        self.metadata: dict[str, Any] = {}  # a loaded checkpoint's description

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    @property
    def compression_ratio(self) -> float:
        """Input size over code size."""
        return math.prod(self.input_shape) / self.latent_dim

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parts(self) -> list[tuple[str, nn.Module]]:
        """The components by role: ``encoder``, ``decoder``, then each regularizer by name.

        The optional methods a component may define (``epoch_metrics``,
        ``eval_metrics``, ``initialise``, hook implementations) are looked up
        on these.
        """
        return [("encoder", self.encoder), ("decoder", self.decoder), *self.regularizers.items()]

    def epoch_metrics(self) -> dict[str, float]:
        """What each component's optional ``epoch_metrics()`` reports for the epoch just trained."""
        figures: dict[str, float] = {}
        for name, part in self.parts():
            method = getattr(part, "epoch_metrics", None)
            if callable(method):
                figures.update(_figures(method(), f"{name}.epoch_metrics()"))
        return figures

    def encode(self, x: Tensor) -> Tensor:
        """The code of ``x``, after every regularizer's ``transform_code``."""
        return self.encode_with_aux(x)[0]

    def encode_with_aux(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The code of ``x`` and, by regularizer name, what each ``transform_code`` returned beside it.

        A regularizer whose ``transform_code`` returns a plain tensor has no
        entry; one that returns ``(code, aux)`` has ``aux``, which its
        ``penalty`` then receives (the quantiser's codebook vectors, the
        Gaussian's mean and log-variance).
        """
        z = self.encoder(x)
        aux: dict[str, Any] = {}
        for name, reg in self.regularizers.items():
            z, extra, given = split_code(reg.transform_code(z))
            if given:
                aux[name] = extra
        return z, aux

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, loss_fn: LossFn | None = None) -> Tensor | dict[str, Tensor]:
        """The reconstruction of ``x``; with ``loss_fn``, the training loss terms instead."""
        if loss_fn is not None:
            return self.loss_terms(x, loss_fn)
        return self.decode(self.encode(x))

    def loss_terms(self, x: Tensor, loss_fn: LossFn) -> dict[str, Tensor]:
        """The reconstruction loss and each regularizer's weighted penalty, by name.

        In training mode regularizers may corrupt the input first; the clean
        ``x`` is always the target. Each penalty gets the encoder's input, the
        code the decoder received (after every ``transform_code``), the
        reconstruction and the model, plus ``aux=`` when its own
        ``transform_code`` returned ``(code, aux)``.
        """
        x_in = x
        if self.training:
            for reg in self.regularizers.values():
                x_in = reg.transform_input(x_in)
        z, aux = self.encode_with_aux(x_in)
        recon = self.decode(z)
        terms = {"recon": loss_fn(recon, x)}
        for name, reg in self.regularizers.items():
            if name in aux:
                terms[name] = reg.penalty(x_in, z, recon, self, aux=aux[name])
            else:
                terms[name] = reg.penalty(x_in, z, recon, self)
        return terms


def split_code(result: Any) -> tuple[Tensor, Any, bool]:
    """``transform_code``'s result as (code, aux, whether an aux was given).

    A transform returns either the new code or a pair ``(code, aux)``; a
    tensor is never a pair, so the two cannot be confused.
    """
    if isinstance(result, tuple):
        if len(result) != 2:
            raise TypeError(f"transform_code must return a code or (code, aux), got a {len(result)}-tuple")
        return result[0], result[1], True
    return result, None, False


def code_shape(component: nn.Module) -> tuple[int, ...]:
    """The shape a component gives its code: ``(latent_dim,)`` unless it declares a spatial one."""
    return tuple(getattr(component, "code_shape", None) or (component.latent_dim,))


def _figures(values: Any, where: str) -> dict[str, float]:
    """``values`` as a table of named floats, or a TypeError naming ``where``."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{where} returned {type(values).__name__}, not a table of figures")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"{where} returned a figure named {key!r}, not a string")
        out[key] = float(value.item() if isinstance(value, Tensor) else value)
    return out
