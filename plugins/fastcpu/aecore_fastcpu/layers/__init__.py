"""Building blocks with a faster CPU path: same weights, same maths, same state dicts as torch's.

Why this exists: on CPU, ``torch.nn.Linear`` runs its float32 matrix
products through MKL's ``sgemm``. On CPUs MKL does not tune for (AMD's,
for one) that is its AVX2 code path, while the oneDNN library inside the
same torch wheel picks kernels by instruction set and uses AVX-512 where
present: about twice as fast for the reference models' larger layers on the
AMD EPYC this project is benchmarked on (docs/performance.md). oneDNN also
applies the activation while the product is still in cache.

- :func:`linear` is ``act(F.linear(x, weight, bias))``; :class:`Linear` is an
  ``nn.Linear`` that calls it.
- :class:`Sequential` is an ``nn.Sequential`` that runs each stretch of Linear
  layers and activations as one autograd node (blocks join a stretch by
  implementing :class:`FusableBlock`).
- An encoder and a decoder that implement :class:`ModuleChain` are run as one
  chain by the model, so their Linear layers fuse across the code.

Every case the fast path does not cover falls back to torch: other devices
and dtypes, autocast, ``torch.compile`` tracing, ``torch.func`` transforms,
tensor subclasses, hooked modules and small products (see
:mod:`aecore.layers.backend` for the rule). Gradients of gradients, as the
contractive penalty takes them, are supported. ``AECORE_LINEAR_BACKEND=torch``
(or :func:`set_linear_backend`) turns the whole path off.
"""

from __future__ import annotations

from aecore.layers.backend import (
    BACKENDS,
    FUSED_ACTIVATIONS,
    linear_backend,
    set_linear_backend,
)
from aecore.layers.chain import FusableBlock, ModuleChain, Sequential, chain_of, run_layers, run_modules
from aecore.layers.linear import Linear, linear

__all__ = [
    "BACKENDS",
    "FUSED_ACTIVATIONS",
    "FusableBlock",
    "Linear",
    "ModuleChain",
    "Sequential",
    "chain_of",
    "linear",
    "linear_backend",
    "run_layers",
    "run_modules",
    "set_linear_backend",
]
