"""The hook specification: the lifecycle events of a training run.

``run`` is the :class:`aecore.protocols.RunContext` of the run: its
``info`` dict describes the run (components, data, sizes, backend), and its
``out_dir`` is where artefacts go. The core fires ``ae_train_start`` and
``ae_train_end`` around the trainer's ``fit``; the trainer fires the rest.
Epochs count from 1 and steps from 0 within each epoch. For one epoch the
order is ``ae_after_step`` then ``ae_step_end`` for every step, then
``ae_epoch_end``, then ``ae_checkpoint_saved`` for each checkpoint written.
Hooks return nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from aecore.protocols import RunContext

PROJECT = "aecore"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def ae_train_start(run: RunContext, total_epochs: int | None, steps_per_epoch: int | None) -> None:
    """Training is about to begin (also when a run is resumed: ``run.info["resumed"]``).

    The totals are the trainer's own estimate (its ``schedule``), or None
    when it does not say.
    """


@hookspec
def ae_after_step(run: RunContext, model: nn.Module, epoch: int, step: int) -> None:
    """The optimizer has just updated ``model``'s parameters; runs under ``torch.no_grad()``.

    For constraints that follow each update: renormalising decoder columns,
    moving a codebook. A component of the model (encoder, decoder or
    regularizer) that implements this hook is registered for its run.
    """


@hookspec
def ae_step_end(run: RunContext, epoch: int, step: int, batch_size: int, loss: Any) -> None:
    """One optimisation step finished. ``loss`` is a detached 0-d tensor.

    Call ``float(loss)`` only when you need the number: on a GPU that waits
    for the device.
    """


@hookspec
def ae_epoch_end(run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch finished; ``metrics`` holds its figures (``epoch``, ``train_loss``, ``val_recon``, ...)."""


@hookspec
def ae_checkpoint_saved(run: RunContext, path: Path, metrics: dict[str, float]) -> None:
    """A checkpoint was written atomically to ``path``."""


@hookspec
def ae_train_end(run: RunContext, metrics: dict[str, float]) -> None:
    """Training finished; ``metrics`` are the final figures, empty if it stopped on an error."""
