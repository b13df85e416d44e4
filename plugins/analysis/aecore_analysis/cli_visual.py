"""Commands that let you see a trained model: reconstructions, the code space, samples, curves, layers.

``ae reconstruct``, ``ae interpolate``, ``ae arithmetic``, ``ae sample``,
``ae plot`` and ``ae features``. The numbers come from
:mod:`aecore_analysis.latent`, :mod:`aecore_analysis.activations` and
:mod:`aecore_analysis.history`; this module parses options, writes the files
and prints a summary. torch, numpy and matplotlib are imported inside the
commands so that ``ae --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aecore.cli.common import (
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    Loaded,
    ModelArg,
    OutOpt,
    OverwriteOpt,
    load_model_and_data,
    output_file,
)
from aecore.cli.output import console
from aecore.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from aecore.data import TensorData

IndexHelp = "Index of a test sample."


def _checkpoint_dir(model: Path) -> Path:
    """The folder of the checkpoint ``model`` names (a run directory or a file), for default outputs."""
    from aecore import checkpoint

    return checkpoint.resolve(model).parent


def _load_image_model(
    model: Path, command: str, data: str | None, data_dir: Path | None, device: str
) -> Loaded:
    """Reload a checkpoint and its data, refusing data whose samples are not images."""
    from aecore_analysis.latent import check_images

    loaded = load_model_and_data(model, data, data_dir, device)
    check_images(loaded.dataset, command)
    return loaded


def _device(loaded: Loaded) -> torch.device:
    return next(loaded.model.parameters()).device


def _label(loaded: Loaded, index: int) -> str:
    y = loaded.dataset.test.y
    return "" if y is None else f" (label {int(y[index])})"


def _save_grid(images: Tensor, loaded: Loaded, path: Path, nrow: int) -> Path:
    """Model-space images to [0, 1], written as one torchvision grid (padding 2)."""
    from aecore_analysis.latent import to_display
    from aecore_analysis.plots import save_grid

    return save_grid(to_display(images, loaded.dataset.test.normalisation), path, nrow=nrow)


def _size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return f"{img.width}×{img.height} px"


# -- ae reconstruct ------------------------------------------------------------------------------


def reconstruct_command(
    model: ModelArg,
    n: Annotated[int, typer.Option("--n", "-n", help="How many test samples (the first N).")] = 16,
    per_row: Annotated[
        int | None, typer.Option(help="Samples per row pair (default: N, at most 16).")
    ] = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Draw test images (top row) over their reconstructions (row below) as a PNG grid."""
    import torch

    from aecore_analysis.latent import decode, encode

    target = output_file(out, _checkpoint_dir(model) / "reconstruct.png", overwrite)
    loaded = _load_image_model(model, "reconstruct", data, data_dir, device)
    test = loaded.dataset.test
    if not 1 <= n <= len(test):
        raise ConfigError(f"--n must be between 1 and {len(test)} (the test split's size), got {n}.")
    cols = min(n, 16) if per_row is None else per_row
    if cols < 1:
        raise ConfigError(f"--per-row must be at least 1, got {cols}.")
    x = test.batch(slice(0, n))
    dev = _device(loaded)
    recon = decode(loaded.model, encode(loaded.model, x, device=dev), device=dev)
    rows = []
    for start in range(0, n, cols):
        for part in (x[start : start + cols], recon[start : start + cols]):
            blank = torch.zeros(cols - len(part), *part.shape[1:])  # pads a short last row
            rows.append(torch.cat([part, blank]))
    _save_grid(torch.cat(rows), loaded, target, nrow=cols)
    mse = (recon.double() - x.double()).pow(2).mean().item()
    sse = (recon.double() - x.double()).pow(2).flatten(1).sum(1).mean().item()
    console.print(f"{loaded.path} on {loaded.dataset.name} test: samples 0–{n - 1}")
    console.print(f"these {n}: MSE/pixel {mse:.6g} · SSE/image {sse:.6g}")
    console.print(f"wrote {target} ({_size(target)}; originals above reconstructions, {cols} per row)")


# -- ae interpolate ------------------------------------------------------------------------------


