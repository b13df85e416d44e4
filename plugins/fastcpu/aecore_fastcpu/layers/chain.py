"""A run of Linear layers (each with its activation) as one autograd node.

On a small model the matrix products are only part of a training step: each
layer also pays for a module call, an autograd node, a Python backward and
the activation's own pass. :class:`Sequential` finds runs of
``Linear → activation`` pairs, across nested blocks that declare their
layers through ``fusable_layers()``, and runs each run as one node. The
arithmetic is the same op for op, so results match the layer-by-layer path
bit for bit; measured on the ``simple`` reference model this took a training
step from 2.9 to 2.5 ms (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

from torch import Tensor, nn

from aecore.layers import backend
from aecore.layers.linear import Linear, linear
from aecore.layers.run import Plan, apply_run

__all__ = [
    "FusableBlock",
    "Layer",
    "ModuleChain",
    "Sequential",
    "chain_of",
    "plan_layers",
    "run_layers",
    "run_modules",
    "single_run",
]

#: Activation modules that fold into the Linear layer before them (an nn.Identity there is skipped).
_FUSABLE_MODULES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
#: Modules that only reshape their input (see :func:`single_run`).
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)

#: One layer of a run: the Linear module and the activation after it (None: none).
Layer = tuple[Linear, str | None]


class FusableBlock(Protocol):
    """A module that is, right now, just a run of Linear layers and may be fused into its parent's run."""

    def fusable_layers(self) -> list[Layer] | None:
        """Its layers in order, or None when it holds anything else (or has hooks)."""


@functools.cache
def _describes_forward(cls: type, method: str) -> bool:
    """Whether ``cls`` has ``method`` from a class whose ``forward`` is still the one ``cls`` runs.

    ``fusable_layers`` and ``chain_modules`` describe the ``forward`` written beside
    them; a subclass that overrides ``forward`` but inherits the method would be
    described wrongly, so it runs as itself (cached per class).
    """
    owner = next((klass for klass in cls.__mro__ if method in vars(klass)), None)
    return owner is not None and callable(vars(owner)[method]) and cls.forward is owner.forward  # type: ignore[attr-defined]


def _is_fusable_block(cls: type) -> bool:
    """Whether a module class implements FusableBlock (duck-typed)."""
    return _describes_forward(cls, "fusable_layers")


def _layers_of(modules: Sequence[nn.Module]) -> list[tuple[str, object]]:
    """Split modules into steps: ("run", [layers]) for fusable runs, ("module", m) for the rest."""
    steps: list[tuple[str, object]] = []
    run: list[Layer] = []
    i = 0
    while i < len(modules):
        module = modules[i]
        parts: list[Layer] | None = None
        width = 1
        if type(module) is Linear and not backend.hooked(module):
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            free = nxt is not None and not backend.hooked(nxt)
            act = _FUSABLE_MODULES.get(type(nxt)) if free else None
            parts, width = [(module, act)], 2 if act or (free and type(nxt) is nn.Identity) else 1
        elif _is_fusable_block(type(module)) and not backend.hooked(module):
            parts = module.fusable_layers()  # type: ignore[operator]
        if parts is None:
            if run:
                steps.append(("run", run))
                run = []
            steps.append(("module", module))
        else:
            run.extend(parts)
        i += width
    if run:
        steps.append(("run", run))
    return steps


def plan_layers(x: Tensor, layers: Sequence[Layer]) -> tuple[Plan, list[Tensor]] | None:
    """The run's plan and flat tensor list for input ``x``, or None if it must go layer by layer."""
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    if not (rows > 0 and backend.is_plain_float32(x) and backend.plain_context()):
        return None
    tensors: list[Tensor] = []
    plan = []
    for module, act in layers:
        weight, bias = module.weight, module.bias
        if not (backend.is_plain_parameter(weight) and weight.dim() == 2):
            return None
        tensors.append(weight)
        if bias is not None:
            if not backend.is_plain_parameter(bias):
                return None
            tensors.append(bias)
        plan.append(
            (
                act,
                bias is not None,
                backend.worth_it(rows, weight, in_run=True),
                backend.worth_it(rows, weight),
            )
        )
    return tuple(plan), tensors


