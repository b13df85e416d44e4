"""One benchmark run: the machine record, the chosen sections, the JSON file.

The record says where and under what load the figures were taken (CPU
model, usable cores, torch version and threads, load average at start and
end), because on a shared machine a figure means little without them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["SECTIONS", "BenchSettings", "machine_info", "run_bench"]

SECTIONS = (
    "throughput",
    "inference",
    "startup",
    "completion",
    "memory",
    "data",
    "sae",
    "matrix",
    "mainjob",
    "anomaly",
)
SCHEMA = "aecore.bench/1"


@dataclass
class BenchSettings:
    """What to run; ``None`` repeats means each section's default (5 for throughput, inference and
    start-up, 3 for memory)."""

    data_dir: Path | None = None
    epochs: int = 2
    limit: int | None = None
    repeats: int | None = None
    only: tuple[str, ...] = SECTIONS
    json_out: Path | None = None
    matmul_size: int = 2048
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    amp: bool = False  # also time (a') with bfloat16 autocast (slow on CPUs without bf16 units)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return [math.nan] * 3


def machine_info() -> dict[str, Any]:
    """CPU, cores, versions and threads (the load average is added by :func:`run_bench`)."""
    import torch

    from aecore.entry_points import installed_version

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "aecore": installed_version("aecore"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def default_json_path(started: _dt.datetime) -> Path:
    return Path("bench-results") / f"bench-{started.strftime('%Y%m%d-%H%M%S')}.json"


def run_bench(settings: BenchSettings, console: Console | None = None) -> dict[str, Any]:
    """Run the chosen sections, print their tables, write and return the JSON record."""
    import torch

    from benchmarks.report import print_report

    console = console or Console(highlight=False)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    started = _dt.datetime.now().astimezone()
    clock = time.perf_counter()
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_start": _load()},
        "settings": {
            "data_dir": None if settings.data_dir is None else str(settings.data_dir),
            "epochs": settings.epochs,
            "limit": settings.limit,
            "repeats": settings.repeats,
            "only": list(settings.only),
            "threads": settings.threads,
        },
    }
    if "throughput" in settings.only:
        from benchmarks.throughput import run_throughput

        tables = {"cpu": ("throughput", "throughput")}
        if torch.cuda.is_available():  # the same table on the GPU, where there is one
            tables["cuda"] = ("throughput_gpu", "throughput on GPU")
        for device, (key, label) in tables.items():
            console.print(f"[bold]{label}[/] (training progress goes to stderr) ...")
            record[key] = run_throughput(
                settings.data_dir,
                epochs=settings.epochs,
                limit=settings.limit,
                repeats=settings.repeats or 5,
                matmul_size=settings.matmul_size,
                device=device,
                amp=settings.amp,
            )
    if "inference" in settings.only:
        from benchmarks.inference import run_inference

        console.print("[bold]inference[/] ...")
        record["inference"] = run_inference(settings.data_dir, repeats=settings.repeats or 5)
    if "startup" in settings.only:
        from benchmarks.startup import run_startup

        console.print("[bold]start-up[/] ...")
        record["startup"] = run_startup(repeats=settings.repeats or 5)
    if "completion" in settings.only:
        from benchmarks.completion import run_completion

        console.print("[bold]shell completion[/] ...")
        record["completion"] = run_completion(repeats=settings.repeats or 5)
    if "memory" in settings.only:
        from benchmarks.memory import run_memory

        console.print("[bold]memory[/] ...")
        record["memory"] = run_memory(
            settings.data_dir,
            limit=settings.limit,
            threads=torch.get_num_threads(),
            repeats=settings.repeats or 3,
        )
    if "data" in settings.only:
        from benchmarks.data import run_data

        console.print("[bold]data[/] (folders, mapped caches, colour, order) ...")
        record["data"] = run_data(
            settings.data_dir,
            limit=settings.limit,
            threads=torch.get_num_threads(),
            repeats=settings.repeats or 3,
        )
    if "sae" in settings.only:
        from benchmarks.sae import run_sae_speed

        console.print("[bold]sparse autoencoder[/] (aecore-sae against a plain loop) ...")
        record["sae"] = run_sae_speed(
            rows=settings.limit or 60_000, epochs=settings.epochs, repeats=settings.repeats or 3
        )
    if "matrix" in settings.only:
        from benchmarks.matrix import run_matrix

        console.print("[bold]matrix[/] (every encoder family × regularizer against a plain loop) ...")
        record["matrix"] = run_matrix(settings.data_dir, repeats=settings.repeats or 2)
    if "mainjob" in settings.only:
        from benchmarks.mainjob import run_mainjob

        console.print("[bold]main job[/] (conv + sparse against a plain loop, fresh processes) ...")
        record["mainjob"] = run_mainjob(
            settings.data_dir,
            epochs=1,
            threads=settings.threads or 1,
            repeats=settings.repeats or 3,
            limit=settings.limit,
        )
    if "anomaly" in settings.only:
        from benchmarks.anomaly import run_anomaly

        console.print("[bold]anomaly[/] (one-class MNIST, all ten digits, every score) ...")
        record["anomaly"] = run_anomaly(
            settings.data_dir, epochs=None if settings.data_dir else 1, threads=settings.threads or 1
        )
    record["machine"]["load_average_end"] = _load()
    record["duration_seconds"] = time.perf_counter() - clock
    record = _clean(record)
    path = settings.json_out or default_json_path(started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    record["json_path"] = str(path)
    print_report(console, record)
    console.print(f"record written to {path}", highlight=False)
    return record
