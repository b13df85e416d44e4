"""Compose an encoder, a decoder and any regularizers into one model, by name.

:func:`compose` is the single place where components meet: it builds them
through the registry, checks that their shapes fit with a dry run, and
records a :class:`~aecore.model.ModelSpec` that checkpoints store and
:func:`aecore.load` rebuilds from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from aecore import registry
from aecore.config import config_from_dict, config_to_dict, params_of
from aecore.errors import ConfigError, ShapeError
from aecore.model import Autoencoder, ComponentSpec, ModelSpec, code_shape
from aecore.presets import Preset

__all__ = ["compose", "compose_preset"]


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
    enc = _build(enc_info, enc_params, "encoder", **shape)
    dec = _build(dec_info, dec_params, "decoder", **shape)
    regs = {i.name: _build(i, params.get(i.name, {}), i.name, latent_dim=latent_dim) for i in reg_infos}
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


def _build(info: registry.PluginInfo, values: Mapping[str, Any], owner: str, **context: Any) -> nn.Module:
    cls = info.load()
    config = config_from_dict(cls.Config, values, owner=owner)
    return cls(config, **context)


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
