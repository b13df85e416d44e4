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

__all__ = ["Autoencoder", "ComponentSpec", "LossFn", "ModelSpec", "code_shape"]

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

    def encode(self, x: Tensor) -> Tensor:
        """The code of ``x``, after every regularizer's ``transform_code``."""
        z = self.encoder(x)
        for reg in self.regularizers.values():
            z = reg.transform_code(z)
        return z

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
        ``x`` is always the target.
        """
        x_in = x
        if self.training:
            for reg in self.regularizers.values():
                x_in = reg.transform_input(x_in)
        z = self.encode(x_in)
        recon = self.decode(z)
        terms = {"recon": loss_fn(recon, x)}
        for name, reg in self.regularizers.items():
            terms[name] = reg.penalty(x_in, z, recon, self)
        return terms


def code_shape(component: nn.Module) -> tuple[int, ...]:
    """The shape a component gives its code: ``(latent_dim,)`` unless it declares a spatial one."""
    return tuple(getattr(component, "code_shape", None) or (component.latent_dim,))
