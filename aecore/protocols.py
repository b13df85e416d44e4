"""The four component contracts: Encoder, Decoder, Regularizer, Trainer.

These are structural (:class:`typing.Protocol`): a plugin conforms by shape,
not by inheriting from aecore. Every component class also carries a
``Config`` dataclass (see :mod:`aecore.config`) and is constructed as::

    Encoder(config, *, input_shape=(1, 28, 28), latent_dim=32)
    Decoder(config, *, input_shape=(1, 28, 28), latent_dim=32)
    Regularizer(config, *, latent_dim=32)
    Trainer(config)

Encoders, decoders and regularizers are ``torch.nn.Module`` subclasses so
their weights travel in the checkpoint. This module does not import torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor, nn

    from aecore.data import TensorData
    from aecore.model import Autoencoder
    from aecore.training.context import RunContext

__all__ = ["Decoder", "Encoder", "Regularizer", "Trainer", "check_component_class"]


@runtime_checkable
class Encoder(Protocol):
    """Maps a batch ``(N, *input_shape)`` to codes ``(N, latent_dim)``."""

    config: Any
    input_shape: tuple[int, ...]
    latent_dim: int

    def forward(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """Maps codes ``(N, latent_dim)`` back to ``(N, *input_shape)``."""

    config: Any
    input_shape: tuple[int, ...]
    latent_dim: int

    def forward(self, z: Tensor) -> Tensor: ...


@runtime_checkable
class Regularizer(Protocol):
    """Adds a named penalty term to the loss, and may reshape the input or code.

    ``penalty`` receives the (possibly corrupted) encoder input, the codes,
    the reconstruction and the whole model; it returns a scalar already
    multiplied by the regularizer's weight. ``transform_input`` runs before
    encoding in training only (denoising lives here; the clean batch stays
    the target). ``transform_code`` runs between encoder and decoder, in
    training and evaluation (TopK and variational codes live here).
    """

    config: Any

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor: ...

    def transform_input(self, x: Tensor) -> Tensor: ...

    def transform_code(self, z: Tensor) -> Tensor: ...


@runtime_checkable
class Trainer(Protocol):
    """Fits a composed model on training data, watching validation data.

    A trainer may also define ``check(model) -> None``, raising
    :class:`aecore.errors.ConfigError` for a model it cannot train; it is
    called before the run directory is created.
    """

    config: Any

    def fit(
        self, model: Autoencoder, train: TensorData, val: TensorData, run: RunContext
    ) -> Mapping[str, float]: ...


_PROTOCOLS: dict[str, type] = {
    "encoder": Encoder,
    "decoder": Decoder,
    "regularizer": Regularizer,
    "trainer": Trainer,
}
_METHODS: dict[str, tuple[str, ...]] = {
    "encoder": ("forward",),
    "decoder": ("forward",),
    "regularizer": ("penalty", "transform_input", "transform_code"),
    "trainer": ("fit",),
}


def check_component_class(kind: str, cls: Any) -> list[str]:
    """Problems that stop ``cls`` from being used as a ``kind`` component (empty if none).

    This is the static check done when a plugin is loaded; the conformance
    tests in ``tests/`` exercise the behaviour (shapes, gradients).
    """
    problems = []
    if not isinstance(cls, type):
        return [f"entry point must name a class, got {type(cls).__name__}"]
    config = getattr(cls, "Config", None)
    if config is None or not dataclasses.is_dataclass(config):
        problems.append("it has no 'Config' dataclass declaring its parameters")
    for method in _METHODS[kind]:
        if not callable(getattr(cls, method, None)):
            problems.append(f"it has no '{method}' method")
    if kind != "trainer" and not any(c.__name__ == "Module" for c in cls.__mro__):
        problems.append("it is not a torch.nn.Module")
    return problems


def protocol_for(kind: str) -> type:
    """The Protocol class for a component kind."""
    return _PROTOCOLS[kind]
