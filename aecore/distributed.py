"""Running under ``torchrun``: detect it, set up the process group, share out the work.

``ae train`` needs no flag for this: when torchrun's environment variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...) say there is
more than one process, the default trainer wraps the model in
DistributedDataParallel, each rank takes its share of every global batch,
metrics are summed across ranks, and only rank 0 writes files or shows
progress. The backend is gloo on CPU and NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "all_reduce_sum", "barrier", "current", "setup", "shutdown"]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (parts differ in size by at most one)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


_SINGLE = Distributed()
_current = _SINGLE


def from_environment() -> Distributed:
    """What torchrun's environment variables say (rank 0 of 1 when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _SINGLE
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun; returns the job and this rank's device."""
    global _current
    info = from_environment()
    if not info.active:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _current = info
    return info, device


def shutdown() -> None:
    """Leave the process group (safe to call when there is none)."""
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = _SINGLE


def current() -> Distributed:
    """The job this process joined with :func:`setup` (rank 0 of 1 otherwise)."""
    return _current


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op for a single process)."""
    if _current.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank (a no-op for a single process)."""
    if _current.active:
        dist.barrier()
