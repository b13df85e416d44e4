"""What a trainer is handed besides the model and data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from aecore.model import Autoencoder
    from aecore.training.state import ResumeState


@dataclass
class RunContext:
    """The surroundings of one training run.

    ``hooks`` is the pluggy hook relay (``run.hooks.ae_epoch_end(...)``).
    ``save_checkpoint(model, filename, metrics)`` writes atomically into
    ``out_dir`` with full metadata and fires ``ae_checkpoint_saved``.
    A trainer that supports resuming saves its state with ``save_resume`` and
    continues from ``resume`` when it is set.
    """

    out_dir: Path
    device: torch.device
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    seed: int
    hooks: Any
    save_checkpoint: Callable[[Autoencoder, str, Mapping[str, float]], Path]
    info: dict[str, Any] = field(default_factory=dict)
    #: The decoded resume file when continuing an interrupted run, else None.
    resume: ResumeState | None = None
    #: ``save_resume(model, trainer_meta, trainer_tensors)`` writes RUN/resume.safetensors atomically.
    save_resume: Callable[[Autoencoder, Mapping[str, Any], Mapping[str, Tensor]], Path] | None = None
