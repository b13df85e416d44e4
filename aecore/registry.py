"""Find, list, look up and build plugins of every kind by name.

Each kind has an entry-point group (see :data:`GROUPS`): components
(``aecore.encoders``, ``aecore.decoders``, ``aecore.regularizers``,
``aecore.trainers``) and what surrounds them (``aecore.hooks``,
``aecore.presets``, ``aecore.commands``, ``aecore.datasets``,
``aecore.losses``, ``aecore.backends``).

Listing reads entry-point metadata only: no plugin module is imported until a
plugin is first used, so ``ae plugins list`` stays fast and a plugin that
fails to import breaks only itself. The scan happens once per process;
:func:`refresh` repeats it.

Names may be qualified by their distribution, ``aecore-conv:conv``, to pick
one when two distributions publish the same name; checkpoints record the
qualified form, so installing a second ``mlp`` never breaks a saved model.

Two environment variables narrow discovery, in the manner of pytest:
``AECORE_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only aecore's own built-ins, and
``AECORE_PLUGINS=aecore-mlp,aecore-conv`` keeps only the listed
distributions (plus the built-ins).

A plugin that fails to load is remembered in ``<cache dir>/plugin-status.json``
(until it loads again), so ``ae plugins list`` can show it as broken without
importing anything.

:func:`register` (or the :func:`registered` context manager) adds an object
in-process, as if an installed distribution published it, for notebooks and
tests: listing, lookup, building, composition, the hook manager and the
command table all see it. In-process plugins survive :func:`refresh` (they
do not come from entry points), ignore the two environment variables (they
were asked for explicitly), and are never recorded in the status file. One
cannot take the (kind, distribution, name) of a plugin already present.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aecore import kinds
from aecore.entry_points import read_entry_points
from aecore.errors import AmbiguousComponentError, Notice, PluginLoadError, UnknownComponentError, suggest

__all__ = [
    "COMPONENT_KINDS",
    "GROUPS",
    "KINDS",
    "ComponentInfo",
    "PluginInfo",
    "PluginWarning",
    "build",
    "find",
    "get",
    "info",
    "list_components",
    "refresh",
    "register",
    "registered",
    "unregister",
]

#: Kind -> entry-point group, for every kind.
GROUPS: dict[str, str] = {k.name: k.group for k in kinds.KINDS.values()}
KINDS: tuple[str, ...] = tuple(GROUPS)
COMPONENT_KINDS = kinds.COMPONENT_KINDS
CORE_DIST = "aecore"
DISABLE_ENV = "AECORE_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "AECORE_PLUGINS"

#: Where to look for what is installed, per kind (the hint in "unknown name" errors).
_SEE = {"preset": "ae presets", "command": "ae --help"}
_PLURAL = {"loss": "losses"}


class PluginWarning(Notice):
    """A plugin could not be loaded; everything else keeps working."""


@dataclass(frozen=True)
class PluginInfo:
    """What the entry-point metadata says about one plugin, read without importing it."""

    kind: str
    name: str
    target: str
    dist: str
    version: str

    @property
    def qualified_name(self) -> str:
        return f"{self.dist}:{self.name}"

    def load(self) -> Any:
        """Import the plugin's object. Failures raise :class:`PluginLoadError`."""
        return _load(self)


#: The older name of :class:`PluginInfo`.
ComponentInfo = PluginInfo


def list_components(kind: str | None = None, pattern: str = "*") -> list[PluginInfo]:
    """Plugins of one kind (or of every kind) whose name matches a shell-style ``pattern``.

    >>> [c.name for c in list_components("encoder", "c*")]  # doctest: +SKIP
    ['conv']
    """
    chosen = KINDS if kind is None else (_check_kind(kind),)
    entries = [c for k in chosen for c in _scan().get(GROUPS[k], ())]
    if pattern == "*":
        return entries
    from fnmatch import fnmatchcase  # only for a real pattern: it imports re, a cost every listing would pay

    return [c for c in entries if fnmatchcase(c.name, pattern) or fnmatchcase(c.qualified_name, pattern)]


def info(kind: str, name: str) -> PluginInfo:
    """The metadata of one plugin; raises for unknown or ambiguous names."""
    _check_kind(kind)
    dist, _, short = name.rpartition(":")
    entries = _scan().get(GROUPS[kind], ())
    matches = [c for c in entries if c.name == short and (not dist or c.dist == _normalise(dist))]
    if not matches:
        installed = ", ".join(sorted({c.name for c in entries})) or "none"
        where = "" if not dist or short not in {c.name for c in entries} else f" from {dist}"
        raise UnknownComponentError(
            f"unknown {kind} '{name}'{where}.{suggest(short, (c.name for c in entries))} "
            f"Installed {_PLURAL.get(kind, kind + 's')}: {installed} "
            f"(see '{_SEE.get(kind, 'ae plugins list')}')."
        )
    if len(matches) > 1:
        choices = " or ".join(f"'{c.qualified_name}'" for c in matches)
        raise AmbiguousComponentError(
            f"{kind} '{short}' is provided by {len(matches)} distributions; name one explicitly: {choices}."
        )
    return matches[0]