def interpolate_command(
    model: ModelArg,
    a: Annotated[int, typer.Option(help=f"{IndexHelp} Start point (t = 0).")] = 0,
    b: Annotated[int, typer.Option(help=f"{IndexHelp} End point (t = 1).")] = 1,
    steps: Annotated[int, typer.Option(help="Images in the strip, both ends included.")] = 10,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Decode (1−t)·z_a + t·z_b for t from 0 to 1: a strip of images between two test samples."""
    from aecore_analysis.latent import check_index, decode, encode, interpolate

    target = output_file(out, _checkpoint_dir(model) / "interpolate.png", overwrite)
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 (both end points), got {steps}.")
    loaded = _load_image_model(model, "interpolate", data, data_dir, device)
    test = loaded.dataset.test
    check_index(a, test, "--a")
    check_index(b, test, "--b")
    dev = _device(loaded)
    z = encode(loaded.model, test.batch([a, b]), device=dev)
    images = decode(loaded.model, interpolate(z[0], z[1], steps), device=dev)
    _save_grid(images, loaded, target, nrow=steps)
    distance = (z[0] - z[1]).norm().item()
    console.print(f"{loaded.path}: sample {a}{_label(loaded, a)} → sample {b}{_label(loaded, b)}")
    console.print(f"{steps} steps along a straight line of length {distance:.4g} in the {z.shape[1]}-D code")
    console.print(f"wrote {target} ({_size(target)}; t = 0 on the left, t = 1 on the right)")


# -- ae arithmetic -------------------------------------------------------------------------------


def arithmetic_command(
    model: ModelArg,
    a: Annotated[int, typer.Option(help=f"{IndexHelp} Its code is added.")] = 0,
    b: Annotated[int, typer.Option(help=f"{IndexHelp} Its code is added.")] = 1,
    c: Annotated[int, typer.Option(help=f"{IndexHelp} Its code is subtracted.")] = 2,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Decode z_a + z_b − z_c: the three test images, then the result, in one row."""
    import torch

    from aecore_analysis.latent import arithmetic, check_index, decode, encode

    target = output_file(out, _checkpoint_dir(model) / "arithmetic.png", overwrite)
    loaded = _load_image_model(model, "arithmetic", data, data_dir, device)
    test = loaded.dataset.test
    for index, option in ((a, "--a"), (b, "--b"), (c, "--c")):
        check_index(index, test, option)
    dev = _device(loaded)
    x = test.batch([a, b, c])
    z = encode(loaded.model, x, device=dev)
    result = decode(loaded.model, arithmetic(z[0], z[1], z[2]).unsqueeze(0), device=dev)
    _save_grid(torch.cat([x, result]), loaded, target, nrow=4)
    console.print(
        f"{loaded.path}: z[{a}]{_label(loaded, a)} + z[{b}]{_label(loaded, b)} − z[{c}]{_label(loaded, c)}"
    )
    console.print(f"wrote {target} ({_size(target)}; inputs a, b, c, then the decoded result)")


# -- ae sample -----------------------------------------------------------------------------------


def sample_command(
    model: ModelArg,
    n: Annotated[int, typer.Option("--n", "-n", help="How many samples to decode.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed of the draws.")] = 0,
    nrow: Annotated[int, typer.Option(help="Images per row of the grid.")] = 8,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Decode random codes: N(0, I) for variational models, else a Gaussian fitted to training codes."""
    from aecore_analysis.latent import (
        decode,
        encode,
        fit_gaussian,
        is_variational,
        sample_codes,
    )

    target = output_file(out, _checkpoint_dir(model) / "sample.png", overwrite)
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}.")
    if nrow < 1:
        raise ConfigError(f"--nrow must be at least 1, got {nrow}.")
    loaded = _load_image_model(model, "sample", data, data_dir, device)
    dev = _device(loaded)
    fit = None
    if not is_variational(loaded.model):
        fit = fit_gaussian(encode(loaded.model, _training_split(loaded), device=dev))
    z, source = sample_codes(loaded.model, n, seed=seed, fit=fit)
    _save_grid(decode(loaded.model, z, device=dev), loaded, target, nrow=nrow)
    console.print(f"{loaded.path}: {n} samples, seed {seed}")
    console.print(source)
    if fit is not None:
        spread = fit.cov.diagonal().sqrt()
        console.print(
            f"fitted Gaussian: ‖mean‖ {fit.mean.norm().item():.4g}, per-unit std "
            f"{spread.min().item():.3g}–{spread.max().item():.3g}"
        )
    console.print(f"wrote {target} ({_size(target)})")


def _training_split(loaded: Loaded) -> TensorData:
    """The training data the model saw: restricted to its classes when it was trained one-class."""
    from aecore.training.run import keep_classes

    classes = loaded.meta.get("data", {}).get("classes")
    train = loaded.dataset.train
    return train if not classes else keep_classes(train, classes, loaded.dataset.name)


# -- ae plot -------------------------------------------------------------------------------------


def plot_command(
    run: Annotated[Path, typer.Argument(help="A run directory written by 'ae train' (or its checkpoint).")],
    method: Annotated[
        str, typer.Option(help="Projection of codes with more than 2 dimensions: pca or tsne.")
    ] = "pca",
    n: Annotated[int, typer.Option("--n", "-n", help="Test samples in the scatter (the first N).")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed of the projection.")] = 0,
    out_dir: Annotated[
        Path | None, typer.Option(help="Folder for loss.png, latent.png, latent.csv (default: the run).")
    ] = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Plot the loss curves (loss.png) and a 2-D scatter of test codes by class (latent.png, latent.csv)."""
    import csv

    from aecore_analysis.history import loss_series, plot_loss, read_metrics
    from aecore_analysis.latent import encode, plot_scatter, project_2d

    if method not in ("pca", "tsne"):
        raise ConfigError(f"unknown --method '{method}'; choose pca or tsne.")
    if n < 2:
        raise ConfigError(f"--n must be at least 2, got {n}.")
    run_dir, metrics = read_metrics(run)
    folder = out_dir if out_dir is not None else run_dir
    loss_png = output_file(None, folder / "loss.png", overwrite)
    latent_png = output_file(None, folder / "latent.png", overwrite)
    latent_csv = output_file(None, folder / "latent.csv", overwrite)
    series = loss_series(metrics["history"])
    if not series:
        raise ConfigError(f"{run_dir / 'metrics.json'} records no losses per epoch; nothing to plot.")

    loaded = load_model_and_data(run, data, data_dir, device)
    test = loaded.dataset.test
    count = min(n, len(test))
    subset = test.subset(_arange(count))
    codes = encode(loaded.model, subset, device=_device(loaded))
    projection = project_2d(codes, method, seed=seed)  # type: ignore[arg-type]
    axes_name = {
        "identity": "code units 1 and 2",
        "pad": "the 1-D code",
        "pca": "PCA of the codes",
        "tsne": "t-SNE of the codes",
    }[projection.method]
    plot_loss(series, loss_png, title=run_dir.name)
    plot_scatter(
        projection.points,
        subset.y,
        latent_png,
        title=f"{run_dir.name}: {count} test codes ({loaded.model.latent_dim}-D), {axes_name}",
    )
    with latent_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "x", "y"])
        labels = subset.y.tolist() if subset.y is not None else [""] * count
        for i, (label, (px, py)) in enumerate(zip(labels, projection.points.tolist(), strict=True)):
            writer.writerow([i, label, f"{px:.9g}", f"{py:.9g}"])

    final = metrics.get("final", {})
    console.print(f"{run_dir}: {len(series)} loss series over {len(next(iter(series.values()))[0])} epochs")
    if "val_recon" in series:
        ys = series["val_recon"][1]
        best = min(range(len(ys)), key=ys.__getitem__)
        console.print(f"best val_recon {ys[best]:.6g} at epoch {series['val_recon'][0][best]:g}")
    if "test_sse_per_image" in final:
        console.print(f"test SSE/image {final['test_sse_per_image']:.6g}")
    if projection.explained is not None:
        ratio = projection.explained
        console.print(f"PCA: the two components explain {ratio[0]:.1%} + {ratio[1]:.1%} of the code variance")
    if projection.kl_divergence is not None:
        console.print(f"t-SNE: KL divergence {projection.kl_divergence:.4g}")
    console.print(f"wrote {loss_png}, {latent_png} ({_size(latent_png)}) and {latent_csv}")


