"""``ae eval``: reload a checkpoint and measure its test reconstruction error."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from aecore.cli.output import console
from aecore.errors import ShapeError


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
        str | None, typer.Option(help="Dataset [default: the one the model was trained on].")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Local copy of the dataset.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
) -> None:
    """Report test MSE per pixel, SSE per image and PSNR of a saved model."""
    from aecore import checkpoint
    from aecore.data import load_dataset
    from aecore.evaluate import reconstruction_metrics
    from aecore.training.run import resolve_device

    torch_device = resolve_device(device)
    model = checkpoint.load(path, map_location=torch_device)
    recorded = model.metadata.get("data", {})
    if data is None:
        data = recorded.get("name")
        if data_dir is None and recorded.get("data_dir"):
            data_dir = Path(recorded["data_dir"])
    dataset = load_dataset(data, data_dir)
    if dataset.test.shape != model.input_shape:
        raise ShapeError(
            f"the model takes inputs of shape {model.input_shape}, but {dataset.name} has "
            f"{dataset.test.shape}; evaluate it on the data it was trained on."
        )
    metrics = reconstruction_metrics(model, dataset.test, device=torch_device)
    console.print(f"{checkpoint.resolve(path)} on {dataset.name} test ({len(dataset.test)} images)")
    console.print(f"test: {format_test_error(metrics)}")
