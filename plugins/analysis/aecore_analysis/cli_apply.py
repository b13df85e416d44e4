"""Applying and choosing models: ``ae anomaly``, ``denoise``, ``probe``, ``cv`` and ``sweep``.

The numbers come from :mod:`aecore.analysis` (anomaly, denoise, probe,
selection); this module parses options, writes the artefacts and prints the
summary. torch, numpy, scikit-learn and matplotlib are imported inside the
commands only, so ``ae --help`` stays light.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aecore.cli.common import (
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ModelArg,
    OverwriteOpt,
    load_model_and_data,
    output_file,
)
from aecore.cli.output import console
from aecore.cli.train import (
    BatchSizeOpt,
    ClassesOpt,
    DecoderOpt,
    EncoderOpt,
    EpochsOpt,
    LatentDimOpt,
    LossOpt,
    LrOpt,
    PresetOpt,
    RegOpt,
    SeedOpt,
    SetOpt,
    TrainDataDirOpt,
    TrainDataOpt,
    TrainDeviceOpt,
    TrainerOpt,
    component_params,
    parse_classes,
)
from aecore.errors import ConfigError

if TYPE_CHECKING:
    from aecore.data import Dataset

PlotOpt = Annotated[Path | None, typer.Option(help="PNG figure (default: next to the checkpoint).")]
OutDirOpt = Annotated[
    Path | None, typer.Option(help="Folder for the outputs (default: a new runs/<command>[-N]).")
]
TrainSizeOpt = Annotated[
    int | None, typer.Option(help="Use only the first N training images (quick runs; default: all).")
]
KeepModelsOpt = Annotated[
    bool, typer.Option(help="Keep each trained model under the output folder (default: temporary, removed).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ae` application."""
    app.command("anomaly")(anomaly_command)
    app.command("denoise")(denoise_command)
    app.command("probe")(probe_command)
    app.command("cv")(cv_command)
    app.command("sweep")(sweep_command)


# --------------------------------------------------------------------------- helpers


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _fmt(value: float, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _fresh_dir(out_dir: Path | None, base: str) -> Path:
    """``out_dir``, or a new ``runs/<base>[-N]`` that does not exist yet."""
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"--out-dir {out_dir} is a file; choose a folder.")
        return out_dir
    from aecore.paths import unique_dir

    return unique_dir(Path("runs"), base)


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """Fail early if an output exists (the folder itself is only created once there is output)."""
    for path in paths:
        if path.exists() and not overwrite:
            output_file(path, path, overwrite)  # raises the usual one-line error


def _training_data(data: str | None, data_dir: Path | None, train_size: int | None) -> Dataset:
    """The dataset once for all runs, its training split cut to ``train_size`` if given."""
    import torch

    from aecore.data import Dataset, load_dataset

    dataset = load_dataset(data, data_dir)
    if train_size is None:
        return dataset
    if train_size < 2:
        raise ConfigError(f"--train-size must be at least 2, got {train_size}.")
    train = dataset.train.subset(torch.arange(min(train_size, len(dataset.train))))
    return Dataset(dataset.name, train, dataset.test, dict(dataset.spec))


# --------------------------------------------------------------------------- anomaly


