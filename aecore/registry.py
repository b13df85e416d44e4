"""Find, list, look up and build components by name.

Components are published through entry points in four groups::

    aecore.encoders   aecore.decoders   aecore.regularizers   aecore.trainers

Listing reads entry-point metadata only: no plugin module is imported until a
component is first used, so ``ae plugins list`` stays fast and a plugin that
fails to import breaks only itself. The scan happens once per process;
:func:`refresh` repeats it (tests and long-lived processes that install
plugins at run time need that).

Names may be qualified by their distribution, ``aecore-conv:conv``, to pick
one when two distributions publish the same name.

Two environment variables narrow discovery, in the manner of pytest:
``AECORE_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only aecore's own built-ins, and
``AECORE_PLUGINS=aecore-mlp,aecore-conv`` keeps only the listed
distributions (plus the built-ins).

A plugin that fails to load is remembered in ``<cache dir>/plugin-status.json``
(until it loads again), so ``ae plugins list`` can show it as broken without
importing anything.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aecore.entry_points import read_entry_points
from aecore.errors import (
    AmbiguousComponentError,
    PluginLoadError,
    UnknownComponentError,
    suggest,
)

__all__ = [
    "GROUPS",
    "KINDS",
    "ComponentInfo",
    "build",
    "find",
    "get",
    "info",
    "list_components",
    "refresh",
]

#: Component kind -> entry-point group.
GROUPS: dict[str, str] = {
    "encoder": "aecore.encoders",
    "decoder": "aecore.decoders",
    "regularizer": "aecore.regularizers",
    "trainer": "aecore.trainers",
}
KINDS: tuple[str, ...] = tuple(GROUPS)
CORE_DIST = "aecore"
DISABLE_ENV = "AECORE_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "AECORE_PLUGINS"
HOOKS_GROUP = "aecore.hooks"
#: Other entry-point groups aecore reads (not components): group -> kind label.
OTHER_GROUPS: dict[str, str] = {HOOKS_GROUP: "hook", "aecore.presets": "preset"}


class PluginWarning(UserWarning):
    """A plugin could not be loaded; everything else keeps working."""


@dataclass(frozen=True)
class ComponentInfo:
    """What the entry-point metadata says about one component, read without importing it."""

    kind: str
    name: str
    target: str
    dist: str
    version: str

    @property
    def qualified_name(self) -> str:
        return f"{self.dist}:{self.name}"

    def load(self) -> Any:
        """Import the component's object. Failures raise :class:`PluginLoadError`."""
        return _load(self)


def list_components(kind: str | None = None, pattern: str = "*") -> list[ComponentInfo]:
    """Components of one kind (or all kinds) whose name matches a shell-style ``pattern``.

    >>> [c.name for c in list_components("encoder", "c*")]  # doctest: +SKIP
    ['conv']
    """
    kinds = KINDS if kind is None else (_check_kind(kind),)
    return [
        c
        for k in kinds
        for c in _scan().get(GROUPS[k], ())
        if fnmatch.fnmatchcase(c.name, pattern) or fnmatch.fnmatchcase(c.qualified_name, pattern)
    ]


def info(kind: str, name: str) -> ComponentInfo:
    """The metadata of one component; raises for unknown or ambiguous names."""
    _check_kind(kind)
    dist, _, short = name.rpartition(":")
    entries = _scan().get(GROUPS[kind], ())
    matches = [c for c in entries if c.name == short and (not dist or c.dist == dist)]
    if not matches:
        installed = ", ".join(sorted({c.name for c in entries})) or "none"
        raise UnknownComponentError(
            f"unknown {kind} '{name}'.{suggest(short, (c.name for c in entries))} "
            f"Installed {kind}s: {installed} (see 'ae plugins list')."
        )
    if len(matches) > 1:
        choices = " or ".join(f"'{c.qualified_name}'" for c in matches)
        raise AmbiguousComponentError(
            f"{kind} '{short}' is provided by {len(matches)} distributions; name one explicitly: {choices}."
        )
    return matches[0]


def get(kind: str, name: str) -> Any:
    """The component class registered as ``name`` for ``kind`` (imports it on first use)."""
    return info(kind, name).load()


def find(name: str) -> list[ComponentInfo]:
    """Every component, of any kind, registered under ``name`` (qualified or not)."""
    dist, _, short = name.rpartition(":")
    return [c for c in list_components() if c.name == short and (not dist or c.dist == dist)]


def build(kind: str, name: str, params: dict[str, Any] | None = None, **context: Any) -> Any:
    """Build a component from its name and parameters.

    ``params`` are validated against the component's ``Config`` (strings are
    parsed as on the command line); ``context`` carries what the component
    needs from its surroundings, such as ``input_shape`` and ``latent_dim``.
    """
    from aecore.config import config_from_dict

    cls = get(kind, name)
    config = config_from_dict(cls.Config, params or {}, owner=name)
    return cls(config, **context)