def _arange(count: int) -> Tensor:
    import torch

    return torch.arange(count)


# -- ae features ---------------------------------------------------------------------------------


def features_command(
    model: ModelArg,
    index: Annotated[int, typer.Option(help=IndexHelp)] = 0,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[
        Path | None,
        typer.Option(
            help="The per-layer figure (default: features.png next to the checkpoint); the feature maps "
            "and tensors go beside it as <name>-maps.png and <name>.safetensors."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Show what each encoder layer computes for one test input: activation rows and conv feature maps.

    An image input is drawn as a picture above the rows; a table row as one more heat row.
    """
    from rich.table import Table
    from safetensors.torch import save_file

    from aecore_analysis.activations import collect_activations, plot_activation_rows, plot_feature_maps
    from aecore_analysis.latent import check_index, is_image_shape, to_display

    rows_png = output_file(out, _checkpoint_dir(model) / "features.png", overwrite)
    maps_png = output_file(None, rows_png.with_name(f"{rows_png.stem}-maps.png"), overwrite)
    tensors = output_file(None, rows_png.with_name(f"{rows_png.stem}.safetensors"), overwrite)
    loaded = load_model_and_data(model, data, data_dir, device)
    test = loaded.dataset.test
    check_index(index, test, "--index")
    x = test.batch([index]).to(_device(loaded))
    layers = collect_activations(loaded.model.encoder, x)
    if not layers:
        raise ConfigError(
            f"encoder '{loaded.model.spec.encoder.name}' has no layer with (N, F) or (N, C, H, W) "
            "outputs to show."
        )
    title = f"test sample {index}{_label(loaded, index)}"
    shown = to_display(x[0], test.normalisation) if is_image_shape(test.shape) else x[0].detach().cpu()
    plot_activation_rows(layers, shown, rows_png, title=title)
    has_maps = any(layer.is_map for layer in layers)
    if has_maps:
        plot_feature_maps(layers, maps_png)
    save_file(
        {"input": x.detach().cpu().contiguous(), **{la.name: la.output.contiguous() for la in layers}},
        str(tensors),
        metadata={"index": str(index), **{f"kind:{la.name}": la.kind for la in layers}},
    )

    table = Table(title=f"{loaded.path}: encoder '{loaded.model.spec.encoder.name}', {title}")
    for column in ("layer", "type", "shape", "mean", "max", "non-zero"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for la in layers:
        out_values = la.output[0]
        table.add_row(
            la.name,
            la.kind,
            "×".join(map(str, out_values.shape)),
            f"{out_values.mean().item():.3g}",
            f"{out_values.max().item():.3g}",
            f"{(out_values != 0).float().mean().item():.0%}",
        )
    console.print(table)
    written = [rows_png, *([maps_png] if has_maps else []), tensors]
    console.print("wrote " + ", ".join(str(p) for p in written))
