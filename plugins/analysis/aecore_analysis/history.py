"""Training curves from a run's ``metrics.json``: which series there are, and the loss figure.

``ae train`` records one dict per epoch (``train_loss``, ``train_recon``,
one ``train_<regularizer>`` per penalty, ``val_recon``, ``lr``); a trainer
may add others (greedy pretraining logs ``pretrain_loss`` per pair). Every
numeric series is plotted by name, so new terms appear without changes here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aecore.errors import CheckpointError

__all__ = ["METRICS_FILE", "loss_series", "plot_loss", "read_metrics"]

METRICS_FILE = "metrics.json"
#: Bookkeeping fields of a history entry, not losses.
NOT_LOSSES = {"epoch", "lr", "stopped_early", "best_val_recon", "pretrain_pair", "pretrain_epoch"}


def read_metrics(run: Path) -> tuple[Path, dict[str, Any]]:
    """The run directory and its parsed ``metrics.json`` (``run`` may also be a file inside it)."""
    run_dir = run if run.is_dir() else run.parent
    path = run_dir / METRICS_FILE
    if not run.exists():
        raise CheckpointError(f"{run} does not exist; pass a run directory written by 'ae train'.")
    if not path.is_file():
        raise CheckpointError(f"no {METRICS_FILE} in {run_dir}; pass a run directory written by 'ae train'.")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise CheckpointError(f"{path} has no per-epoch 'history' list; was it written by 'ae train'?")
    return run_dir, metrics


def loss_series(history: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{name: (epochs, values)}`` for every loss logged per epoch of the main training.

    Entries without ``train_loss`` (pretraining phases) are left out; their
    ``pretrain_loss`` becomes one series per pair, ``pretrain_pair<i>``.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    main = [h for h in history if isinstance(h, dict) and "train_loss" in h]
    for i, entry in enumerate(main, start=1):
        epoch = float(entry.get("epoch", i))
        for name, value in entry.items():
            if name in NOT_LOSSES or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(epoch)
            ys.append(float(value))
    for entry in history:
        if isinstance(entry, dict) and "pretrain_loss" in entry:
            pair = int(entry.get("pretrain_pair", 0))
            xs, ys = series.setdefault(f"pretrain_pair{pair}", ([], []))
            xs.append(float(entry.get("pretrain_epoch", len(xs) + 1)))
            ys.append(float(entry["pretrain_loss"]))
    return series


def plot_loss(series: dict[str, tuple[list[float], list[float]]], path: Path, title: str = "") -> Path:
    """Loss per epoch, one line per series; log scale when every value is positive."""
    from aecore_analysis.plots import figure, save_figure

    pretrain = {k: v for k, v in series.items() if k.startswith("pretrain_")}
    main = {k: v for k, v in series.items() if k not in pretrain}
    panels = [p for p in (main, pretrain) if p] or [main]
    fig, axes = figure(ncols=len(panels) or 1, figsize=(5.5 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, (xs, ys) in panel.items():
            style = "--" if name.startswith("val_") else "-"
            ax.plot(xs, ys, style, marker="o", markersize=3, label=name)
        values = [y for _, ys in panel.values() for y in ys]
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if "val_recon" in main:
        xs, ys = main["val_recon"]
        best = min(range(len(ys)), key=ys.__getitem__)
        axes[0][0].annotate(
            f"best {ys[best]:.4g}",
            (xs[best], ys[best]),
            textcoords="offset points",
            xytext=(0, 8),
            fontsize=7,
        )
    if pretrain:
        axes[0][-1].set_title("layer-wise pretraining", fontsize=9)
    if title:
        axes[0][0].set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=100)
