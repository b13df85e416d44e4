"""Choosing a training backend, and the optimizer a run gets without one.

A backend (an ``aecore.backends`` plugin, see :class:`aecore.protocols.Backend`)
prepares a model for a device and may supply the optimizer and the training
step. ``--backend auto`` takes the first installed backend, by name, whose
``devices`` include the run's device and whose ``probe`` passes; ``none``
trains on plain autograd; a name asks for that one. A backend that cannot
serve the run steps aside with one notice, and training goes on without it:
a backend never stops a run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from aecore import registry
from aecore.config import config_from_dict
from aecore.errors import Notice, PluginLoadError
from aecore.protocols import Backend

__all__ = ["BackendNotice", "adam", "choose_backend"]


class BackendNotice(Notice):
    """A backend stepped aside; training runs on plain autograd."""


def choose_backend(
    name: str, device: torch.device, params: Mapping[str, Any] | None = None
) -> tuple[Backend | None, str]:
    """The backend for this run and the name to record (``none`` when there is none).

    ``params`` (``--set backend.X=...``) build the chosen backend's ``Config``;
    a backend they do not fit is the user's error, not a reason to step aside.
    """
    if name == "none":
        return None, "none"
    if name != "auto":
        entry = registry.info("backend", name)
        return _try(entry, device, params)
    for entry in registry.every("backend"):
        try:
            cls = entry.load()
        except PluginLoadError as exc:
            registry.report_broken(entry, str(exc))
            continue  # the next one may serve
        if device.type not in getattr(cls, "devices", (device.type,)):
            continue
        backend, label = _try(entry, device, params)
        if backend is not None:
            return backend, label
    return None, "none"


def _try(
    entry: registry.PluginInfo, device: torch.device, params: Mapping[str, Any] | None
) -> tuple[Backend | None, str]:
    cls = entry.load()  # an explicitly named backend that cannot load is the user's error: it raises
    where = f"backend '{entry.name}' from {entry.dist} {entry.version}"
    devices = getattr(cls, "devices", None)
    if devices is not None and device.type not in devices:
        reason = f"it serves {', '.join(devices)}, not {device.type}"
    else:
        config = config_from_dict(cls.Config, dict(params or {}), owner="backend")
        try:
            backend = cls(config)
            with torch.random.fork_rng(devices=[]):  # a probe's test tensors must not move the run's seed
                reason = backend.probe(device)
        except Exception as exc:  # a backend must never stop a run
            reason = f"its probe failed ({type(exc).__name__}: {exc})"
        if reason is None:
            return backend, entry.qualified_name
    # Under auto only backends that serve the device get here: any reason is worth a notice.
    _notice(f"{where} steps aside: {reason}; training runs on plain autograd.")
    return None, "none"


_noticed: set[str] = set()


def _notice(message: str) -> None:
    if message not in _noticed:
        _noticed.add(message)
        warnings.warn(message, BackendNotice, stacklevel=4)


def adam(params: Iterable[torch.Tensor], *, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` with its fused kernel where this torch has one for these tensors, else foreach."""
    params = list(params)
    options: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    try:
        return torch.optim.Adam(params, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype without a fused kernel
        pass
    try:
        return torch.optim.Adam(params, foreach=True, **options)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, **options)
