"""Compose an encoder, a decoder and any regularizers into one model, by name.

:func:`compose` is the single place where components meet: it builds them
through the registry, checks that their shapes fit with a dry run, and
records a :class:`~aecore.model.ModelSpec` that checkpoints store and
:func:`aecore.load` rebuilds from.

Before anything is allocated, the components are built on torch's ``meta``
device (shapes, no memory) and their parameters and buffers counted: a model
of more than :data:`MAX_ELEMENTS` values (2**32 by default, 16 GB as
float32; ``AECORE_MAX_MODEL_ELEMENTS`` sets another bound) is refused in one
line naming the size settings, instead of failing to allocate. Checkpoints
are rebuilt through :func:`compose`, so loading one is bounded the same way.
A component that cannot be built on ``meta`` is built for real, unbounded.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from aecore import registry
from aecore.config import config_from_dict, config_to_dict, params_of
from aecore.errors import ConfigError, ShapeError
from aecore.model import Autoencoder, ComponentSpec, ModelSpec, code_shape
from aecore.presets import Preset

__all__ = ["MAX_ELEMENTS", "MAX_ELEMENTS_ENV", "compose", "compose_preset", "max_elements"]

#: The most parameter and buffer values a composed model may hold, unless the environment says otherwise.
MAX_ELEMENTS = 2**32
MAX_ELEMENTS_ENV = "AECORE_MAX_MODEL_ELEMENTS"
_INT64_MAX = 2**63 - 1


def compose(
    encoder: str,
    decoder: str | None = None,
    regularizers: Sequence[str] = (),
    *,
    input_shape: Sequence[int],
    latent_dim: int,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Autoencoder:
    """Build an :class:`~aecore.model.Autoencoder` from component names.

    Names may be qualified (``aecore-conv:conv``). ``params`` maps
    ``"encoder"``, ``"decoder"`` and regularizer names to parameter dicts
    (values may be strings, parsed as on the command line). When the decoder
    is the encoder's counterpart (same name, the default), it mirrors the
    encoder's parameters that it shares, unless they are set for the
    decoder explicitly.
    """
    params = {k: dict(v) for k, v in (params or {}).items()}
    input_shape = tuple(int(s) for s in input_shape)
    if latent_dim <= 0:
        raise ShapeError(f"latent size must be positive, got {latent_dim}; pass e.g. --latent-dim 32.")
    if not input_shape or any(s <= 0 for s in input_shape):
        raise ShapeError(f"input shape {input_shape} is not valid; every dimension must be positive.")
    limit = max_elements()
    if latent_dim > limit:
        raise ShapeError(
            f"latent size {latent_dim} is more than the {limit:,} values a model may hold "
            f"({MAX_ELEMENTS_ENV} sets the bound); pass e.g. --latent-dim 32."
        )
    if math.prod(input_shape) > limit:
        raise ShapeError(
            f"input shape {_shape(input_shape)} has more than the {limit:,} values a model may take "
            f"({MAX_ELEMENTS_ENV} sets the bound); use smaller samples."
        )
    reg_infos = [registry.info("regularizer", r) for r in regularizers]
    reg_names = [r.name for r in reg_infos]
    if len(set(reg_names)) != len(reg_names):
        raise ConfigError("a regularizer is listed twice; list each once and set its weight instead.")
    unknown = set(params) - {"encoder", "decoder", *reg_names}
    if unknown:
        raise ConfigError(
            f"parameters given for '{sorted(unknown)[0]}', which is not a component of this model; "
            f"use encoder., decoder. or one of the regularizer names ({', '.join(reg_names) or 'none'})."
        )

    enc_info = registry.info("encoder", encoder)
    if decoder is None:
        if not any(c.name == enc_info.name for c in registry.every("decoder")):
            raise ConfigError(
                f"encoder '{encoder}' has no decoder of the same name; choose one with --decoder "
                f"(installed decoders: {', '.join(registry.names('decoder')) or 'none'})."
            )
        decoder = enc_info.name if not _qualified(encoder) else f"{enc_info.dist}:{enc_info.name}"
    dec_info = registry.info("decoder", decoder)

    enc_params = params.get("encoder", {})
    dec_params = params.get("decoder", {})
    if dec_info.name == enc_info.name:
        shared = {p.name for p in params_of(dec_info.load().Config)}
        dec_params = {**{k: v for k, v in enc_params.items() if k in shared}, **dec_params}

    shape = {"input_shape": input_shape, "latent_dim": latent_dim}
    enc_part = _Part(enc_info, enc_params, "encoder", shape)
    wants_shape = [_takes_code_shape(i) for i in reg_infos]
    code = enc_part.code_shape() if any(wants_shape) else (latent_dim,)
    contexts = [{"latent_dim": latent_dim, **({"code_shape": code} if w else {})} for w in wants_shape]
    parts = [
        enc_part,
        _Part(dec_info, dec_params, "decoder", shape),
        *(_Part(i, params.get(i.name, {}), i.name, c) for i, c in zip(reg_infos, contexts, strict=True)),
    ]
    _check_size(parts, input_shape, latent_dim, limit)
    enc, dec, *reg_modules = (part.build() for part in parts)
    regs = {i.name: m for i, m in zip(reg_infos, reg_modules, strict=True)}
    spec = ModelSpec(
        input_shape=input_shape,
        latent_dim=latent_dim,
        encoder=_spec(enc_info, enc),
        decoder=_spec(dec_info, dec),
        regularizers=[_spec(i, regs[i.name]) for i in reg_infos],
    )
    model = Autoencoder(enc, dec, regs, spec)
    _check_shapes(model)
    return model


def compose_preset(preset: Preset) -> Autoencoder:
    """The untrained model a preset describes, on the preset's ``input_shape``."""
    return compose(
        preset.encoder,
        preset.decoder,
        preset.regularizers,
        input_shape=preset.input_shape,
        latent_dim=preset.latent_dim,
        params=preset.component_params,
    )