def run_layers(x: Tensor, layers: Sequence[Layer]) -> Tensor:
    """``x`` through each ``(Linear, activation)`` in turn: one autograd node where possible."""
    planned = plan_layers(x, layers)
    if planned is None:  # layer by layer, each with linear()'s own fallbacks
        for module, act in layers:
            x = linear(x, module.weight, module.bias, act)
        return x
    return apply_run(x, *planned)


def single_run(modules: Sequence[nn.Module]) -> tuple[list[nn.Module], list[Layer], list[nn.Module]] | None:
    """``modules`` as (reshapes, one run of layers, reshapes), or None if they are anything else.

    The reshapes are ``nn.Flatten``, ``nn.Unflatten`` and ``nn.Identity`` without
    hooks: they move no data, so a gradient passes them by a reshape.
    """
    steps = _layers_of(modules)
    runs = [i for i, (kind, _) in enumerate(steps) if kind == "run"]
    if len(runs) != 1 or any(
        type(m) not in _RESHAPES or backend.hooked(m) for kind, m in steps if kind == "module"
    ):
        return None
    at = runs[0]
    return (
        [m for _, m in steps[:at]],  # type: ignore[misc]
        steps[at][1],  # type: ignore[list-item]
        [m for _, m in steps[at + 1 :]],  # type: ignore[misc]
    )


class Sequential(nn.Sequential):
    """``nn.Sequential`` that runs each stretch of Linear layers and their activations as one node.

    The modules, their order and the state dict are exactly ``nn.Sequential``'s;
    only the forward pass changes. A stretch is made of :class:`Linear` layers,
    each optionally followed by ``nn.ReLU``, ``nn.Sigmoid`` or ``nn.Tanh``, and of
    blocks that implement :class:`FusableBlock`. A module that carries forward
    hooks is run as itself (``ae features`` hooks every layer), so hooks see
    what they would see in ``nn.Sequential``.
    """

    def fusable_layers(self) -> list[Layer] | None:
        """All of this Sequential's layers, if it holds nothing but fusable ones and has no hooks."""
        if backend.hooked(self):  # a parent fusing these layers would skip this module's own call
            return None
        steps = _layers_of(list(self._modules.values()))
        if len(steps) == 1 and steps[0][0] == "run":
            return steps[0][1]  # type: ignore[return-value]
        return None

    def chain_modules(self) -> list[nn.Module] | None:
        """Its modules in order (aecore.layers.ModuleChain; :func:`chain_of` checks its hooks)."""
        return list(self._modules.values())

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Sequential's own argument name
        return run_modules(list(self._modules.values()), input)


class ModuleChain(Protocol):
    """A module whose forward pass is, right now, just some modules applied in order.

    An :class:`aecore.model.Autoencoder` whose encoder and decoder both say so,
    with no regularizer between them, runs the two chains as one, so that the
    last Linear layers of the encoder and the first of the decoder share one
    autograd node (measured at 3-5% of a training step of the ``simple`` model).
    """

    def chain_modules(self) -> list[nn.Module] | None:
        """The modules in the order forward applies them, or None when it does anything else."""


def chain_of(module: nn.Module) -> list[nn.Module] | None:
    """``module``'s :class:`ModuleChain` modules, or None (no such method, a ``forward``
    overridden below it, or hooks on the module)."""
    if not _describes_forward(type(module), "chain_modules") or backend.hooked(module):
        return None
    return module.chain_modules()  # type: ignore[operator]


def run_modules(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
    """``x`` through ``modules`` in order, each stretch of fusable layers as one autograd node."""
    if backend.global_hooks():  # hooks on every module call: call every module
        for module in modules:
            x = module(x)
        return x
    for kind, item in _layers_of(modules):
        x = run_layers(x, item) if kind == "run" else item(x)  # type: ignore[operator, arg-type]
    return x
