"""Compose an encoder, a decoder and any regularizers into one model.

:func:`compose` is the single place where components meet: it builds them
through the registry, checks that their shapes fit with a dry run, and
records a :class:`ModelSpec` that checkpoints store and :func:`aecore.load`
rebuilds from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from aecore import registry
from aecore.config import config_from_dict, config_to_dict, params_of
from aecore.errors import ConfigError, ShapeError
from aecore.layers.chain import chain_of, run_modules

__all__ = ["Autoencoder", "ComponentSpec", "ModelSpec", "code_shape", "compose"]


@dataclass
class ComponentSpec:
    """Which component, from which distribution, with which parameters."""

    name: str
    dist: str
    version: str
    params: dict[str, Any]


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
            input_shape=tuple(int(s) for s in d["input_shape"]),
            latent_dim=int(d["latent_dim"]),
            encoder=ComponentSpec(**d["encoder"]),
            decoder=ComponentSpec(**d["decoder"]),
            regularizers=[ComponentSpec(**r) for r in d.get("regularizers", [])],
        )


class Autoencoder(nn.Module):
    """Encoder + decoder + regularizers, with the spec that rebuilds them."""

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
        z = self.encoder(x)
        for reg in self.regularizers.values():
            z = reg.transform_code(z)
        return z

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(
        self, x: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    ) -> Tensor | dict[str, Tensor]:
        """The reconstruction of ``x``; with ``loss_fn``, the training loss terms instead.

        Routing the loss through ``forward`` lets a DistributedDataParallel
        wrapper see the whole training computation.
        """
        if loss_fn is not None:
            return self.loss_terms(x, loss_fn)
        return self._reconstruct(x)

    def module_chain(self) -> list[nn.Module] | None:
        """The modules ``decode(encode(x))`` applies, in order, or None if it is more than a chain.

        It is a chain when both components are (:class:`aecore.layers.ModuleChain`)
        and no regularizer acts on the code.
        """
        if self.regularizers:
            return None
        encoder, decoder = chain_of(self.encoder), chain_of(self.decoder)
        if encoder is None or decoder is None:
            return None
        return [*encoder, *decoder]

    def _reconstruct(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``; as one chain where :meth:`module_chain` allows, which lets the
        two components' Linear layers fuse across the code. The result is the same to the bit."""
        chain = self.module_chain()
        if chain is not None:
            return run_modules(chain, x)
        return self.decode(self.encode(x))

    def loss_terms(self, x: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, Tensor]:
        """The reconstruction loss and each regularizer's weighted penalty, by name.

        In training mode regularizers may corrupt the input first; the clean
        ``x`` is always the target.
        """
        x_in = x
        if self.training:
            for reg in self.regularizers.values():
                x_in = reg.transform_input(x_in)
        if not self.regularizers:
            return {"recon": loss_fn(self._reconstruct(x_in), x)}
        z = self.encode(x_in)
        recon = self.decode(z)
        terms = {"recon": loss_fn(recon, x)}
        for name, reg in self.regularizers.items():
            terms[name] = reg.penalty(x_in, z, recon, self)
        return terms


