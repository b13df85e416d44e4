"""Build a run's pluggy manager: installed hook plugins, each checked and guarded, plus the run's own.

A hook plugin joins a run only if it matches the specification (checked in a
scratch manager first, so a misspelt hook or argument is caught rather than
silently never called). Once in, every one of its hook methods is called
through a guard: the first exception it raises is reported once, in one line
naming the plugin, the hook and the error; the plugin gets no further calls
in that run, the run goes on, and the failure is recorded for ``metrics.json``.
In strict mode (``strict=True``, or ``AECORE_STRICT_HOOKS=1``) the exception
ends the run as a :class:`~aecore.errors.HookError` instead.

What the run registers itself (its history recorder, hook methods of the
model's own components) is not guarded: a component's failure is the
model's failure.
"""

from __future__ import annotations

import functools
import os
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from aecore import registry
from aecore.errors import ConfigError, HookError, HookWarning, PluginLoadError
from aecore.hooks import specs

__all__ = ["STRICT_ENV", "HookFailure", "check_plugin", "hookimpl", "plugin_manager", "strict_from_env"]

hookimpl = pluggy.HookimplMarker(specs.PROJECT)

#: Set to 1 to make a hook plugin's exception end the run (for CI).
STRICT_ENV = "AECORE_STRICT_HOOKS"


@dataclass(frozen=True)
class HookFailure:
    """A hook plugin that raised during a run and was disabled for the rest of it."""

    plugin: str
    hook: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"plugin": self.plugin, "hook": self.hook, "error": self.error}


def strict_from_env() -> bool:
    """Whether ``AECORE_STRICT_HOOKS`` asks for hook failures to be fatal."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def plugin_manager(
    extra: Iterable[object] = (),
    *,
    exclude: Iterable[str] = (),
    entry_points: bool = True,
    strict: bool = False,
    failures: list[HookFailure] | None = None,
) -> pluggy.PluginManager:
    """A manager with every installed hook plugin registered, plus the ``extra`` objects.

    ``exclude`` names entry points to leave out (``--quiet`` drops ``progress``);
    ``entry_points=False`` loads none (the non-zero ranks of a distributed job).
    A plugin that fails to load or does not match the specification is
    reported once and left out: a broken logger must not stop training. Both
    the installed plugins and ``extra`` are guarded (see the module
    docstring); failures are appended to ``failures``.
    """
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    record = failures if failures is not None else []
    skip = set(exclude)
    for entry in registry.every("hook") if entry_points else ():
        if entry.name in skip:
            continue
        where = f"hook '{entry.name}' from {entry.dist} {entry.version}"
        try:
            obj = entry.load()
            plugin = obj() if isinstance(obj, type) else obj
            check_plugin(plugin)
            pm.register(_guarded(plugin, where, strict, record), name=entry.qualified_name)
        except PluginLoadError as exc:
            registry.report_broken(entry, str(exc))
        except pluggy.PluginValidationError as exc:
            registry.report_broken(entry, f"{where} does not match the hook specification: {exc}")
        except Exception as exc:  # its constructor failed: only this plugin is affected
            registry.report_broken(entry, f"{where} could not be created ({type(exc).__name__}: {exc})")
    for plugin in extra:  # hook objects passed in Python: their author is the caller, so this raises
        where = f"hook {type(plugin).__name__}"
        try:
            check_plugin(plugin)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"{where} does not match the hook specification: {exc}") from None
        pm.register(_guarded(plugin, where, strict, record))
    return pm


def check_plugin(plugin: object) -> None:
    """Raise ``pluggy.PluginValidationError`` unless every hook ``plugin`` marks is a known hook
    whose arguments the specification has (a misspelt hook would otherwise never be called).

    Hook wrappers are refused: aecore's hooks return nothing, and a wrapper's
    own exceptions could not be kept inside the plugin.
    """
    scratch = pluggy.PluginManager(specs.PROJECT)
    scratch.add_hookspecs(specs)
    for attr, opts in _hook_methods(scratch, plugin).items():
        if opts.get("hookwrapper") or opts.get("wrapper"):
            raise pluggy.PluginValidationError(
                plugin, f"{attr} is a hook wrapper; aecore hooks take plain implementations only"
            )
    scratch.register(plugin)
    scratch.check_pending()


def hook_names(plugin: object) -> list[str]:
    """The hooks ``plugin`` implements (by specification name)."""
    scratch = pluggy.PluginManager(specs.PROJECT)
    return sorted(opts.get("specname") or attr for attr, opts in _hook_methods(scratch, plugin).items())


def _hook_methods(pm: pluggy.PluginManager, plugin: object) -> dict[str, Any]:
    """Attribute name -> hookimpl options, for every attribute ``plugin`` marks as a hook."""
    found = {}
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is not None:
            found[attr] = dict(opts)
    return found


class _State:
    disabled = False


def _guarded(plugin: object, where: str, strict: bool, failures: list[HookFailure]) -> object:
    """A stand-in for ``plugin`` whose hook methods keep the plugin's exceptions inside it."""
    state = _State()
    proxy = types.SimpleNamespace()
    scratch = pluggy.PluginManager(specs.PROJECT)
    for attr, opts in _hook_methods(scratch, plugin).items():
        hook = opts.get("specname") or attr
        guard = _guard(getattr(plugin, attr), hook, where, strict, failures, state)
        setattr(proxy, attr, hookimpl(**opts)(guard))
    return proxy


def _guard(
    method: Callable[..., Any],
    hook: str,
    where: str,
    strict: bool,
    failures: list[HookFailure],
    state: _State,
) -> Callable[..., Any]:
    @functools.wraps(method)  # keeps the signature pluggy reads the argument names from
    def call(*args: Any, **kwargs: Any) -> Any:
        if state.disabled:
            return None
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
            if strict:
                raise HookError(
                    f"{where} raised in {hook} ({error}); strict hooks are on ({STRICT_ENV}=1 or "
                    "--strict-hooks), so the run stops."
                ) from exc
            state.disabled = True
            failures.append(HookFailure(where.removeprefix("hook "), hook, error))
            warnings.warn(
                f"{where} raised in {hook} ({error}); it is disabled for the rest of this run, which "
                "goes on (the failure is recorded in metrics.json).",
                HookWarning,
                stacklevel=2,
            )
            return None

    return call
