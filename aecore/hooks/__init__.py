"""Training lifecycle hooks, implemented by plugins through pluggy.

The default trainer calls these at train start, after each step, at epoch
end, when a checkpoint is saved and at train end. Implementations are found
through the ``aecore.hooks`` entry-point group; the Rich progress display is
one of them. A broken hook plugin is reported and skipped.
"""

from aecore.hooks.manager import hookimpl, plugin_manager
from aecore.hooks.specs import hookspec

__all__ = ["hookimpl", "hookspec", "plugin_manager"]
