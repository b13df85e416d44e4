"""Finding, by structure, a model that is one run of Linear layers with reshapes around it.

Plugins write plain torch (``nn.Sequential``, ``nn.Linear``, ``nn.ReLU``...)
and need not say anything about themselves: ``torch.fx`` traces the encoder
and the decoder, and the model is a chain when the trace is a straight line
of reshapes, then ``nn.Linear`` layers each optionally followed by
``nn.ReLU``, ``nn.Sigmoid`` or ``nn.Tanh``, then reshapes. Anything else
(a regularizer, BatchNorm, Dropout, a skip connection, a convolution, a
tensor computed from anything but the previous one, a trace that fails) is
not a chain, and training keeps autograd. The trace runs once per model.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from aecore.model import Autoencoder

__all__ = ["Chain", "Reshape", "find_chain"]

#: A function of one tensor that only changes its shape (a gradient passes it by a reshape).
Reshape = Callable[[Tensor], Tensor]

_ACTIVATION_MODULES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten)
_RESHAPE_FUNCTIONS = (torch.flatten, torch.reshape, torch.unflatten)
_RESHAPE_METHODS = ("flatten", "view", "reshape", "unflatten")
#: Autoencoder methods the step stands in for: a subclass that overrides one may compute something else.
_MODEL_METHODS = ("forward", "encode", "decode", "loss_terms")


@dataclass(frozen=True)
class Chain:
    """``decode(encode(x))`` as reshapes ``before``, Linear ``layers`` (each with its activation), ``after``.

    ``modules`` is every module of the model: the step checks their hooks and mode on each call.
    """

    before: tuple[Reshape, ...]
    layers: tuple[tuple[nn.Linear, str | None], ...]
    after: tuple[Reshape, ...]
    modules: tuple[nn.Module, ...]


def find_chain(model: nn.Module) -> Chain | None:
    """``model`` as a :class:`Chain`, or None when it is anything more."""
    if not isinstance(model, Autoencoder) or len(model.regularizers):
        return None
    if any(getattr(type(model), name) is not getattr(Autoencoder, name) for name in _MODEL_METHODS):
        return None
    steps = _steps(model.encoder)
    more = _steps(model.decoder) if steps is not None else None
    if steps is None or more is None:
        return None
    return _split([*steps, *more], tuple(model.modules()))


#: One step of a traced component: ("linear", module), ("act", name) or ("reshape", function).
_Step = tuple[str, Any]


def _steps(component: nn.Module) -> list[_Step] | None:
    """The component's forward pass as steps, from a trace in training mode; None if it is not a line."""
    modes = {m: m.training for m in component.modules()}
    try:
        if not all(modes.values()):
            component.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failing trace is an answer, not something to report
            graph = torch.fx.symbolic_trace(component).graph
    except Exception:  # anything fx cannot trace is not a chain
        return None
    finally:
        for m, mode in modes.items():
            if m.training != mode:
                m.train(mode)
    return _line(graph, component)


def _line(graph: torch.fx.Graph, component: nn.Module) -> list[_Step] | None:
    """The steps of a graph that feeds one input through one node after another into its output."""
    nodes = list(graph.nodes)
    if len(nodes) < 2 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    steps: list[_Step] = []
    previous = nodes[0]
    for node in nodes[1:]:
        if _inputs(node) != [previous] or len(previous.users) != 1:
            return None
        if node.op == "output":
            return steps
        step = _step(node, component)
        if step is None:
            return None
        if step[0] != "identity":
            steps.append(step)
        previous = node
    return None


def _inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _step(node: torch.fx.Node, component: nn.Module) -> _Step | None:
    """What one node does to its input, if it is a Linear layer, an activation or a reshape."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):  # the tensor comes first
        return None
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            return None
        module = component.get_submodule(str(node.target))
        kind = type(module)
        if kind is nn.Linear:
            return "linear", module
        if kind in _ACTIVATION_MODULES:
            return "act", _ACTIVATION_MODULES[kind]
        if kind is nn.Identity:
            return "identity", None
        return ("reshape", module) if kind in _RESHAPE_MODULES else None
    rest, kwargs = node.args[1:], dict(node.kwargs)  # constants: the node's one input is its tensor
    if node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS:
        function = node.target
        return "reshape", lambda t: function(t, *rest, **kwargs)
    if node.op == "call_method" and node.target in _RESHAPE_METHODS:
        return "reshape", operator.methodcaller(str(node.target), *rest, **kwargs)
    return None


def _split(steps: list[_Step], modules: tuple[nn.Module, ...]) -> Chain | None:
    """Steps as reshapes, then Linear layers each with an optional activation, then reshapes."""
    kinds = [kind for kind, _ in steps]
    if "linear" not in kinds:
        return None
    start = kinds.index("linear")
    end = start
    layers: list[tuple[nn.Linear, str | None]] = []
    while end < len(steps) and kinds[end] == "linear":
        act = steps[end + 1][1] if end + 1 < len(steps) and kinds[end + 1] == "act" else None
        layers.append((steps[end][1], act))
        end += 2 if act else 1
    if any(kind != "reshape" for kind in kinds[:start] + kinds[end:]):
        return None
    if len({id(m) for m, _ in layers}) != len(layers):  # a layer used twice: autograd sums its gradients
        return None
    return Chain(
        before=tuple(f for _, f in steps[:start]),
        layers=tuple(layers),
        after=tuple(f for _, f in steps[end:]),
        modules=modules,
    )