def refresh() -> None:
    """Forget the entry-point scan and loaded objects (after installing plugins at run time)."""
    _scan.cache_clear()
    _loaded.clear()
    _warned.clear()
    importlib.invalidate_caches()


# -- internals ---------------------------------------------------------------

_loaded: dict[ComponentInfo, Any] = {}
_warned: set[ComponentInfo] = set()


def _check_kind(kind: str) -> str:
    if kind not in GROUPS:
        raise UnknownComponentError(
            f"unknown component kind '{kind}'.{suggest(kind, KINDS)} Kinds: {', '.join(KINDS)}."
        )
    return kind


def entry_point_infos(group: str) -> tuple[ComponentInfo, ...]:
    """All entry points in ``group`` as metadata records (used for hooks and presets)."""
    return _scan().get(group, ())


@functools.cache
def _scan() -> dict[str, tuple[ComponentInfo, ...]]:
    kind_of = {g: k for k, g in GROUPS.items()} | OTHER_GROUPS
    found: dict[str, dict[tuple[str, str], ComponentInfo]] = {g: {} for g in kind_of}
    allowed = allowed_distributions()
    first: dict[str, str] = {}  # distribution -> where its first copy on sys.path lives
    for ep in read_entry_points("aecore."):
        name = _normalise(ep.dist)
        if first.setdefault(name, ep.location) != ep.location:
            continue  # the same distribution again further down sys.path: the first one wins, as for imports
        if allowed is not None and name not in allowed:
            continue
        if ep.group in found:
            record = ComponentInfo(kind_of[ep.group], ep.name, ep.value, name, ep.version)
            found[ep.group].setdefault((name, ep.name), record)
    return {g: tuple(sorted(v.values(), key=lambda c: (c.name, c.dist))) for g, v in found.items()}


def _normalise(dist: str) -> str:
    return dist.replace("_", "-").replace(".", "-").lower()


def allowed_distributions() -> set[str] | None:
    """The distributions discovery may use, from the environment; ``None`` means all."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return {CORE_DIST}
    listed = os.environ.get(ALLOW_ENV)
    if listed is None:
        return None
    return {CORE_DIST} | {_normalise(d.strip()) for d in listed.split(",") if d.strip()}


def duplicates() -> dict[tuple[str, str], list[ComponentInfo]]:
    """(kind, name) pairs published by more than one distribution."""
    by_name: dict[tuple[str, str], list[ComponentInfo]] = {}
    for group in _scan().values():
        for c in group:
            by_name.setdefault((c.kind, c.name), []).append(c)
    return {k: v for k, v in by_name.items() if len(v) > 1}


def known_broken() -> dict[str, str]:
    """Plugins whose last load failed, by ``dist:name`` of the installed version -> reason."""
    record = _read_status()
    current = {f"{c.kind}:{c.qualified_name}": c.version for g in _scan().values() for c in g}
    return {
        key.partition(":")[2]: entry["reason"]
        for key, entry in record.items()
        if current.get(key) == entry.get("version")
    }


def _status_file() -> Path:
    from aecore.paths import cache_dir

    return cache_dir() / "plugin-status.json"


def _read_status() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_status_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_status(entry: ComponentInfo, reason: str | None) -> None:
    """Remember (or forget) a failed load; best effort, never fails the caller."""
    key = f"{entry.kind}:{entry.qualified_name}"
    record = _read_status()
    if reason is None and key not in record:
        return
    if reason is None:
        del record[key]
    else:
        record[key] = {"version": entry.version, "reason": reason}
    path = _status_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def _load(entry: ComponentInfo) -> Any:
    if entry in _loaded:
        return _loaded[entry]
    module_name, _, attr = entry.target.partition(":")
    where = f"{entry.kind} '{entry.name}' from {entry.dist} {entry.version}"
    try:
        obj: Any = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
    except Exception as exc:  # a plugin can fail in any way; it must only break itself
        raise _broken(entry, f"{where} could not be loaded ({type(exc).__name__}: {exc})") from exc
    if entry.kind in GROUPS:
        from aecore.protocols import check_component_class

        problems = check_component_class(entry.kind, obj)
        if problems:
            raise _broken(entry, f"{where} is not a valid {entry.kind}: {'; '.join(problems)}")
    _loaded[entry] = obj
    _write_status(entry, None)
    return obj


def _broken(entry: ComponentInfo, message: str) -> PluginLoadError:
    if entry not in _warned:
        _warned.add(entry)
        warnings.warn(message, PluginWarning, stacklevel=3)
        _write_status(entry, message)
    return PluginLoadError(f"{message}. Reinstall or update {entry.dist}, or uninstall it.")


def names(kind: str) -> Iterable[str]:
    """Registered names of one kind (unqualified)."""
    return (c.name for c in list_components(kind))