def anomaly_command(
    model: ModelArg,
    percentile: Annotated[
        float | None,
        typer.Option(help="Flag test scores above this percentile of the training scores (default: 95)."),
    ] = None,
    contamination: Annotated[
        float | None,
        typer.Option(help="Instead of --percentile: flag this fraction of the test samples, e.g. 0.05."),
    ] = None,
    normal_class: Annotated[
        str | None,
        typer.Option(
            "--normal-class",
            "--classes",
            help="Labels that count as normal, e.g. 0 or 3,5 (default: those the model was trained on).",
        ),
    ] = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[
        Path | None, typer.Option(help="CSV of scores (default: anomaly.csv next to the checkpoint).")
    ] = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score test samples by reconstruction error, flag anomalies, and measure ROC-AUC."""
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise ConfigError(f"--percentile must be between 0 and 100, got {percentile}.")
    if contamination is not None and not 0.0 < contamination < 1.0:
        raise ConfigError(
            f"--contamination must be a fraction strictly between 0 and 1, got {contamination}."
        )
    if percentile is not None and contamination is not None:
        raise ConfigError("give either --percentile or --contamination, not both.")
    classes = parse_classes(normal_class)

    from aecore.analysis.anomaly import detect
    from aecore.training.run import resolve_device

    loaded = load_model_and_data(model, data, data_dir, device)
    csv_path = output_file(out, loaded.run_dir / "anomaly.csv", overwrite)
    png_path = output_file(plot, loaded.run_dir / "anomaly.png", overwrite)
    if classes is None and loaded.meta.get("data", {}).get("classes") is not None:
        classes = [int(c) for c in loaded.meta["data"]["classes"]]
    report = detect(
        loaded.model,
        loaded.dataset.train,
        loaded.dataset.test,
        percentile=percentile,
        contamination=contamination,
        normal_classes=classes,
        device=resolve_device(device),
    )

    header = ["index", "score"]
    columns: list[Sequence[Any]] = [range(len(report.scores)), report.scores.tolist()]
    if report.labels is not None:
        header.append("label")
        columns.append(report.labels.tolist())
    if report.is_anomaly is not None:
        header.append("anomaly")
        columns.append([int(v) for v in report.is_anomaly.tolist()])
    header.append("flagged")
    columns.append([int(v) for v in report.flagged.tolist()])
    _write_csv(csv_path, header, list(zip(*columns, strict=True)))
    _anomaly_histogram(report, png_path)

    rule = (
        f"{contamination:g} contamination"
        if contamination is not None
        else f"{95.0 if percentile is None else percentile:g}th percentile of training scores"
    )
    console.print(f"{loaded.path} on {loaded.dataset.name} test ({len(report.scores)} samples)")
    if report.normal_classes is not None:
        console.print(f"normal classes: {', '.join(map(str, report.normal_classes))}")
    console.print(
        f"threshold {report.threshold:.6g} ({rule}): "
        f"flagged {int(report.flagged.sum())} of {len(report.scores)}"
    )
    if report.metrics:
        n_pos = int(report.is_anomaly.sum()) if report.is_anomaly is not None else 0
        console.print(
            f"ROC-AUC {report.metrics['roc_auc']:.4f} · average precision "
            f"{report.metrics['average_precision']:.4f} ({n_pos} anomalies)"
        )
    if report.note:
        console.print(f"note: {report.note}")
    console.print(f"wrote {csv_path} and {png_path}")


def _anomaly_histogram(report: Any, path: Path) -> None:
    import numpy as np

    from aecore.plots import figure, save_figure

    scores = report.scores.numpy()
    fig, ax = figure(figsize=(6, 3.6))
    bins = np.linspace(scores.min(), scores.max(), 60)
    if report.is_anomaly is not None:
        mask = report.is_anomaly.numpy()
        ax.hist(
            scores[~mask],
            bins=bins,
            density=True,
            alpha=0.6,
            label=f"normal ({(~mask).sum()})",
            color="tab:blue",
        )
        ax.hist(
            scores[mask],
            bins=bins,
            density=True,
            alpha=0.6,
            label=f"anomalous ({mask.sum()})",
            color="tab:red",
        )
    else:
        ax.hist(scores, bins=bins, alpha=0.7, label=f"test ({len(scores)})", color="tab:gray")
    ax.axvline(report.threshold, color="black", linestyle="--", label="threshold")
    ax.set_xlabel("reconstruction MSE per sample")
    ax.set_ylabel("density" if report.is_anomaly is not None else "samples")
    title = "Anomaly scores"
    if report.metrics:
        title += f" (ROC-AUC {report.metrics['roc_auc']:.3f})"
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


# --------------------------------------------------------------------------- denoise


def denoise_command(
    model: ModelArg,
    noise: Annotated[str, typer.Option(help="Corruption: gaussian, mask or salt_pepper.")] = "gaussian",
    factor: Annotated[float, typer.Option(help="Standard deviation of the gaussian noise.")] = 0.3,
    prob: Annotated[
        float, typer.Option(help="Probability that a pixel is corrupted (mask, salt_pepper).")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the corruption.")] = 0,
    count: Annotated[int, typer.Option(help="Images shown in the grid.")] = 8,
    limit: Annotated[
        int | None, typer.Option(help="Measure on the first N test images (default: all).")
    ] = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[
        Path | None, typer.Option(help="PNG grid (default: denoise.png next to the checkpoint).")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Corrupt test images, reconstruct them, and report the PSNR gain in dB."""
    from aecore.analysis.denoise import NOISE_KINDS, denoise_report

    if noise not in NOISE_KINDS:
        raise ConfigError(f"unknown --noise '{noise}'; choose {', '.join(NOISE_KINDS)}.")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}.")
    from aecore.analysis.latent import check_image_model
    from aecore.plots import save_grid
    from aecore.training.run import resolve_device

    loaded = load_model_and_data(model, data, data_dir, device)
    check_image_model(loaded.model, "denoise")
    png_path = output_file(out, loaded.run_dir / "denoise.png", overwrite)
    report = denoise_report(
        loaded.model,
        loaded.dataset.test,
        kind=noise,
        factor=factor,
        prob=prob,
        seed=seed,
        limit=limit,
        examples=count,
        device=resolve_device(device),
    )
    import torch

    shown = len(report.clean)
    save_grid(torch.cat([report.noisy, report.denoised, report.clean]), png_path, nrow=shown)

    level = f"factor {factor:g}" if noise == "gaussian" else f"prob {prob:g}"
    console.print(f"{loaded.path} on {loaded.dataset.name} test ({report.n} images), {noise} noise, {level}")
    console.print(
        f"PSNR noisy {report.noisy_psnr:.2f} dB → denoised {report.denoised_psnr:.2f} dB: "
        f"gain {report.gain_db:+.2f} dB (clean input reconstructs at {report.clean_recon_psnr:.2f} dB)"
    )
    console.print(f"wrote {png_path} (rows: noisy, denoised, clean)")