def _qualified(name: str) -> bool:
    return ":" in name


def max_elements() -> int:
    """The most parameter and buffer values a model may hold: ``$AECORE_MAX_MODEL_ELEMENTS``, else 2**32."""
    text = os.environ.get(MAX_ELEMENTS_ENV, "").strip()
    if not text:
        return MAX_ELEMENTS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1 <= value <= _INT64_MAX and value == int(value)):
        raise ConfigError(
            f"{MAX_ELEMENTS_ENV}={text} is not a count of values; set a whole number such as 1e10, "
            "or unset it for the default (2**32)."
        )
    return int(value)


class _Part:
    """One component to build: its plugin, validated config and the shape context it is built in."""

    def __init__(
        self, info: registry.PluginInfo, values: Mapping[str, Any], owner: str, context: dict
    ) -> None:
        self.info, self.owner, self.context = info, owner, context
        self.cls = info.load()
        self.config = config_from_dict(self.cls.Config, values, owner=owner)
        self.meta_failed = False

    def count(self) -> tuple[int, int] | None:
        """(values, bytes) of its parameters and buffers, built on the meta device; None if it cannot be."""
        try:
            with torch.device("meta"):
                module = self.cls(self.config, **self.context)
            tensors = [*module.parameters(), *module.buffers()]
            return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)
        except Exception:  # a plugin may do anything in __init__, or be lazy: built for real, unbounded
            self.meta_failed = True
            return None

    def code_shape(self) -> tuple[int, ...]:
        """The shape of the code this (encoder) part gives, from a build on the meta device."""
        latent = int(self.context.get("latent_dim", 0))
        try:
            with torch.device("meta"):
                module = self.cls(self.config, **self.context)
        except Exception:  # refused or lazy: built for real later, where its own error speaks
            return (latent,)
        return code_shape(module)

    def build(self) -> nn.Module:
        try:
            return self.cls(self.config, **self.context)
        except (RuntimeError, MemoryError) as exc:
            if not self.meta_failed:
                raise
            # The sizes overflowed even the meta device: say which settings, not torch's allocator.
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"{self.owner} '{self.info.name}' could not be built with {self.settings()} ({detail}); "
                "choose smaller sizes."
            ) from None

    def settings(self) -> str:
        """Its whole-number settings (the ones that size a network), e.g. ``hidden=512,256``."""
        values = {
            k: v
            for k, v in config_to_dict(self.config).items()
            if _whole(v) or (isinstance(v, list) and v and all(map(_whole, v)))
        }
        shown = ", ".join(
            f"{self.owner}.{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in values.items()
        )
        return shown or f"{self.owner} defaults"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def _takes_code_shape(info: registry.PluginInfo) -> bool:
    """Whether a regularizer's constructor takes ``code_shape``: the encoder's code shape (C×H×W for
    a spatial code), beside ``latent_dim``."""
    try:
        return "code_shape" in inspect.signature(info.load()).parameters
    except (TypeError, ValueError):
        return False


def _check_size(parts: list[_Part], input_shape: tuple[int, ...], latent_dim: int, limit: int) -> None:
    """Refuse, before allocating, a model of more than ``limit`` values (see the module doc)."""
    counts = [(part, part.count()) for part in parts]
    known = [(part, c) for part, c in counts if c is not None]
    total = sum(c[0] for _, c in known)
    if total <= limit:
        return
    size = sum(c[1] for _, c in known)
    largest = sorted(known, key=lambda pc: -pc[1][0])
    each = "; ".join(
        f"{part.owner} '{part.info.name}' {c[0]:,} ({part.settings()})" for part, c in largest if c[0]
    )
    raise ConfigError(
        f"the model would hold {total:,} parameter and buffer values ({size / 1e9:,.1f} GB), more than "
        f"the {limit:,} allowed ({MAX_ELEMENTS_ENV} sets the bound): {each}; with latent_dim={latent_dim}, "
        f"input_shape={_shape(input_shape)}. Choose smaller sizes."
    )


def _spec(info: registry.PluginInfo, component: Any) -> ComponentSpec:
    return ComponentSpec(info.name, info.dist, info.version, config_to_dict(component.config))


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
