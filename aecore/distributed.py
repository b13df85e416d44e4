"""Several processes: detect torchrun's environment, set up the process group, share out the work.

``ae train`` needs no flag for this: when torchrun's environment variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...) say there is
more than one process, the default trainer wraps the model in
DistributedDataParallel, each rank takes its share of every global batch,
metrics are summed across ranks, and only rank 0 writes files or shows
progress. The backend is gloo on CPU and NCCL on CUDA.

``ae train --nproc N`` starts the N processes itself (:func:`launch`), with
the environment ``torchrun --standalone`` would give them, and reports the
job as one process would: one line for a failure, with its exit code.

Importing this module does not import torch (the command line reads it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aecore.paths import WORKER_REPORTS_ENV

if TYPE_CHECKING:
    import torch

__all__ = [
    "Distributed",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "current",
    "launch",
    "max_over_ranks",
    "setup",
    "shutdown",
]


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
    import torch
    import torch.distributed as dist

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
    if _current.active:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    _current = _SINGLE


def current() -> Distributed:
    """The job this process joined with :func:`setup` (rank 0 of 1 otherwise)."""
    return _current


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op for a single process)."""
    if _current.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: object) -> bool:
    """Whether ``flag`` is true on any rank; every rank gets the same answer (one process: ``bool(flag)``)."""
    return bool(max_over_ranks(1 if flag else 0))


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' ``value``; every rank gets the same answer (one process: ``value``)."""
    if not _current.active:
        return value
    import torch
    import torch.distributed as dist

    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def barrier() -> None:
    """Wait for every rank (a no-op for a single process)."""
    if _current.active:
        import torch.distributed as dist

        dist.barrier()


# -- ae train --nproc N ---------------------------------------------------------------------------

#: Seconds the other processes get to end by themselves once one has failed, then after SIGTERM.
_GRACE = 3.0


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m aecore ARGS`` as ``nproc`` processes on this machine; returns the job's exit code.

    Each process gets what ``torchrun --standalone`` would set (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, and
    ``OMP_NUM_THREADS`` as this machine's cores shared out, unless set).
    Rank 0 prints as a single process would; the others print nothing. When
    a process fails, the others are stopped and the failure is reported
    once: the message of the process that failed first (rank 0's when they
    all failed alike), and its exit code. Ctrl-C and SIGTERM are passed on
    to every process exactly once each (they run in sessions of their own,
    so the terminal does not signal them a second time), so the job stops
    after the current step and saves its state, as one process does.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aecore-launch-") as folder:
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "GROUP_RANK": "0",
            WORKER_REPORTS_ENV: folder,
        }
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        job = _Job()
        with job.forwarding_signals():
            try:
                for rank in range(nproc):
                    log = None if rank == 0 else open(Path(folder) / f"{rank}.log", "wb")  # noqa: SIM115
                    job.start(
                        [sys.executable, "-m", "aecore", *args],
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        log=log,
                    )
                job.wait()
            finally:
                job.stop()
        return _outcome(job, Path(folder))


class _Job:
    """The launched processes, the signals passed on to them, and the order in which they ended."""

    def __init__(self) -> None:
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.signals: list[int] = []
        self._sent: list[int] = []  # how many of ``signals`` each worker has been sent
        self.ended: list[int] = []  # ranks, in the order their exit was seen

    def start(self, command: list[str], env: dict[str, str], log: Any) -> None:
        self.logs.append(log)
        self._sent.append(0)  # before the worker is listed: a signal may come at any moment
        worker = subprocess.Popen(
            command,
            env=env,
            stdout=None if log is None else subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # the terminal's Ctrl-C reaches only us; we pass it on once
        )
        self.workers.append(worker)
        self._deliver()  # the signals that came while it started

    def _deliver(self) -> None:
        for rank, worker in enumerate(self.workers):
            while self._sent[rank] < len(self.signals):
                if worker.poll() is None:
                    with contextlib.suppress(OSError):
                        worker.send_signal(self.signals[self._sent[rank]])
                self._sent[rank] += 1

    @contextlib.contextmanager
    def forwarding_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def forward(signum: int, frame: Any) -> None:
            self.signals.append(signum)
            self._deliver()

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _poll(self) -> None:
        for rank, worker in enumerate(self.workers):
            if rank not in self.ended and worker.poll() is not None:
                self.ended.append(rank)

    def wait(self) -> None:
        """Until every process has ended.

        Once one has failed, the others get a little while to end by
        themselves and are then stopped (they may be waiting for it in a
        collective). Not after Ctrl-C: then they are saving their state, and
        a second Ctrl-C stops them at once.
        """
        failed_at = None
        while len(self.ended) < len(self.workers):
            time.sleep(0.02)
            self._poll()
            if failed_at is None and any(self.workers[r].returncode != 0 for r in self.ended):
                failed_at = time.monotonic()
            if failed_at is not None and not self.signals and time.monotonic() - failed_at > _GRACE:
                self.stop()

    def stop(self) -> None:
        """End whatever still runs: SIGTERM, then SIGKILL for a process that ignores it."""
        running = [w for w in self.workers if w.poll() is None]
        for worker in running:
            with contextlib.suppress(OSError):
                worker.terminate()
        deadline = time.monotonic() + _GRACE
        for worker in running:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self._poll()
        for log in self.logs:
            if log is not None:
                log.close()


def _outcome(job: _Job, folder: Path) -> int:
    """Print the job's failure once, as one process would; returns the exit code."""
    reports = []
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            reports.append(json.loads(path.read_text(encoding="utf-8")))
    if reports:
        first = min(reports, key=lambda r: r["time"])
        main = next((r for r in reports if r["rank"] == 0 and r["code"] == first["code"]), first)
        _print_error(str(main["text"]))
        return int(main["code"])
    for rank in job.ended:
        code = job.workers[rank].returncode
        if code:
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"ended with exit code {code}"
            last = _last_line(folder / f"{rank}.log")
            _print_error(f"error: process {rank} of {len(job.workers)} {how}{f': {last}' if last else ''}.\n")
            return 128 - code if code < 0 else code
    if job.signals:  # every process had finished its work when the signal came
        _print_error("error: interrupted.\n")
        return 130
    return 0


def _print_error(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
