"""The kinds of plugin aecore reads, their entry-point groups, and what a valid one looks like.

The checks here are structural and import nothing heavy: they run when a
plugin is first loaded, so a broken one is reported with its reason instead
of failing later. Behaviour (shapes, gradients) is what the conformance kit
in :mod:`aecore.testing` exercises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aecore.presets import Preset

__all__ = ["COMPONENT_KINDS", "KINDS", "Kind", "check"]


@dataclass(frozen=True)
class Kind:
    """One kind of plugin: its name, entry-point group and structural check."""

    name: str
    group: str
    summary: str
    check: Callable[[Any], list[str]]


def _class_with(*methods: str, module: bool = False) -> Callable[[Any], list[str]]:
    def check(obj: Any) -> list[str]:
        if not isinstance(obj, type):
            return [f"the entry point must name a class, got {type(obj).__name__}"]
        problems = []
        config = getattr(obj, "Config", None)
        if config is None or not dataclasses.is_dataclass(config):
            problems.append("it has no 'Config' dataclass declaring its parameters")
        problems += [f"it has no '{m}' method" for m in methods if not callable(getattr(obj, m, None))]
        if module and not any(c.__name__ == "Module" for c in obj.__mro__):
            problems.append("it is not a torch.nn.Module")
        return problems

    return check


def _anything(obj: Any) -> list[str]:
    return []  # hooks are validated against the hook specification when registered


def _preset(obj: Any) -> list[str]:
    return [] if isinstance(obj, Preset) else [f"it is a {type(obj).__name__}, not an aecore Preset"]


def _callable(obj: Any) -> list[str]:
    return [] if callable(obj) else [f"it is a {type(obj).__name__}, which cannot be called"]


def _loss(obj: Any) -> list[str]:
    if isinstance(obj, type):  # a class with parameters, built from its Config
        return _class_with("__call__")(obj)
    return _callable(obj)


_KINDS = (
    Kind("encoder", "aecore.encoders", "maps inputs to codes", _class_with("forward", module=True)),
    Kind("decoder", "aecore.decoders", "maps codes back to inputs", _class_with("forward", module=True)),
    Kind(
        "regularizer",
        "aecore.regularizers",
        "adds a penalty and may transform the input or the code",
        _class_with("penalty", "transform_input", "transform_code", module=True),
    ),
    Kind("trainer", "aecore.trainers", "fits a composed model", _class_with("fit")),
    Kind("hook", "aecore.hooks", "reacts to training events", _anything),
    Kind("preset", "aecore.presets", "a named model recipe", _preset),
    Kind("command", "aecore.commands", "an 'ae' subcommand", _callable),
    Kind("dataset", "aecore.datasets", "a data source for --data", _class_with("load")),
    Kind("loss", "aecore.losses", "a reconstruction loss for --loss", _loss),
    Kind(
        "backend",
        "aecore.backends",
        "prepares a model for a device and may supply the step",
        _class_with("probe", "prepare", "optimizer", "step"),
    ),
)

#: Kind name -> Kind, in the order listings show them.
KINDS: dict[str, Kind] = {k.name: k for k in _KINDS}
#: The kinds built from a Config and composed into a model or a run.
COMPONENT_KINDS: tuple[str, ...] = ("encoder", "decoder", "regularizer", "trainer")


def check(kind: str, obj: Any) -> list[str]:
    """What stops ``obj`` from being used as a plugin of ``kind`` (empty if nothing)."""
    return KINDS[kind].check(obj)
