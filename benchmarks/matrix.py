"""The benchmark matrix: every shipped encoder family × the common regularizers, aecore against a plain loop.

Each cell trains one model two ways, alternating, at the same thread count:

(a) ``aecore``  :func:`aecore.train` with the cell's request (backend ``auto``, the default
                trainer, hooks as installed), on the first ``steps × batch`` training images;
(b) ``plain``   the same modules, built by :func:`aecore.compose` from the same resolved
                request and seed, trained by a hand-written loop: one float32 tensor in
                memory sliced by a ``randperm``, ``model(x, loss_fn=mse)`` (the model's own
                forward and loss terms), ``backward()``, ``torch.optim.Adam``.

Both run two epochs; the figure is the median seconds per step of the second
epoch, from its first step's end to its last (so start-up, the test
evaluation and the end-of-epoch save are outside it). The ratio is (a)/(b):
below 1 aecore's path is faster. Cells above 1.0 fail the target; cells
above 0.9 are listed as work left.

    python -m benchmarks --only matrix --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aecore.hooks import hookimpl
from benchmarks.stats import ratio, target

__all__ = ["ENCODERS", "REGULARIZERS", "run_matrix"]

#: Rows: a name and the RunRequest fields that build that family.
ENCODERS: dict[str, dict[str, Any]] = {
    "mlp": {"encoder": "mlp"},
    "conv, strided": {"encoder": "conv"},
    "conv, pooled": {
        "encoder": "conv",
        "params": {"encoder": {"downsample": "pool"}, "decoder": {"downsample": "pool"}},
    },
    "conv, batch norm": {
        "encoder": "conv",
        "params": {"encoder": {"batch_norm": True}, "decoder": {"batch_norm": True}},
    },
    "record-30": {"preset": "record-30"},
}
#: Columns: a name and the regularizers (with their parameters) added to each row.
REGULARIZERS: dict[str, dict[str, Any]] = {
    "none": {},
    "sparse": {"regularizers": ("sparse",)},
    "denoising": {"regularizers": ("denoising",)},
    "variational": {"regularizers": ("variational",)},
    "contractive": {"regularizers": ("contractive",), "params": {"contractive": {"method": "hutchinson"}}},
}
LIMIT_RATIO = 1.0
#: Cells above this ratio are listed as work left even when they pass.
WATCH_RATIO = 0.9


class _StepClock:
    """perf_counter at the end of every step of epoch 2 (a hook plugin)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    @hookimpl
    def ae_step_end(self, run: Any, epoch: int, step: int, batch_size: int, loss: Any) -> None:
        if epoch == 2:
            self.marks.append(time.perf_counter())


def _per_step(marks: list[float]) -> float:
    return (marks[-1] - marks[0]) / max(1, len(marks) - 1)


def _request(row: dict[str, Any], column: dict[str, Any], batch: int) -> Any:
    from aecore.request import RunRequest

    params: dict[str, dict[str, Any]] = {}
    for part in (row.get("params", {}), column.get("params", {})):
        for key, values in part.items():
            params.setdefault(key, {}).update(values)
    fields = {k: v for k, v in {**row, **column}.items() if k != "params"}
    return RunRequest(**fields, params=params, batch_size=batch, epochs=2, val_fraction=0.0, data=None)


def _aecore(request: Any, data: Any, out: Path) -> float:
    from aecore.training import train

    clock = _StepClock()
    train(replace(request, out=str(out)), data=data, progress=False, hooks=[clock])
    return _per_step(clock.marks)


def _plain(request: Any, x: torch.Tensor, batch: int, seed: int) -> float:
    from aecore.composition import compose
    from aecore.request import resolve

    plan = resolve(request)
    torch.manual_seed(seed)
    model = compose(
        plan.encoder,
        plan.decoder,
        plan.regularizers,
        input_shape=tuple(x.shape[1:]),
        latent_dim=plan.latent_dim,
        params=plan.components,
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=float(plan.trainer_params.get("lr", 1e-3)))
    generator = torch.Generator().manual_seed(seed)
    marks: list[float] = []
    for epoch in (1, 2):
        for index in torch.randperm(len(x), generator=generator).split(batch):
            terms = model(x[index], loss_fn=F.mse_loss)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # as the trainer does, once per step
            if epoch == 2:
                marks.append(time.perf_counter())
    return _per_step(marks)


def run_matrix(
    data_dir: Path | None, *, steps: int = 25, batch: int = 128, repeats: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Seconds per step of (a) and (b) in every cell, ``repeats`` times alternating; ratios and targets."""
    from aecore.sources import load_dataset

    dataset = load_dataset("mnist", data_dir) if data_dir is not None else load_dataset("embedded", None)
    rows = min(len(dataset.train), steps * batch)
    sliced = replace(
        dataset,
        train=dataset.train.subset(torch.arange(rows)),
        test=dataset.test.subset(torch.arange(min(len(dataset.test), batch))),
    )
    x = sliced.train.batch(slice(0, rows)).contiguous()  # the plain loop's float tensor, built untimed
    cells: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aecore-bench-matrix-") as tmp:
        for row_name, row in ENCODERS.items():
            for column_name, column in REGULARIZERS.items():
                request = _request(row, column, batch)
                times: dict[str, list[float]] = {"aecore": [], "plain": []}
                for rep in range(repeats):
                    gc.collect()
                    out = Path(tmp) / f"{len(cells)}-{rep}"
                    times["aecore"].append(_aecore(request, sliced, out))
                    gc.collect()
                    times["plain"].append(_plain(request, x, batch, seed))
                medians = {name: statistics.median(t) for name, t in times.items()}
                cells[f"{row_name} × {column_name}"] = {
                    "encoder": row_name,
                    "regularizer": column_name,
                    "seconds_per_step": medians,
                    "runs": times,
                    "ratio": ratio(medians["aecore"], medians["plain"]),
                }
    targets = [
        target(f"aecore/plain per step: {name}", cell["ratio"], LIMIT_RATIO) for name, cell in cells.items()
    ]
    return {
        "workload": {
            "data": dataset.name,
            "rows": rows,
            "batch_size": batch,
            "steps_per_epoch": -(-rows // batch),
            "repeats": repeats,
            "threads": torch.get_num_threads(),
        },
        "encoders": list(ENCODERS),
        "regularizers": list(REGULARIZERS),
        "cells": cells,
        "work_left": [name for name, cell in cells.items() if not cell["ratio"] <= WATCH_RATIO],
        "targets": targets,
    }
