"""Training lifecycle hooks, implemented by plugins through pluggy.

The core fires train start and end; trainers fire the events between (after
each optimizer step, after each step, at epoch end, when a checkpoint is
saved). Implementations are found through the ``aecore.hooks`` entry-point
group; the Rich progress display is one of them. A hook plugin that does not
match the specification is reported and skipped, and one that raises during
a run is reported and disabled for the rest of it.
"""

from aecore.hooks.manager import STRICT_ENV, HookFailure, check_plugin, hookimpl, plugin_manager
from aecore.hooks.specs import hookspec

__all__ = ["STRICT_ENV", "HookFailure", "check_plugin", "hookimpl", "hookspec", "plugin_manager"]