def get(kind: str, name: str) -> Any:
    """The object registered as ``name`` for ``kind`` (imported on first use)."""
    return info(kind, name).load()


def find(name: str) -> list[PluginInfo]:
    """Every plugin, of any kind, registered under ``name`` (qualified or not)."""
    dist, _, short = name.rpartition(":")
    return [c for c in list_components() if c.name == short and (not dist or c.dist == _normalise(dist))]


def build(kind: str, name: str, params: dict[str, Any] | None = None, **context: Any) -> Any:
    """Build a plugin with a ``Config`` from its name and parameters.

    ``params`` are validated against the plugin's ``Config`` (strings are
    parsed as on the command line); ``context`` carries what the plugin
    needs from its surroundings, such as ``input_shape`` and ``latent_dim``.
    """
    from aecore.config import config_from_dict

    cls = get(kind, name)
    config = config_from_dict(cls.Config, params or {}, owner=name)
    return cls(config, **context)


def names(kind: str) -> list[str]:
    """Registered names of one kind (unqualified, sorted, each once)."""
    return sorted({c.name for c in list_components(kind)})


def refresh() -> None:
    """Forget the entry-point scan and loaded objects (after installing plugins at run time).

    Plugins added with :func:`register` are kept.
    """
    global _view
    _entry_point_scan.cache_clear()
    _view = None
    _loaded.clear()
    _warned.clear()
    importlib.invalidate_caches()


def register(kind: str, name: str, obj: Any, *, dist: str = "local", version: str = "0") -> PluginInfo:
    """Add ``obj`` as the ``kind`` plugin ``name`` of distribution ``dist``, in this process only.

    Everything that finds plugins then finds it, as if an installed
    distribution published it (timm's ``register_model``, for notebooks and
    tests). ``obj`` gets the structural check a loaded entry point gets; an
    invalid object, a malformed name, or a (kind, dist, name) that is
    already present (installed or registered) raises :class:`PluginLoadError`.
    Returns the metadata to pass to :func:`unregister`.
    """
    global _view
    _check_kind(kind)
    where = f"{kind} '{name}' from {dist} {version}"
    if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
        raise PluginLoadError(
            f"cannot register {where}: a name is non-empty text without ':' or surrounding spaces."
        )
    dist = _normalise(dist)
    if any(c.dist == dist and c.name == name for c in _scan().get(GROUPS[kind], ())):
        raise PluginLoadError(
            f"cannot register {where}: {dist} already provides {kind} '{name}'; choose another name or "
            "dist (or unregister the one registered in-process first)."
        )
    problems = kinds.check(kind, obj)
    if problems:
        raise PluginLoadError(f"cannot register {where}: it is not a valid {kind}: {'; '.join(problems)}.")
    entry = PluginInfo(kind, name, _target(obj), dist, str(version))
    _local[entry] = obj
    _view = None
    return entry


def unregister(info: PluginInfo) -> None:
    """Remove a plugin added with :func:`register`; installed plugins cannot be removed this way."""
    global _view
    if info not in _local:
        raise UnknownComponentError(
            f"{info.kind} '{info.qualified_name}' was not registered in this process, so it cannot be "
            "unregistered (uninstall its distribution instead)."
        )
    del _local[info]
    _loaded.pop(info, None)
    _warned.discard(info)
    _view = None


@contextlib.contextmanager
def registered(
    kind: str, name: str, obj: Any, *, dist: str = "local", version: str = "0"
) -> Iterator[PluginInfo]:
    """:func:`register` for the duration of a ``with`` block; yields the plugin's metadata."""
    entry = register(kind, name, obj, dist=dist, version=version)
    try:
        yield entry
    finally:
        if _local.get(entry) is obj:
            unregister(entry)