def compose(
    encoder: str,
    decoder: str | None = None,
    regularizers: Sequence[str] = (),
    *,
    input_shape: Sequence[int],
    latent_dim: int,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Autoencoder:
    """Build an :class:`Autoencoder` from component names.

    ``params`` maps ``"encoder"``, ``"decoder"`` and regularizer names to
    parameter dicts (values may be strings, parsed as on the command line).
    When the decoder is the encoder's counterpart (same name, the default),
    it mirrors the encoder's parameters that it shares, unless they are set
    for the decoder explicitly.
    """
    params = {k: dict(v) for k, v in (params or {}).items()}
    input_shape = tuple(int(s) for s in input_shape)
    if latent_dim <= 0:
        raise ShapeError(f"latent size must be positive, got {latent_dim}; pass e.g. --latent-dim 32.")
    if not input_shape or any(s <= 0 for s in input_shape):
        raise ShapeError(f"input shape {input_shape} is not valid; every dimension must be positive.")
    unknown = set(params) - {"encoder", "decoder", *regularizers}
    if unknown:
        raise ConfigError(
            f"parameters given for '{sorted(unknown)[0]}', which is not a component of this model; "
            f"use encoder., decoder. or one of the regularizer names ({', '.join(regularizers) or 'none'})."
        )
    if len(set(regularizers)) != len(regularizers):
        raise ConfigError("a regularizer is listed twice; list each once and set its weight instead.")

    enc_info = registry.info("encoder", encoder)
    if decoder is None:
        counterparts = registry.find(enc_info.name)
        if not any(c.kind == "decoder" for c in counterparts):
            raise ConfigError(
                f"encoder '{encoder}' has no decoder of the same name; choose one with --decoder "
                f"(installed decoders: {', '.join(registry.names('decoder')) or 'none'})."
            )
        decoder = enc_info.name
    dec_info = registry.info("decoder", decoder)

    enc_params = params.get("encoder", {})
    dec_params = params.get("decoder", {})
    if dec_info.name == enc_info.name:
        shared = {p.name for p in params_of(dec_info.load().Config)}
        dec_params = {**{k: v for k, v in enc_params.items() if k in shared}, **dec_params}

    shape = {"input_shape": input_shape, "latent_dim": latent_dim}
    enc = _build(enc_info, enc_params, "encoder", **shape)
    dec = _build(dec_info, dec_params, "decoder", **shape)
    regs = {}
    for name in regularizers:
        reg_info = registry.info("regularizer", name)
        regs[reg_info.name] = _build(reg_info, params.get(name, {}), name, latent_dim=latent_dim)

    spec = ModelSpec(
        input_shape=input_shape,
        latent_dim=latent_dim,
        encoder=_spec(enc_info, enc),
        decoder=_spec(dec_info, dec),
        regularizers=[_spec(registry.info("regularizer", n), r) for n, r in regs.items()],
    )
    model = Autoencoder(enc, dec, regs, spec)
    _check_shapes(model)
    return model


def _build(info: registry.ComponentInfo, values: Mapping[str, Any], owner: str, **context: Any) -> nn.Module:
    cls = info.load()
    config = config_from_dict(cls.Config, values, owner=owner)
    return cls(config, **context)


def _spec(info: registry.ComponentInfo, component: Any) -> ComponentSpec:
    return ComponentSpec(info.name, info.dist, info.version, config_to_dict(component.config))


def code_shape(component: nn.Module) -> tuple[int, ...]:
    """The shape a component gives its code: ``(latent_dim,)`` unless it declares a spatial one."""
    return tuple(getattr(component, "code_shape", None) or (component.latent_dim,))


def _check_shapes(model: Autoencoder) -> None:
    """Dry-run two zero samples so a mismatch fails now, with names, not mid-training.

    Codes always travel flat, ``(N, latent_dim)``. An encoder or decoder with a
    spatial code (say 16×14×14) declares it as ``code_shape``; a flat partner
    accepts any code of the same size, but two spatial partners must agree.
    """
    spec = model.spec
    enc_code, dec_code = code_shape(model.encoder), code_shape(model.decoder)
    if len(enc_code) > 1 and len(dec_code) > 1 and enc_code != dec_code:
        raise ShapeError(
            f"encoder '{spec.encoder.name}' produces codes shaped {'×'.join(map(str, enc_code))} but "
            f"decoder '{spec.decoder.name}' expects {'×'.join(map(str, dec_code))}; give both the same "
            "channels and stages, or use a decoder with a flat code."
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(2, *spec.input_shape)
            try:
                z = model.encoder(x)
            except (RuntimeError, ValueError) as exc:
                raise ShapeError(
                    f"encoder '{spec.encoder.name}' cannot take input of shape {spec.input_shape}: {exc}"
                ) from None
            if tuple(z.shape) != (2, spec.latent_dim):
                raise ShapeError(
                    f"encoder '{spec.encoder.name}' produced codes of shape {tuple(z.shape[1:])}, "
                    f"but the model's latent size is {spec.latent_dim}."
                )
            try:
                out = model.decode(model.encode(x))
            except (RuntimeError, ValueError) as exc:
                raise ShapeError(
                    f"decoder '{spec.decoder.name}' cannot take codes of size {spec.latent_dim}: {exc}"
                ) from None
            if tuple(out.shape[1:]) != spec.input_shape:
                raise ShapeError(
                    f"decoder '{spec.decoder.name}' produced shape {tuple(out.shape[1:])}, "
                    f"but the input shape is {spec.input_shape}."
                )
    finally:
        model.train(was_training)
