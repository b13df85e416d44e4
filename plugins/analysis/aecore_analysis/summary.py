"""What a checkpoint holds, for ``ae inspect``: sizes per component and the module tree.

Counts come from the safetensors header (tensor shapes, no weights read), so
a checkpoint whose plugins are not installed can still be described; with a
loaded model they come from its parameters (buffers such as BatchNorm's
running statistics excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModuleNode", "component_of", "module_tree", "parameter_counts", "tensor_counts"]


def component_of(key: str) -> str:
    """``encoder.net.0.weight`` -> ``encoder``; ``regularizers.sparse.x`` -> ``sparse``."""
    parts = key.split(".")
    return parts[1] if parts[0] == "regularizers" and len(parts) > 1 else parts[0]


def tensor_counts(path: Path) -> dict[str, int]:
    """Elements stored per component, read from the file's header only (includes buffers)."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            n = math.prod(f.get_slice(key).get_shape())
            counts[component_of(key)] = counts.get(component_of(key), 0) + n
    return counts


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable-parameter count per component of a loaded model (encoder, decoder, regularizers)."""
    counts = {
        "encoder": sum(p.numel() for p in model.encoder.parameters()),
        "decoder": sum(p.numel() for p in model.decoder.parameters()),
    }
    for name, reg in model.regularizers.items():
        counts[name] = sum(p.numel() for p in reg.parameters())
    return counts


@dataclass
class ModuleNode:
    """One module of the tree: its name, class, description, own parameter count and children."""

    name: str
    kind: str
    text: str
    parameters: int
    children: list[ModuleNode] = field(default_factory=list)


def module_tree(module: Any, name: str = "model") -> ModuleNode:
    """The torch module tree with parameter counts (subtree totals)."""
    text = module.extra_repr()
    node = ModuleNode(name, type(module).__name__, text, sum(p.numel() for p in module.parameters()))
    for child_name, child in module.named_children():
        node.children.append(module_tree(child, child_name))
    return node
