"""The hook specification: small, and called by every trainer that wants lifecycle events.

``run`` is the :class:`aecore.protocols.RunContext` of the run: its
``info`` dict describes the run (components, data, output directory), and its
``out_dir`` is where artefacts go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from aecore.protocols import RunContext

PROJECT = "aecore"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def ae_train_start(run: RunContext, total_epochs: int, steps_per_epoch: int) -> None:
    """Training is about to begin."""


@hookspec
def ae_step_end(run: RunContext, epoch: int, step: int, batch_size: int, loss: Any) -> None:
    """One optimisation step finished. ``loss`` is a detached 0-d tensor.

    Call ``float(loss)`` only when you need the number: on a GPU that waits
    for the device.
    """


@hookspec
def ae_epoch_end(run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch finished; ``metrics`` holds its training and validation figures."""


@hookspec
def ae_checkpoint_saved(run: RunContext, path: Path, metrics: dict[str, float]) -> None:
    """A checkpoint was written atomically to ``path``."""


@hookspec
def ae_train_end(run: RunContext, metrics: dict[str, float]) -> None:
    """Training finished; ``metrics`` are the final figures, empty if it stopped on an error."""
