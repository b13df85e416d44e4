"""``ae eval``: reload a checkpoint, measure its test reconstruction error, compare it with PCA.

PCA with as many components as the model has code units is the best linear
code of that size, so the ratio model SSE / PCA SSE says how much the
non-linear model gains (below 1) or loses (above 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from aecore.cli.common import load_model_and_data, output_file
from aecore.cli.output import console


def format_test_error(metrics: Mapping[str, float], prefix: str = "") -> str:
    """One line of test figures; training and ``ae eval`` print the same format."""
    parts = [
        f"MSE/pixel {metrics[prefix + 'mse_per_pixel']:.6g}",
        f"SSE/image {metrics[prefix + 'sse_per_image']:.6g}",
    ]
    if prefix + "psnr" in metrics:
        parts.append(f"PSNR {metrics[prefix + 'psnr']:.4g} dB")
    return " · ".join(parts)


def eval_command(
    path: Annotated[Path, typer.Argument(help="A model.safetensors file or a run directory.")],
    data: Annotated[
        str | None, typer.Option(help="Dataset (default: the one the model was trained on).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Local copy of the dataset.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
    pca: Annotated[
        bool, typer.Option(help="Compare with PCA at the same code size, fitted on the training split.")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Also write the figures as CSV (metric, model, pca, ratio).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Report test MSE per pixel, SSE per image, PSNR and BCE of a saved model, next to PCA's."""
    import math

    from aecore.evaluate import bce_per_pixel, component_metrics, reconstruction_metrics

    target = output_file(out, out, overwrite) if out is not None else None
    loaded = load_model_and_data(path, data, data_dir, device)
    model, dataset = loaded.model, loaded.dataset
    torch_device = next(model.parameters()).device
    metrics = reconstruction_metrics(model, dataset.test, device=torch_device)
    bce = bce_per_pixel(model, dataset.test, device=torch_device)
    if bce is not None:
        metrics["bce_per_pixel"] = bce
    unit = "images" if len(dataset.test.shape) > 1 else "rows"
    console.print(f"{loaded.path} on {dataset.name} test ({len(dataset.test)} {unit})")
    console.print(f"test: {format_test_error(metrics)}")

    baseline: dict[str, float] = {}
    if pca:
        from aecore.pca import MAX_FEATURES, fit_pca, pca_metrics

        train = dataset.train
        classes = loaded.meta.get("data", {}).get("classes")
        if classes is not None and data is None:
            from aecore.training.run import keep_classes

            train = keep_classes(train, classes, dataset.name)  # the data the model saw
        if math.prod(train.shape) <= MAX_FEATURES and len(train) >= 2:
            fitted = fit_pca(train, model.latent_dim)
            baseline = pca_metrics(fitted, dataset.test, fitted.n_components)
        else:
            console.print("PCA baseline skipped: too many features or too few training samples.")
    _print_table(metrics, baseline, min(model.latent_dim, math.prod(dataset.test.shape)))
    family = component_metrics(model, dataset, device=torch_device, out_dir=loaded.run_dir)
    if family:
        _print_family(family)
        metrics.update(family)
    if target is not None:
        from aecore.io import atomic_write_bytes

        rows = ["metric,model,pca,ratio"]
        for key, value in metrics.items():
            other = baseline.get(key)
            pca_cell = "" if other is None else f"{other:.9g}"
            ratio = f"{value / other:.9g}" if other and key in _RATIO_KEYS else ""
            rows.append(f"{key},{value:.9g},{pca_cell},{ratio}")
        atomic_write_bytes(target, "".join(f"{row}\n" for row in rows).encode())  # all or nothing
        console.print(f"wrote {target}")


#: Errors, where model / PCA is meaningful (PSNR is logarithmic, BCE has no PCA counterpart).
_RATIO_KEYS = ("mse_per_pixel", "sse_per_image")


def _print_family(figures: Mapping[str, float]) -> None:
    """The components' own figures (``eval_metrics``), one row each."""
    from rich.table import Table

    table = Table(title="the model's own measures")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:.6g}")
    console.print(table)


def _print_table(metrics: Mapping[str, float], baseline: Mapping[str, float], k: int) -> None:
    from rich.table import Table

    names = {
        "mse_per_pixel": "MSE per pixel",
        "sse_per_image": "SSE per image",
        "psnr": "PSNR (dB)",
        "bce_per_pixel": "BCE per pixel",
    }
    table = Table(title="test reconstruction error")
    table.add_column("metric")
    table.add_column("model", justify="right")
    if baseline:
        table.add_column(f"PCA ({k} components)", justify="right")
        table.add_column("model / PCA", justify="right")
    for key, label in names.items():
        if key not in metrics:
            continue
        row = [label, f"{metrics[key]:.6g}"]
        if baseline:
            other = baseline.get(key)
            row.append("-" if other is None else f"{other:.6g}")
            row.append(f"{metrics[key] / other:.3f}" if other and key in _RATIO_KEYS else "")
        table.add_row(*row)
    console.print(table)
    if baseline:
        ratio = metrics["sse_per_image"] / baseline["sse_per_image"]
        verdict = "better than" if ratio < 1 else "no better than"
        console.print(f"SSE ratio model/PCA: {ratio:.3f} (the model is {verdict} PCA with {k} components)")
