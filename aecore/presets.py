"""Named recipes: a full set of component names and parameters under one name.

Presets are published by plugins through the ``aecore.presets`` entry-point
group, like components; the entry point names a :class:`Preset` object. The
MLP plugin publishes ``simple``, ``deep`` and the other fully connected
reference models; the conv plugin publishes ``conv-simple`` and friends.
``ae train --preset deep`` starts from a preset, and explicit options and
``--set`` values override it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aecore.errors import PluginLoadError, UnknownComponentError, suggest
from aecore.registry import ComponentInfo, entry_point_infos

__all__ = ["PRESETS_GROUP", "Preset", "get_preset", "list_presets", "merge_preset"]

PRESETS_GROUP = "aecore.presets"


@dataclass(frozen=True)
class Preset:
    """A reproducible model recipe.

    ``params`` maps ``encoder``, ``decoder``, ``trainer`` and regularizer
    names to parameter dicts, exactly as :func:`aecore.train` takes them.
    ``reference_params`` is the parameter count the recipe is known to give
    on ``input_shape``; a test holds every preset to it.
    """

    encoder: str
    latent_dim: int
    decoder: str | None = None
    regularizers: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    input_shape: tuple[int, ...] = (1, 28, 28)
    reference_params: int | None = None

    @property
    def compression_ratio(self) -> float:
        return math.prod(self.input_shape) / self.latent_dim

    def build(self) -> Any:
        """The untrained model on ``input_shape`` (imports the components)."""
        from aecore.model import compose

        component_params = {k: v for k, v in self.params.items() if k != "trainer"}
        return compose(
            self.encoder,
            self.decoder,
            self.regularizers,
            input_shape=self.input_shape,
            latent_dim=self.latent_dim,
            params=component_params,
        )


def list_presets() -> list[ComponentInfo]:
    """Preset entry points, read from metadata without importing them."""
    return list(entry_point_infos(PRESETS_GROUP))


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``dist:name`` picks one of several)."""
    dist, _, short = name.rpartition(":")
    entries = list_presets()
    matches = [e for e in entries if e.name == short and (not dist or e.dist == dist)]
    if not matches:
        names = sorted({e.name for e in entries})
        raise UnknownComponentError(
            f"unknown preset '{name}'.{suggest(short, names)} "
            f"Available presets: {', '.join(names) or 'none'} (see 'ae presets')."
        )
    if len(matches) > 1:
        choices = " or ".join(f"'{e.qualified_name}'" for e in matches)
        raise UnknownComponentError(f"preset '{short}' is published twice; name one: {choices}.")
    preset = matches[0].load()
    if not isinstance(preset, Preset):
        raise PluginLoadError(
            f"preset '{short}' from {matches[0].dist} is a {type(preset).__name__}, not an aecore Preset."
        )
    return preset


def merge_preset(
    preset: Preset,
    *,
    encoder: str | None,
    decoder: str | None,
    regularizers: tuple[str, ...] | list[str],
    latent_dim: int | None,
    params: Mapping[str, Mapping[str, Any]],
) -> tuple[str, str | None, list[str], int, dict[str, dict[str, Any]]]:
    """Combine a preset with explicit choices; explicit values win, regularizers add up.

    The preset's ``trainer`` settings are left out: :func:`aecore.train`
    applies those that the chosen trainer accepts.
    """
    from aecore.errors import ConfigError

    for flag, value, preset_value in (
        ("--encoder", encoder, preset.encoder),
        ("--decoder", decoder, preset.decoder),
    ):
        if value is not None and value != preset_value:
            raise ConfigError(
                f"the preset already chooses {flag} {preset_value}; drop {flag} {value} or the preset."
            )
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in preset.params.items() if k != "trainer"}
    for target, values in params.items():
        merged.setdefault(target, {}).update(values)
    regs = list(preset.regularizers) + [r for r in regularizers if r not in preset.regularizers]
    return preset.encoder, preset.decoder, regs, latent_dim or preset.latent_dim, merged
