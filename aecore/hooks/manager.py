"""Build the pluggy manager from the ``aecore.hooks`` entry points, one at a time."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from aecore.errors import PluginLoadError
from aecore.hooks import specs
from aecore.registry import HOOKS_GROUP, entry_point_infos

hookimpl = pluggy.HookimplMarker(specs.PROJECT)


def plugin_manager(
    extra: Iterable[object] = (), *, exclude: Iterable[str] = (), entry_points: bool = True
) -> pluggy.PluginManager:
    """A manager with every installed hook plugin registered, plus ``extra`` objects.

    ``exclude`` names entry points to leave out (``--quiet`` drops ``progress``);
    ``entry_points=False`` loads none (the non-zero ranks of a distributed job).
    A plugin that fails to load is warned about and skipped: a broken
    logger must not stop training.
    """
    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    skip = set(exclude)
    for entry in entry_point_infos(HOOKS_GROUP) if entry_points else ():
        if entry.name in skip:
            continue
        try:
            obj = entry.load()
        except PluginLoadError:
            continue  # already reported as a warning by the registry
        plugin = obj() if isinstance(obj, type) else obj
        pm.register(plugin, name=entry.qualified_name)
    for plugin in extra:
        pm.register(plugin)
    return pm