def allowed_distributions() -> set[str] | None:
    """The distributions discovery may use, from the environment; ``None`` means all."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return {CORE_DIST}
    listed = os.environ.get(ALLOW_ENV)
    if listed is None:
        return None
    return {CORE_DIST} | {_normalise(d.strip()) for d in listed.split(",") if d.strip()}


def duplicates() -> dict[tuple[str, str], list[PluginInfo]]:
    """(kind, name) pairs published by more than one distribution."""
    by_name: dict[tuple[str, str], list[PluginInfo]] = {}
    for group in _scan().values():
        for c in group:
            by_name.setdefault((c.kind, c.name), []).append(c)
    return {k: v for k, v in by_name.items() if len(v) > 1}


def known_broken() -> dict[str, str]:
    """Plugins whose last load failed, by ``kind:dist:name`` of the installed version -> reason."""
    record = _read_status()
    current = {f"{c.kind}:{c.qualified_name}": c.version for g in _scan().values() for c in g}
    return {key: entry["reason"] for key, entry in record.items() if current.get(key) == entry.get("version")}


def report_broken(entry: PluginInfo, reason: str) -> None:
    """Record and warn (once per process) that ``entry`` cannot be used, for ``reason``.

    Called by whoever carries on without the plugin (the hook manager, backend
    choice, listings): a failure that is raised instead is said by the error.
    """
    if entry not in _warned:
        _warned.add(entry)
        warnings.warn(reason, PluginWarning, stacklevel=3)
        _write_status(entry, reason)


# -- internals ---------------------------------------------------------------

_loaded: dict[PluginInfo, Any] = {}
_warned: set[PluginInfo] = set()
#: Plugins added with register(), and the merged view of them and the entry points (None: stale).
_local: dict[PluginInfo, Any] = {}
_view: dict[str, tuple[PluginInfo, ...]] | None = None


def _check_kind(kind: str) -> str:
    if kind not in GROUPS:
        raise UnknownComponentError(
            f"unknown plugin kind '{kind}'.{suggest(kind, KINDS)} Kinds: {', '.join(KINDS)}."
        )
    return kind


def _scan() -> dict[str, tuple[PluginInfo, ...]]:
    """Entry points by group, with the in-process plugins merged in (each shadowing its namesake)."""
    global _view
    found = _entry_point_scan()
    if not _local:
        return found
    if _view is None:
        merged = {g: {(c.dist, c.name): c for c in entries} for g, entries in found.items()}
        for c in _local:
            merged[GROUPS[c.kind]][(c.dist, c.name)] = c
        _view = {g: tuple(sorted(v.values(), key=lambda c: (c.name, c.dist))) for g, v in merged.items()}
    return _view


def _target(obj: Any) -> str:
    """``module:qualname`` of a registered function or class (what an entry point would name)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return f"<in-process {type(obj).__name__}>"


@functools.cache
def _entry_point_scan() -> dict[str, tuple[PluginInfo, ...]]:
    kind_of = {g: k for k, g in GROUPS.items()}
    found: dict[str, dict[tuple[str, str], PluginInfo]] = {g: {} for g in kind_of}
    allowed = allowed_distributions()
    first: dict[str, str] = {}  # distribution -> where its first copy on sys.path lives
    for ep in read_entry_points("aecore."):
        name = _normalise(ep.dist)
        if first.setdefault(name, ep.location) != ep.location:
            continue  # the same distribution again further down sys.path: the first one wins, as imports do
        if allowed is not None and name not in allowed:
            continue
        if ep.group in found:
            record = PluginInfo(kind_of[ep.group], ep.name, ep.value, name, ep.version)
            found[ep.group].setdefault((name, ep.name), record)
    return {g: tuple(sorted(v.values(), key=lambda c: (c.name, c.dist))) for g, v in found.items()}


def _normalise(dist: str) -> str:
    return dist.replace("_", "-").replace(".", "-").lower()


def _status_file() -> Path:
    from aecore.paths import cache_dir

    return cache_dir() / "plugin-status.json"


def _read_status() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(_status_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("reason"), str)}


def _write_status(entry: PluginInfo, reason: str | None) -> None:
    """Remember (or forget) a failed load; best effort, never fails the caller."""
    if entry in _local:
        return  # an in-process plugin has no installed version to remember it by
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


def _load(entry: PluginInfo) -> Any:
    if entry in _local:
        return _local[entry]
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
    problems = kinds.check(entry.kind, obj)
    if problems:
        raise _broken(entry, f"{where} is not a valid {entry.kind}: {'; '.join(problems)}")
    _loaded[entry] = obj
    _write_status(entry, None)
    return obj


def _broken(entry: PluginInfo, message: str) -> PluginLoadError:
    """The error to raise; the failure is recorded for 'ae plugins list'. Callers that carry on
    without the plugin report it with :func:`report_broken`, so it is said once, not twice."""
    _write_status(entry, message)
    return PluginLoadError(f"{message}. Reinstall or update {entry.dist}, or uninstall it.")


def every(kind: str) -> Iterable[PluginInfo]:
    """Every plugin of ``kind`` (no pattern): what the hook manager and the command table read."""
    return _scan().get(GROUPS[_check_kind(kind)], ())
