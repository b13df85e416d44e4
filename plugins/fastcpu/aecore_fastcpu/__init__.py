"""aecore-fastcpu: a CPU training backend for aecore.

It holds oneDNN runs of Linear layers, a training step without the autograd
engine and a leaner fused Adam. It finds runs of plain ``nn.Linear`` layers
and activations by structure, so plugins write plain torch. The private
torch APIs it needs live only here (:mod:`aecore_fastcpu.private`); each is
probed once per process, and where one is missing or behaves differently
the backend steps aside and training runs on plain autograd.
"""

from aecore_fastcpu.backend import FastCPU, FastCPUConfig

__all__ = ["FastCPU", "FastCPUConfig"]
