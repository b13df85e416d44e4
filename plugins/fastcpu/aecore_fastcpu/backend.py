"""The ``fastcpu`` backend: what the core asks of a backend, answered with this package's parts.

It serves CPU runs only. ``probe`` checks the private torch APIs the
enabled parts use (:mod:`aecore_fastcpu.probes`); ``prepare`` puts a
convolutional model in channels-last order (:mod:`aecore_fastcpu.layout`)
and finds a Linear model's chain once; ``step`` and ``optimizer`` hand out the by-hand step
and :class:`FusedAdam` where they apply, and None elsewhere, which leaves
that part to the core's plain autograd and ``Adam(fused=True)``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from aecore.config import param
from aecore.model import Autoencoder, LossFn
from aecore.protocols import StepFn
from aecore_fastcpu import kernels, probes
from aecore_fastcpu.chain import Chain, find_chain
from aecore_fastcpu.heap import keep_freed_memory
from aecore_fastcpu.layout import Layout, has_normalisation, to_channels_last, wants_channels_last
from aecore_fastcpu.norm import use_precise_batch_norm
from aecore_fastcpu.optim import fused_adam
from aecore_fastcpu.step import ByHandStep

__all__ = ["FastCPU", "FastCPUConfig"]


@dataclass(frozen=True)
class FastCPUConfig:
    onednn: Literal["auto", "always", "never"] = param(
        "auto",
        "Large float32 products through oneDNN, activation fused in: auto where the CPU has AVX-512, "
        "always, or never (torch's kernels only: gradients are then plain autograd's to the bit).",
    )
    by_hand: bool = param(True, "Compute a chain of Linear layers' gradients without the autograd engine.")
    fused_adam: bool = param(True, "Adam with torch's fused kernel and no per-step regrouping of tensors.")
    keep_heap: bool = param(
        True,
        "glibc: keep freed memory in the heap for the next step instead of returning it to the system and "
        "faulting it in again (fixes malloc's trim and mmap thresholds for the process).",
    )
    channels_last: Layout = param(
        "auto",
        "Convolutional models in channels-last memory order, oneDNN's own, so no convolution reorders its "
        "tensors, with batch norm statistics summed as exactly as in NCHW: auto for models whose only "
        "normalisation layers are BatchNorm2d, always, or never.",
    )


class FastCPU:
    """Training on CPU: oneDNN Linear runs, an autograd-free step for chains, a leaner fused Adam."""

    Config = FastCPUConfig
    devices = ("cpu",)

    def __init__(self, config: FastCPUConfig | None = None) -> None:
        self.config = config or FastCPUConfig()
        self._chains: weakref.WeakKeyDictionary[Autoencoder, Chain | None] = weakref.WeakKeyDictionary()

    def uses_onednn(self) -> bool:
        """Whether the step sends large products to oneDNN (``onednn``, and for ``auto`` the CPU)."""
        choice = self.config.onednn
        return choice == "always" or (choice == "auto" and kernels.onednn_pays())

    def _step_probes(self) -> tuple[Callable[[], str | None], ...]:
        if not self.config.by_hand:
            return ()
        return (*probes.STEP, *(probes.ONEDNN if self.uses_onednn() else ()))

    def _adam_probes(self) -> tuple[Callable[[], str | None], ...]:
        return probes.ADAM if self.config.fused_adam else ()

    def probe(self, device: torch.device) -> str | None:
        """None when this backend can serve ``device``; else why not (a private API it lacks, say)."""
        if device.type != "cpu":
            return f"it serves cpu, not {device.type}"
        return probes.failure((*self._step_probes(), *self._adam_probes()))

    def prepare(self, model: Autoencoder, device: torch.device) -> Autoencoder:
        """The same model, convolutions channels-last (batch norms routed) where that applies; a Linear
        chain traced now."""
        if self.config.keep_heap and device.type == "cpu":
            keep_freed_memory()
        if device.type == "cpu":
            routed = not has_normalisation(model) or probes.failure(probes.NORM) is None
            if wants_channels_last(model, self.config.channels_last, batch_norm_routed=routed):
                to_channels_last(model)
                if routed:
                    use_precise_batch_norm(model)
        if self.config.by_hand and device.type == "cpu" and probes.failure(self._step_probes()) is None:
            self._chain(model)
        return model

    def optimizer(
        self, params: Sequence[Tensor], *, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer | None:
        """:class:`FusedAdam` for dense CPU float32 parameters; None for the core's Adam elsewhere."""
        if not self.config.fused_adam or probes.failure(self._adam_probes()) is not None:
            return None
        return fused_adam(list(params), lr=lr, weight_decay=weight_decay)

    def step(self, model: Autoencoder, loss_fn: LossFn) -> StepFn | None:
        """The by-hand step for a model that is a chain of Linear layers; None (autograd) for any other."""
        if not self.config.by_hand or probes.failure(self._step_probes()) is not None:
            return None
        chain = self._chain(model)
        return None if chain is None else ByHandStep(chain, loss_fn, onednn=self.uses_onednn())

    def _chain(self, model: Autoencoder) -> Chain | None:
        if model not in self._chains:
            self._chains[model] = find_chain(model)
        return self._chains[model]
