"""The README's main job, conv + sparse, against a plain PyTorch loop: whole process and per epoch.

Each contestant runs in a fresh process, alternating, at the same thread count:

(a) ``aecore``  ``aecore.train(encoder="conv", regularizers=["sparse"], data="mnist", val_fraction=0,
                epochs=E, threads=T)``: what ``ae train --encoder conv --reg sparse --data mnist
                --val-fraction 0`` runs, with a hook noting each epoch's end;
(b) ``plain``   the same modules from ``aecore.compose("conv", "conv", [])``, the loss
                ``mse + 1e-3 · mean|z|`` (the sparse regularizer's default), ``torch.optim.Adam``
                at lr 1e-3, a ``randperm`` sliced in batches of 128 from one float32 tensor,
                autograd; then the test MSE over all test images.

The figures are each process's wall time (start-up, data, training, test,
save) and its seconds per epoch, as medians; the ratios are (a)/(b), and
the test MSE per pixel of both is printed so a faster loop that learns less
shows up::

    python -m benchmarks --only mainjob --data-dir ../shared/data/mnist --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.stats import ratio, target

__all__ = ["LIMIT_RATIO", "run_mainjob"]

#: The issue's bound for aecore / plain, per epoch and whole-process.
LIMIT_RATIO = 0.8
#: The test MSE of the two must agree within this share.
MSE_TOLERANCE = 0.02
BATCH = 128


def _child_aecore(
    data_dir: str | None, epochs: int, threads: int, out: str, limit: int | None
) -> dict[str, Any]:
    import torch

    from aecore.training import train
    from benchmarks.throughput import EpochTimer

    timer = EpochTimer()
    data: Any = "mnist" if data_dir else "embedded"
    if limit:
        from dataclasses import replace

        from aecore.sources import load_dataset

        full = load_dataset(data, data_dir)
        data = replace(full, train=full.train.subset(torch.arange(min(limit, len(full.train)))))
    result = train(
        encoder="conv",
        regularizers=["sparse"],
        data=data,
        data_dir=data_dir if isinstance(data, str) else None,
        val_fraction=0.0,
        epochs=epochs,
        threads=threads,
        out=out,
        progress=False,
        hooks=[timer],
    )
    return {"epoch_seconds": timer.epoch_seconds(), "test_mse": result.metrics["test_mse_per_pixel"]}


def _child_plain(data_dir: str | None, epochs: int, threads: int, limit: int | None) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from aecore.composition import compose
    from aecore.sources import load_dataset

    torch.set_num_threads(threads)
    dataset = load_dataset("mnist" if data_dir else "embedded", data_dir)
    n = min(limit or len(dataset.train), len(dataset.train))
    x = dataset.train.batch(slice(0, n)).contiguous()
    test = dataset.test.batch(slice(0, len(dataset.test))).contiguous()
    torch.manual_seed(0)
    model = compose("conv", "conv", [], input_shape=tuple(x.shape[1:]), latent_dim=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    marks = [time.perf_counter()]
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(n, generator=generator).split(BATCH):
            xb = x[index]
            z = model.encoder(xb)
            loss = F.mse_loss(model.decoder(z), xb) + 1e-3 * z.abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        marks.append(time.perf_counter())
    model.eval()
    with torch.no_grad():
        total = sum(
            float(F.mse_loss(model.decoder(model.encoder(b)), b, reduction="sum")) for b in test.split(1000)
        )
    return {
        "epoch_seconds": [b - a for a, b in itertools.pairwise(marks)],
        "test_mse": total / test.numel(),
    }


def _spawn(args: list[str]) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.mainjob", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.mainjob {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def run_mainjob(
    data_dir: Path | None, *, epochs: int = 1, threads: int = 1, repeats: int = 3, limit: int | None = None
) -> dict[str, Any]:
    """Alternate fresh processes of (a) and (b) ``repeats`` times; medians, ratios and targets."""
    common = ["--epochs", str(epochs), "--threads", str(threads)]
    if data_dir is not None:
        common += ["--data-dir", str(data_dir)]
    if limit:
        common += ["--limit", str(limit)]
    runs: dict[str, list[dict[str, Any]]] = {"aecore": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="aecore-bench-mainjob-") as tmp:
        for rep in range(repeats):
            for name in runs:
                extra = ["--out", str(Path(tmp) / f"run-{rep}")] if name == "aecore" else []
                wall, figures = _spawn(["--child", name, *common, *extra])
                runs[name].append({"wall_seconds": wall, **figures})
    med = {
        name: {
            "wall_seconds": statistics.median(r["wall_seconds"] for r in records),
            "seconds_per_epoch": statistics.median(statistics.mean(r["epoch_seconds"]) for r in records),
            "test_mse": statistics.median(r["test_mse"] for r in records),
        }
        for name, records in runs.items()
    }
    ratios = {
        key: ratio(med["aecore"][key], med["plain"][key]) for key in ("wall_seconds", "seconds_per_epoch")
    }
    mse_gap = abs(med["aecore"]["test_mse"] / med["plain"]["test_mse"] - 1.0)
    return {
        "workload": {
            "data": "mnist" if data_dir is not None else "embedded",
            "limit": limit,
            "epochs": epochs,
            "threads": threads,
            "repeats": repeats,
            "batch_size": BATCH,
        },
        "runs": runs,
        "medians": med,
        "ratios": ratios,
        "test_mse_gap": mse_gap,
        "targets": [
            target("aecore/plain whole process (conv + sparse)", ratios["wall_seconds"], LIMIT_RATIO),
            target("aecore/plain per epoch (conv + sparse)", ratios["seconds_per_epoch"], LIMIT_RATIO),
            target("test MSE gap to the plain loop", mse_gap, MSE_TOLERANCE),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("aecore", "plain"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child == "aecore":
        print(json.dumps(_child_aecore(args.data_dir, args.epochs, args.threads, args.out, args.limit)))
    elif args.child == "plain":
        print(json.dumps(_child_plain(args.data_dir, args.epochs, args.threads, args.limit)))
    else:
        data_dir = Path(args.data_dir) if args.data_dir else None
        record = run_mainjob(
            data_dir, epochs=args.epochs, threads=args.threads, repeats=args.repeats, limit=args.limit
        )
        print(json.dumps({k: record[k] for k in ("medians", "ratios", "test_mse_gap")}, indent=2))


if __name__ == "__main__":
    main()
