"""Build the pluggy manager from the ``aecore.hooks`` entry points, one plugin at a time."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from aecore import registry
from aecore.errors import PluginLoadError
from aecore.hooks import specs

hookimpl = pluggy.HookimplMarker(specs.PROJECT)


def plugin_manager(
    extra: Iterable[object] = (), *, exclude: Iterable[str] = (), entry_points: bool = True
) -> pluggy.PluginManager:
    """A manager with every installed hook plugin registered, plus ``extra`` objects.

    ``exclude`` names entry points to leave out (``--quiet`` drops ``progress``);
    ``entry_points=False`` loads none (the non-zero ranks of a distributed job).
    A plugin that fails to load, or whose hooks do not match the
    specification, is reported once and left out: a broken logger must not
    stop training.
    """
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    skip = set(exclude)
    for entry in registry.every("hook") if entry_points else ():
        if entry.name in skip:
            continue
        try:
            obj = entry.load()
            plugin = obj() if isinstance(obj, type) else obj
            check_plugin(plugin)
            pm.register(plugin, name=entry.qualified_name)
        except PluginLoadError as exc:
            registry.report_broken(entry, str(exc))
        except pluggy.PluginValidationError as exc:
            where = f"hook '{entry.name}' from {entry.dist} {entry.version}"
            registry.report_broken(entry, f"{where} does not match the hook specification: {exc}")
        except Exception as exc:  # its constructor failed: only this plugin is affected
            where = f"hook '{entry.name}' from {entry.dist} {entry.version}"
            registry.report_broken(entry, f"{where} could not be created ({type(exc).__name__}: {exc})")
    for plugin in extra:
        pm.register(plugin)
    return pm


def check_plugin(plugin: object) -> None:
    """Raise ``pluggy.PluginValidationError`` unless every hook ``plugin`` marks is a known hook
    whose arguments the specification has (a misspelt hook would otherwise never be called)."""
    scratch = pluggy.PluginManager(specs.PROJECT)
    scratch.add_hookspecs(specs)
    scratch.register(plugin)
    scratch.check_pending()