# --------------------------------------------------------------------------- probe


def probe_command(
    model: ModelArg,
    train_size: TrainSizeOpt = None,
    c: Annotated[float, typer.Option("--c", help="Inverse regularisation strength of the classifier.")] = 1.0,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[
        Path | None, typer.Option(help="JSON of results (default: probe.json next to the checkpoint).")
    ] = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit a linear classifier on the frozen codes and report its test accuracy."""
    from aecore.analysis.probe import probe
    from aecore.errors import DataError
    from aecore.training.run import resolve_device

    loaded = load_model_and_data(model, data, data_dir, device)
    if loaded.dataset.train.y is None or loaded.dataset.test.y is None:
        raise DataError(f"'ae probe' needs class labels, but {loaded.dataset.name} has none.")
    json_path = output_file(out, loaded.run_dir / "probe.json", overwrite)
    png_path = output_file(plot, loaded.run_dir / "probe.png", overwrite)
    result = probe(loaded.model, loaded.dataset, train_size=train_size, c=c, device=resolve_device(device))
    payload = {"checkpoint": str(loaded.path), "data": loaded.dataset.name, **result.to_dict()}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    _confusion_plot(result, png_path)

    console.print(
        f"{loaded.path}: logistic regression on {loaded.model.latent_dim}-d codes, "
        f"{result.n_train} training / {result.n_test} test images of {loaded.dataset.name}"
    )
    console.print(
        f"test accuracy {result.accuracy:.2%} (train {result.train_accuracy:.2%}; "
        f"chance {result.chance:.2%} with {len(result.classes)} classes)"
    )
    console.print(f"wrote {json_path} and {png_path}")


def _confusion_plot(result: Any, path: Path) -> None:
    import numpy as np

    from aecore.plots import figure, save_figure

    matrix = np.array(result.confusion)
    fig, ax = figure(figsize=(5, 4.4))
    image = ax.imshow(matrix, cmap="Blues")
    labels = [str(c) for c in result.classes]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Linear probe: accuracy {result.accuracy:.1%}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, path)


# --------------------------------------------------------------------------- cv


def cv_command(
    encoder: EncoderOpt = None,
    decoder: DecoderOpt = None,
    reg: RegOpt = None,
    preset: PresetOpt = None,
    trainer: TrainerOpt = "default",
    latent_dim: LatentDimOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    loss: LossOpt = "mse",
    data: TrainDataOpt = None,
    data_dir: TrainDataDirOpt = None,
    device: TrainDeviceOpt = "auto",
    classes: ClassesOpt = None,
    set_: SetOpt = None,
    folds: Annotated[int, typer.Option(help="Number of folds (at least 2).")] = 5,
    train_size: TrainSizeOpt = None,
    out_dir: OutDirOpt = None,
    keep_models: KeepModelsOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """K-fold cross-validation of one configuration: held-out loss per fold, mean and std."""
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}.")
    regs = list(reg or [])
    params = component_params(regs, set_, epochs, batch_size, lr)
    class_list = parse_classes(classes)
    target = _fresh_dir(out_dir, "cv")
    _refuse_existing([target / "cv.csv"], overwrite)  # before hours of training, not after

    from rich.table import Table

    from aecore.analysis.selection import FoldResult, cross_validate

    dataset = _training_data(data, data_dir, train_size)

    def report(fold: FoldResult) -> None:
        console.print(
            f"fold {fold.fold}/{folds}: held-out {loss} {fold.val_loss:.6g} · "
            f"SSE/image {fold.val_sse_per_image:.4g}"
        )

    result = cross_validate(
        dataset,
        folds=folds,
        seed=seed,
        classes=class_list,
        keep_dir=target if keep_models else None,
        overwrite=overwrite,
        on_fold=report,
        encoder=encoder,
        decoder=decoder,
        regularizers=regs,
        preset=preset,
        trainer=trainer,
        params=params,
        latent_dim=latent_dim,
        loss=loss,
        device=device,
        progress=not quiet,
    )
    csv_path = output_file(None, target / "cv.csv", overwrite)
    header = ["fold", "n_train", "n_val", "val_loss", "val_mse_per_pixel", "val_sse_per_image", "train_loss"]
    rows: list[list[Any]] = [
        [f.fold, f.n_train, f.n_val, f.val_loss, f.val_mse_per_pixel, f.val_sse_per_image, f.train_loss]
        for f in result.folds
    ]
    rows.append(["mean", "", "", result.mean, "", result.mean_sse, ""])
    rows.append(["std", "", "", result.std, "", result.std_sse, ""])
    _write_csv(csv_path, header, rows)

    table = Table(
        title=f"{folds}-fold cross-validation on {dataset.name} ({sum(f.n_val for f in result.folds)} images)"
    )
    for name in ("fold", "train", "held out", f"held-out {loss}", "SSE/image", "train loss"):
        table.add_column(name, justify="right")
    for f in result.folds:
        table.add_row(
            str(f.fold),
            str(f.n_train),
            str(f.n_val),
            f"{f.val_loss:.6g}",
            f"{f.val_sse_per_image:.4g}",
            _fmt(f.train_loss, 6),
        )
    table.add_section()
    table.add_row("mean", "", "", f"{result.mean:.6g}", f"{result.mean_sse:.4g}", "")
    table.add_row("std", "", "", f"{result.std:.2g}", f"{result.std_sse:.2g}", "")
    console.print(table)
    kept = f" and the models under {target}/fold-*" if keep_models else ""
    console.print(f"wrote {csv_path}{kept}")


# --------------------------------------------------------------------------- sweep


def sweep_command(
    latent_dim: Annotated[
        str | None, typer.Option(help="Code sizes to sweep, comma-separated, e.g. 2,8,16,32,64,128,256.")
    ] = None,
    hidden: Annotated[
        str | None,
        typer.Option(
            help="Hidden widths to sweep (depth, width), |-separated, e.g. '256|512,256|512,256,128'."
        ),
    ] = None,
    encoder: EncoderOpt = None,
    decoder: DecoderOpt = None,
    reg: RegOpt = None,
    preset: PresetOpt = None,
    trainer: TrainerOpt = "default",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    loss: LossOpt = "mse",
    data: TrainDataOpt = None,
    data_dir: TrainDataDirOpt = None,
    device: TrainDeviceOpt = "auto",
    val_fraction: Annotated[
        float, typer.Option(help="Share of training data held out for validation.")
    ] = 0.1,
    classes: ClassesOpt = None,
    set_: SetOpt = None,
    train_size: TrainSizeOpt = None,
    out_dir: OutDirOpt = None,
    keep_models: KeepModelsOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a grid over code size and/or hidden widths; tabulate and plot the test error."""
    from aecore.analysis.selection import parse_hidden_grid, parse_int_grid

    latents = parse_int_grid(latent_dim) if latent_dim is not None else None
    hiddens = parse_hidden_grid(hidden) if hidden is not None else None
    if latents is None and hiddens is None:
        raise ConfigError("nothing to sweep: give --latent-dim 2,8,32 and/or --hidden '256|512,256'.")
    regs = list(reg or [])
    params = component_params(regs, set_, epochs, batch_size, lr)
    class_list = parse_classes(classes)
    target = _fresh_dir(out_dir, "sweep")
    _refuse_existing([target / "sweep.csv", target / "sweep.png"], overwrite)

    from rich.table import Table

    from aecore.analysis.selection import SweepPoint, hidden_label, sweep

    dataset = _training_data(data, data_dir, train_size)

    def report(p: SweepPoint) -> None:
        console.print(
            f"latent {p.latent_dim}, hidden {hidden_label(p.hidden) or '—'}: "
            f"test SSE/image {p.test_sse_per_image:.4g} ({p.parameters:,} parameters, {p.seconds:.1f} s)"
        )

    result = sweep(
        dataset,
        latent_dims=latents,
        hiddens=hiddens,
        params=params,
        keep_dir=target if keep_models else None,
        overwrite=overwrite,
        on_point=report,
        encoder=encoder,
        decoder=decoder,
        regularizers=regs,
        preset=preset,
        trainer=trainer,
        loss=loss,
        seed=seed,
        device=device,
        val_fraction=val_fraction,
        classes=class_list,
        progress=not quiet,
    )
    csv_path = output_file(None, target / "sweep.csv", overwrite)
    png_path = output_file(None, target / "sweep.png", overwrite)
    rows = [p.as_row() for p in result.points]
    _write_csv(csv_path, list(rows[0]), [list(r.values()) for r in rows])
    _sweep_plot(result, png_path, dataset.name)

    table = Table(title=f"Sweep over {' × '.join(result.swept)} on {dataset.name} (test error)")
    for name in ("latent", "hidden", "parameters", "compression", "SSE/image", "PSNR (dB)", "time (s)"):
        table.add_column(name, justify="right")
    for p in result.points:
        table.add_row(
            str(p.latent_dim),
            hidden_label(p.hidden) or "—",
            f"{p.parameters:,}",
            f"{p.compression_ratio:.1f}×",
            f"{p.test_sse_per_image:.4g}",
            _fmt(p.test_psnr),
            f"{p.seconds:.1f}",
        )
    console.print(table)
    kept = f" and the models under {target}" if keep_models else ""
    console.print(f"wrote {csv_path} and {png_path}{kept}")


def _sweep_plot(result: Any, path: Path, data_name: str) -> None:
    from aecore.analysis.selection import hidden_label
    from aecore.plots import figure, save_figure

    fig, ax = figure(figsize=(6, 3.8))
    if "latent_dim" in result.swept:
        groups: dict[str, list[Any]] = {}
        for p in result.points:
            groups.setdefault(hidden_label(p.hidden) or "", []).append(p)
        for label, points in groups.items():
            ax.plot(
                [p.latent_dim for p in points],
                [p.test_sse_per_image for p in points],
                marker="o",
                label=f"hidden {label}" if label else None,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks([p.latent_dim for p in result.points], [str(p.latent_dim) for p in result.points])
        ax.set_xlabel("code size (latent dim)")
        if len(groups) > 1:
            ax.legend()
    else:
        labels = [hidden_label(p.hidden) for p in result.points]
        ax.plot(range(len(labels)), [p.test_sse_per_image for p in result.points], marker="o")
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_xlabel("hidden widths (encoder, from the input side)")
    ax.set_ylabel("test SSE per image")
    ax.set_title(f"Test reconstruction error on {data_name}")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
