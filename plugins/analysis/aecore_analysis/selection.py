"""Model selection: k-fold cross-validation of one configuration, and grids over sizes.

Both train through :func:`aecore.training.train`, the same path as
``ae train``, handing it an explicit :class:`~aecore.data.Dataset` for each
fold or grid point; so every trainer, regularizer and option behaves exactly
as in a single run.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aecore.data import Dataset, TensorData
from aecore.errors import ConfigError
from aecore.losses import get_loss
from aecore.model import Autoencoder

__all__ = [
    "CVResult",
    "FoldResult",
    "SweepPoint",
    "SweepResult",
    "cross_validate",
    "fold_indices",
    "hidden_label",
    "parse_hidden_grid",
    "parse_int_grid",
    "sweep",
]


def fold_indices(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, validation) index pairs of a seeded k-fold split; fold sizes differ by at most one."""
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}.")
    if n < folds:
        raise ConfigError(f"cannot split {n} samples into {folds} folds.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, folds)
    return [(torch.cat([p for j, p in enumerate(parts) if j != i]), parts[i]) for i in range(folds)]


@torch.no_grad()
def _mean_loss(model: Autoencoder, data: TensorData, loss: str, device: torch.device | str) -> float:
    """The training loss (mse, bce, l1) on ``data``, averaged over samples like the trainer's validation."""
    loss_fn = get_loss(loss)
    model.eval()
    total = 0.0
    for xb in data.batches(1000):
        xb = xb.to(device)
        total += float(loss_fn(model(xb), xb).double()) * xb.shape[0]
    return total / len(data)


@dataclass
class FoldResult:
    """One fold: sizes, the loss and reconstruction error on its held-out part."""

    fold: int
    n_train: int
    n_val: int
    val_loss: float
    val_mse_per_pixel: float
    val_sse_per_image: float
    train_loss: float


@dataclass
class CVResult:
    """Per-fold results with the mean and sample standard deviation of the held-out loss."""

    folds: list[FoldResult]
    loss: str

    @property
    def mean(self) -> float:
        return statistics.fmean(f.val_loss for f in self.folds)

    @property
    def std(self) -> float:
        return statistics.stdev(f.val_loss for f in self.folds) if len(self.folds) > 1 else 0.0

    @property
    def mean_sse(self) -> float:
        return statistics.fmean(f.val_sse_per_image for f in self.folds)

    @property
    def std_sse(self) -> float:
        return statistics.stdev(f.val_sse_per_image for f in self.folds) if len(self.folds) > 1 else 0.0


def _run_dir(keep_dir: Path | None, name: str, scratch: Path) -> Path:
    return (keep_dir if keep_dir is not None else scratch) / name


def cross_validate(
    dataset: Dataset,
    *,
    folds: int = 5,
    seed: int = 0,
    classes: Sequence[int] | None = None,
    keep_dir: Path | None = None,
    overwrite: bool = False,
    on_fold: Callable[[FoldResult], None] | None = None,
    **train_kwargs: Any,
) -> CVResult:
    """Train one configuration on k-1 folds of the training split and score the held-out fold, k times.

    ``train_kwargs`` go to :func:`aecore.training.train` unchanged (encoder,
    params, loss, device, ...). The folds come from a permutation seeded by
    ``seed`` (after keeping ``classes``), and each fold trains with the same
    ``seed``. Models go to ``keep_dir/fold-<i>`` when given, otherwise to a
    temporary directory that is removed afterwards.
    """
    from aecore.training import train
    from aecore.training.run import keep_classes

    data = dataset.train if classes is None else keep_classes(dataset.train, classes, dataset.name)
    splits = fold_indices(len(data), folds, seed)
    loss = train_kwargs.get("loss", "mse")
    results: list[FoldResult] = []
    with tempfile.TemporaryDirectory(prefix="aecore-cv-") as scratch:
        for i, (train_idx, val_idx) in enumerate(splits, start=1):
            part = Dataset(dataset.name, data.subset(train_idx), data.subset(val_idx), dict(dataset.spec))
            res = train(
                data=part,
                seed=seed,
                classes=classes,
                val_fraction=0.0,
                out=_run_dir(keep_dir, f"fold-{i}", Path(scratch)),
                overwrite=overwrite,
                **train_kwargs,
            )
            device = next(res.model.parameters()).device
            fold = FoldResult(
                fold=i,
                n_train=len(train_idx),
                n_val=len(val_idx),
                val_loss=_mean_loss(res.model, part.test, loss, device),
                val_mse_per_pixel=res.metrics["test_mse_per_pixel"],
                val_sse_per_image=res.metrics["test_sse_per_image"],
                train_loss=res.metrics.get("train_loss", math.nan),
            )
            results.append(fold)
            if on_fold is not None:
                on_fold(fold)
    return CVResult(results, loss)


def parse_int_grid(text: str, option: str = "--latent-dim") -> list[int]:
    """``"2,8,16"`` as positive integers, in the given order, without repeats."""
    values: list[int] = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(f"{option} expects comma-separated integers, got '{text}'.") from None
        if value < 1:
            raise ConfigError(f"{option} values must be positive, got {value}.")
        if value not in values:
            values.append(value)
    if not values:
        raise ConfigError(f"{option} gives an empty grid; list at least one value, e.g. 2,8,32.")
    return values


def parse_hidden_grid(text: str) -> list[tuple[int, ...]]:
    """``"256|512,256|512,256,128"`` as hidden-width tuples, one per ``|``-separated item."""
    grid: list[tuple[int, ...]] = []
    for item in text.split("|"):
        if not item.strip():
            continue
        try:
            widths = tuple(int(w) for w in item.split(",") if w.strip())
        except ValueError:
            raise ConfigError(
                f"--hidden expects |-separated lists of widths, e.g. '256|512,256', got '{text}'."
            ) from None
        if not widths or any(w < 1 for w in widths):
            raise ConfigError(f"--hidden widths must be positive integers, got '{item}'.")
        if widths not in grid:
            grid.append(widths)
    if not grid:
        raise ConfigError("--hidden gives an empty grid; list at least one, e.g. '256|512,256'.")
    return grid


def hidden_label(hidden: Sequence[int] | None) -> str:
    """``512-256`` for hidden widths (512, 256); empty for none."""
    return "-".join(str(w) for w in hidden) if hidden else ""


@dataclass
class SweepPoint:
    """One trained grid point: its sizes and its figures."""

    latent_dim: int | None
    hidden: tuple[int, ...] | None
    parameters: int
    compression_ratio: float
    test_sse_per_image: float
    test_mse_per_pixel: float
    test_psnr: float
    train_loss: float
    val_recon: float
    seconds: float

    def as_row(self) -> dict[str, Any]:
        """The CSV row: hidden widths as ``512-256`` and their count as ``depth``."""
        return {
            "latent_dim": self.latent_dim,
            "hidden": hidden_label(self.hidden),
            "depth": len(self.hidden or ()),
            "parameters": self.parameters,
            "compression_ratio": self.compression_ratio,
            "test_sse_per_image": self.test_sse_per_image,
            "test_mse_per_pixel": self.test_mse_per_pixel,
            "test_psnr": self.test_psnr,
            "train_loss": self.train_loss,
            "val_recon": self.val_recon,
            "seconds": self.seconds,
        }


@dataclass
class SweepResult:
    """All grid points in training order."""

    points: list[SweepPoint]
    swept: list[str]


def sweep(
    dataset: Dataset,
    *,
    latent_dims: Sequence[int] | None = None,
    hiddens: Sequence[tuple[int, ...]] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    keep_dir: Path | None = None,
    overwrite: bool = False,
    on_point: Callable[[SweepPoint], None] | None = None,
    **train_kwargs: Any,
) -> SweepResult:
    """Train every combination of ``latent_dims`` × ``hiddens`` with the same budget and seed.

    ``hiddens`` set ``encoder.hidden`` (a mirroring decoder follows), so it
    sweeps the depth and width of MLP-like encoders. Models go to
    ``keep_dir/<label>`` when given, otherwise to a temporary directory.
    """
    from aecore.training import train

    latents: list[int | None] = list(latent_dims) if latent_dims else [None]
    widths: list[tuple[int, ...] | None] = list(hiddens) if hiddens else [None]
    if (latent_dims is not None and not latent_dims) or (hiddens is not None and not hiddens):
        raise ConfigError("the sweep grid is empty; give at least one value.")
    swept = [name for name, grid in (("latent_dim", latent_dims), ("hidden", hiddens)) if grid]
    if not swept:
        raise ConfigError("nothing to sweep: give --latent-dim and/or --hidden with a list of values.")
    base = {k: dict(v) for k, v in (params or {}).items()}
    fixed_latent = train_kwargs.pop("latent_dim", None)
    points: list[SweepPoint] = []
    with tempfile.TemporaryDirectory(prefix="aecore-sweep-") as scratch:
        for hidden in widths:
            for latent in latents:
                run_params = {k: dict(v) for k, v in base.items()}
                if hidden is not None:
                    run_params.setdefault("encoder", {})["hidden"] = ",".join(map(str, hidden))
                latent_dim = latent if latent is not None else fixed_latent
                name = "-".join(p for p in (f"latent{latent}" if latent else "", hidden_label(hidden)) if p)
                start = time.perf_counter()
                res = train(
                    data=dataset,
                    params=run_params,
                    latent_dim=latent_dim,
                    out=_run_dir(keep_dir, name, Path(scratch)),
                    overwrite=overwrite,
                    **train_kwargs,
                )
                m = res.metrics
                used = res.model.spec.encoder.params.get("hidden")
                point = SweepPoint(
                    latent_dim=res.model.latent_dim,
                    hidden=hidden if hidden is not None else (tuple(used) if used else None),
                    parameters=res.model.num_parameters(),
                    compression_ratio=res.model.compression_ratio,
                    test_sse_per_image=m["test_sse_per_image"],
                    test_mse_per_pixel=m["test_mse_per_pixel"],
                    test_psnr=m.get("test_psnr", math.nan),
                    train_loss=m.get("train_loss", math.nan),
                    val_recon=m.get("val_recon", math.nan),
                    seconds=time.perf_counter() - start,
                )
                points.append(point)
                if on_point is not None:
                    on_point(point)
    return SweepResult(points, swept)
