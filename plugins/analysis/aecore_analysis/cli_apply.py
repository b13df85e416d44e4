"""Applying and choosing models: ``ae anomaly``, ``denoise``, ``probe``, ``cv`` and ``sweep``.

The numbers come from this package's :mod:`~aecore_analysis.anomaly`,
:mod:`~aecore_analysis.denoise`, :mod:`~aecore_analysis.probe` and
:mod:`~aecore_analysis.selection`; this module parses options, writes the
artefacts and prints the summary. ``ae cv`` and ``ae sweep`` take the run
options of ``ae train``, generated from :class:`aecore.RunRequest`. torch,
numpy, scikit-learn and matplotlib are imported inside the commands only, so
``ae --help`` stays light.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
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
from aecore.cli.options import options_from
from aecore.cli.output import console
from aecore.errors import ConfigError
from aecore.request import RunRequest

if TYPE_CHECKING:
    from aecore.data import Dataset

PlotOpt = Annotated[Path | None, typer.Option(help="PNG figure (default: next to the checkpoint).")]
OutDirOpt = Annotated[
    Path | None, typer.Option(help="Folder for the outputs (default: a new runs/<command>[-N]).")
]
TrainSizeOpt = Annotated[
    int | None, typer.Option(help="Use only the first N training samples (quick runs; default: all).")
]
KeepModelsOpt = Annotated[
    bool, typer.Option(help="Keep each trained model under the output folder (default: temporary, removed).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
#: The run options that ``ae cv`` and ``ae sweep`` do not take: they choose where their runs go.
RUN_OUTPUT = ("out", "runs_root", "overwrite")


# --------------------------------------------------------------------------- helpers


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _fmt(value: float | None, digits: int = 4) -> str:
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


def _check_train_size(train_size: int | None) -> None:
    if train_size is not None and train_size < 2:
        raise ConfigError(f"--train-size must be at least 2, got {train_size}.")


def _training_data(data: str | None, data_dir: str | None, train_size: int | None) -> Dataset:
    """The dataset, its training split cut to its first ``train_size`` samples if given."""
    import torch

    from aecore.data import Dataset
    from aecore.sources import load_dataset

    dataset = load_dataset(data, data_dir)
    if train_size is None:
        return dataset
    train = dataset.train.subset(torch.arange(min(train_size, len(dataset.train))))
    return Dataset(dataset.name, train, dataset.test, dict(dataset.spec))


def _loader(train_size: int | None) -> Callable[[RunRequest], Dataset]:
    """A run request's dataset, loaded (and cut) once per data source."""
    loaded: dict[tuple[str | None, str | None], Dataset] = {}

    def load(request: RunRequest) -> Dataset:
        key = (request.data, request.data_dir)
        if key not in loaded:
            loaded[key] = _training_data(request.data, request.data_dir, train_size)
        return loaded[key]

    return load


def _parse_classes(text: str | None) -> list[int] | None:
    """``"0"`` or ``"3,5"`` as labels."""
    if text is None:
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        classes = []
    if not classes:
        raise ConfigError(
            f"--normal-class expects comma-separated integer labels, e.g. 0 or 3,5; got '{text}'."
        )
    return classes


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
            help="Labels that count as normal, e.g. 0 or 3,5 (default: those the model was trained on, "
            "else the data's normal_classes).",
        ),
    ] = None,
    smooth: Annotated[
        float,
        typer.Option(
            help="Smooth the per-pixel error maps with a Gaussian of this sigma in pixels (0: off)."
        ),
    ] = 0.0,
    maps: Annotated[
        int,
        typer.Option(help="Heat maps of up to N normal and N anomalous test images (0: no heat-map figure)."),
    ] = 8,
    score: Annotated[
        str,
        typer.Option(
            help="Image score: mse (plain), ssim (structure, images only), code (a Gaussian density on the "
            "codes), knn (distance to the 5th nearest normal code), or a sum such as ssim+knn; any but mse "
            "is reported beside the plain one."
        ),
    ] = "mse",
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[
        Path | None,
        typer.Option(
            help="CSV of scores (default: anomaly.csv next to the checkpoint); the metrics go beside it "
            "as <name>.json."
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Histogram PNG (default: anomaly.png next to the checkpoint); image data's heat maps go "
            "beside it as <name>-maps.png."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score test samples by reconstruction error, flag anomalies, and measure ROC-AUC per image and pixel."""
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise ConfigError(f"--percentile must be between 0 and 100, got {percentile}.")
    if contamination is not None and not 0.0 < contamination < 1.0:
        raise ConfigError(
            f"--contamination must be a fraction strictly between 0 and 1, got {contamination}."
        )
    if percentile is not None and contamination is not None:
        raise ConfigError("give either --percentile or --contamination, not both.")
    if not (math.isfinite(smooth) and smooth >= 0):
        raise ConfigError(f"--smooth must be a finite number of pixels, 0 or more, got {smooth}.")
    if maps < 0:
        raise ConfigError(f"--maps must be 0 (no figure) or more, got {maps}.")
    classes = _parse_classes(normal_class)
    from aecore_analysis.scores import parse_score

    parse_score(score)

    from aecore.training.run import resolve_device
    from aecore_analysis.anomaly import detect, label_names_of, normal_classes_of
    from aecore_analysis.latent import is_image_shape

    loaded = load_model_and_data(model, data, data_dir, device)
    test = loaded.dataset.test
    images = is_image_shape(test.shape)
    if smooth and not images:
        raise ConfigError(
            f"--smooth smooths per-pixel error maps; data '{loaded.dataset.name}' has samples of shape "
            f"{test.shape}, not images."
        )
    csv_path = output_file(out, loaded.run_dir / "anomaly.csv", overwrite)
    json_path = csv_path.with_suffix(".json")
    if json_path == csv_path:
        json_path = csv_path.with_name(f"{csv_path.stem}.metrics.json")
    output_file(json_path, json_path, overwrite)
    png_path = output_file(plot, loaded.run_dir / "anomaly.png", overwrite)
    maps_path = None
    if images and maps:
        maps_path = png_path.with_name(f"{png_path.stem}-maps.png")
        output_file(maps_path, maps_path, overwrite)

    names = label_names_of(loaded.dataset.spec)
    origin = "--normal-class"
    if classes is None and loaded.meta.get("data", {}).get("classes") is not None:
        classes, origin = (
            [int(c) for c in loaded.meta["data"]["classes"]],
            "the classes the model was trained on",
        )
    if classes is None:
        classes, origin = normal_classes_of(loaded.dataset.spec), "the data's normal_classes"
    torch_device = resolve_device(device)
    report = detect(
        loaded.model,
        loaded.dataset.train,
        test,
        percentile=percentile,
        contamination=contamination,
        normal_classes=classes,
        label_names=names,
        smooth=smooth,
        score=score,
        device=torch_device,
    )

    header = ["index", "score"]
    columns: list[Sequence[Any]] = [range(len(report.scores)), report.scores.tolist()]
    for name, values in report.by_score.items():  # every part and the plain mse, beside the chosen one
        if name != report.score:
            header.append(f"score_{name}")
            columns.append(values.tolist())
    if report.labels is not None:
        labels = report.labels.tolist()
        header.append("label")
        columns.append(labels)
        if names is not None:
            header.append("label_name")
            columns.append([names[v] if 0 <= v < len(names) else "" for v in labels])
    if report.is_anomaly is not None:
        header.append("anomaly")
        columns.append([int(v) for v in report.is_anomaly.tolist()])
    header.append("flagged")
    columns.append([int(v) for v in report.flagged.tolist()])
    _write_csv(csv_path, header, list(zip(*columns, strict=True)))
    _anomaly_histogram(report, png_path)
    if maps_path is not None:
        from aecore_analysis.maps import plot_anomaly_maps, select_examples

        chosen = select_examples(report.is_anomaly, maps, len(test))
        captions = [_caption(i, report, names) for i in chosen]
        plot_anomaly_maps(
            loaded.model, test, chosen, maps_path, captions=captions, smooth=smooth, device=torch_device
        )

    rule = (
        f"{contamination:g} contamination"
        if contamination is not None
        else f"{95.0 if percentile is None else percentile:g}th percentile of training scores"
    )
    notes = [n for n in (report.note, report.pixel_note) if n]
    payload = {
        "checkpoint": str(loaded.path),
        "data": loaded.dataset.name,
        "samples": len(report.scores),
        "normal_classes": report.normal_classes,
        "normal_classes_from": origin if report.normal_classes is not None else None,
        "score": report.score,
        "threshold": report.threshold,
        "rule": rule,
        "flagged": int(report.flagged.sum()),
        "image": (
            {**report.metrics, "anomalies": int(report.is_anomaly.sum())}
            if report.metrics and report.is_anomaly is not None
            else None
        ),
        "by_score": report.metrics_by_score or None,
        "per_label": [entry.to_dict() for entry in report.per_label],
        "pixel": report.pixel.to_dict() if report.pixel is not None else None,
        "notes": notes,
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")

    console.print(f"{loaded.path} on {loaded.dataset.name} test ({len(report.scores)} samples)")
    if report.normal_classes is not None:
        console.print(f"normal classes: {', '.join(map(str, report.normal_classes))} ({origin})")
    console.print(
        f"threshold {report.threshold:.6g} ({rule}): "
        f"flagged {int(report.flagged.sum())} of {len(report.scores)}"
    )
    if report.score != "mse":
        console.print(f"score: {report.score}")
    if report.metrics:
        n_pos = int(report.is_anomaly.sum()) if report.is_anomaly is not None else 0
        console.print(
            f"ROC-AUC {report.metrics['roc_auc']:.4f} · average precision "
            f"{report.metrics['average_precision']:.4f} ({n_pos} anomalies)"
        )
    if report.metrics_by_score:
        from rich.table import Table

        table = Table(title="image ROC-AUC of each score (the chosen one is marked *)")
        for name in ("score", "ROC-AUC", "average precision"):
            table.add_column(name, justify="left" if name == "score" else "right")
        for name, figures in report.metrics_by_score.items():
            mark = " *" if name == report.score else ""
            table.add_row(name + mark, f"{figures['roc_auc']:.4f}", f"{figures['average_precision']:.4f}")
        console.print(table)
    if report.per_label:
        from rich.table import Table

        table = Table(title="image ROC-AUC per anomalous label")
        for name in ("label", "name", "samples", "ROC-AUC"):
            table.add_column(name, justify="left" if name == "name" else "right")
        for entry in report.per_label:
            table.add_row(str(entry.label), entry.name, str(entry.count), f"{entry.roc_auc:.4f}")
        console.print(table)
    if report.pixel is not None:
        p = report.pixel
        how = "exact" if p.exact else f"binned, within ±{p.error_bound:.2g}"
        smoothed = f" · error maps smoothed with σ = {p.smooth:g} px" if p.smooth else ""
        console.print(
            f"pixel ROC-AUC {p.roc_auc:.4f} over {p.pixels:,} pixels ({p.anomalous:,} anomalous; {how})"
            f"{smoothed}"
        )
    for note in notes:
        console.print(f"note: {note}")
    written = [csv_path, json_path, png_path, *([maps_path] if maps_path is not None else [])]
    console.print("wrote " + ", ".join(str(p) for p in written))


def _caption(index: int, report: Any, names: Sequence[str] | None) -> str:
    """``#12 crack`` over ``score 0.0123``: a heat-map row's label."""
    text = f"#{index}"
    if report.labels is not None:
        label = int(report.labels[index])
        text += f" {names[label]}" if names is not None and 0 <= label < len(names) else f" label {label}"
    return f"{text}\nscore {float(report.scores[index]):.3g}"


def _anomaly_histogram(report: Any, path: Path) -> None:
    import numpy as np

    from aecore_analysis.plots import figure, save_figure

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
    ax.set_xlabel(
        "reconstruction MSE per sample" if report.score == "mse" else f"score {report.score} per sample"
    )
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
    corruption: Annotated[
        str | None,
        typer.Option(
            help="Corrupt with this installed regularizer's training-time input transform, e.g. denoising "
            "(default: the model's own regularizers that change the input)."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="A parameter of the --corruption regularizer: NAME.PARAM=VALUE, e.g. denoising.kind=mask.",
            show_default=False,
        ),
    ] = None,
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
    """Corrupt test images, reconstruct them, and report the PSNR gain in dB.

    The corruption is what a regularizer does to the input in training: by
    default the model's own (a model trained with --reg denoising), or
    --corruption NAME with --set NAME.PARAM=VALUE.
    """
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}.")
    params = _corruption_params(corruption, set_ or [])

    from aecore_analysis.denoise import build_corruption, changes_input, denoise_report, seeded
    from aecore_analysis.latent import check_images
    from aecore_analysis.plots import save_grid

    loaded = load_model_and_data(model, data, data_dir, device)
    net = loaded.model
    check_images(loaded.dataset, "denoise")
    png_path = output_file(out, loaded.run_dir / "denoise.png", overwrite)
    torch_device = next(net.parameters()).device
    if corruption is None:
        modules = list(net.regularizers.values())
        names = list(net.regularizers.keys())
        source = "the model's own"
    else:
        with seeded(seed):  # a regularizer that draws its own weights draws them the same way each time
            modules = [build_corruption(corruption, params, latent_dim=net.latent_dim).to(torch_device)]
        names = [corruption.rpartition(":")[2]]
        source = "--corruption"
    sample = loaded.dataset.test.batch(slice(0, min(64, len(loaded.dataset.test)))).to(torch_device)
    if not changes_input(modules, sample, seed=seed):
        if corruption is None:
            has = f"its regularizers: {', '.join(names)}" if names else "it has none"
            raise ConfigError(
                f"the model has no regularizer that changes its input in training ({has}); pass "
                "--corruption NAME to corrupt with an installed regularizer, e.g. --corruption denoising."
            )
        raise ConfigError(
            f"regularizer '{corruption}' does not change the input (its transform_input leaves it as it "
            "is); choose one that corrupts, e.g. --corruption denoising."
        )
    report = denoise_report(
        net, loaded.dataset.test, modules, seed=seed, limit=limit, examples=count, device=torch_device
    )
    import torch

    shown = len(report.clean)
    save_grid(torch.cat([report.noisy, report.denoised, report.clean]), png_path, nrow=shown)

    described = "; ".join(
        _describe(n, m) for n, m in zip(names, modules, strict=True) if _changes(m, sample, seed)
    )
    console.print(f"{loaded.path} on {loaded.dataset.name} test ({report.n} images)")
    console.print(f"corruption ({source}): {described}, seed {seed}")
    console.print(
        f"PSNR noisy {report.noisy_psnr:.2f} dB → denoised {report.denoised_psnr:.2f} dB: "
        f"gain {report.gain_db:+.2f} dB (clean input reconstructs at {report.clean_recon_psnr:.2f} dB)"
    )
    console.print(f"wrote {png_path} (rows: noisy, denoised, clean)")


def _corruption_params(corruption: str | None, items: list[str]) -> dict[str, str]:
    """The ``--set NAME.PARAM=VALUE`` items for the ``--corruption`` regularizer, as its parameters."""
    if items and corruption is None:
        raise ConfigError(
            f"--set {items[0]} configures a --corruption regularizer; give --corruption NAME too "
            "(the model's own regularizers are used as they were trained)."
        )
    from aecore.cli.options import parse_set_items

    short = (corruption or "").rpartition(":")[2]
    table = parse_set_items(items)
    for target, values in table.items():
        if target != short:
            key, value = next(iter(values.items()))
            raise ConfigError(
                f"--set {target}.{key}: '{target}' is not the --corruption; write {short}.{key}={value}."
            )
    return table.get(short, {})


def _changes(module: Any, sample: Any, seed: int) -> bool:
    from aecore_analysis.denoise import changes_input

    return changes_input([module], sample, seed=seed)


def _describe(name: str, module: Any) -> str:
    """``denoising (kind=gaussian, factor=0.3, ...)``: a regularizer and its settings."""
    import dataclasses

    config = getattr(module, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return name
    from aecore.config import config_to_dict

    settings = ", ".join(f"{k}={v}" for k, v in config_to_dict(config).items())
    return f"{name} ({settings})" if settings else name


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
    from aecore.errors import DataError
    from aecore.training.run import resolve_device
    from aecore_analysis.probe import probe

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

    from aecore_analysis.plots import figure, save_figure

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

CV_EPILOG = """
Examples:

  ae cv -e mlp --epochs 2 --folds 5

  ae cv -e mlp --set encoder.hidden=1000 --latent-dim 150 --folds 3

The run options are those of 'ae train' (see 'ae train --help'); every fold
trains with them, on k-1 folds, and is scored on the fold it did not see.
"""


@options_from(RunRequest, exclude=(*RUN_OUTPUT, "val_fraction"))
def cv_command(
    ctx: typer.Context,
    values: dict[str, Any],
    folds: Annotated[int, typer.Option(help="Number of folds (at least 2).")] = 5,
    train_size: TrainSizeOpt = None,
    out_dir: OutDirOpt = None,
    keep_models: KeepModelsOpt = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace cv.csv in --out-dir and reuse its fold-<i> folders.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """K-fold cross-validation of one configuration: held-out loss per fold, mean and std."""
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}.")
    _check_train_size(train_size)
    request = RunRequest.from_values(values)  # one-line errors before torch is imported
    target = _fresh_dir(out_dir, "cv")
    _refuse_existing([target / "cv.csv"], overwrite)  # before hours of training, not after

    from rich.table import Table

    from aecore.training import check_request
    from aecore_analysis.selection import FoldResult, cross_validate

    check_request(request)
    dataset = _training_data(request.data, request.data_dir, train_size)

    def report(fold: FoldResult) -> None:
        console.print(
            f"fold {fold.fold}/{folds}: held-out {request.loss} {fold.val_loss:.6g} · "
            f"SSE/image {fold.val_sse_per_image:.4g}"
        )

    result = cross_validate(
        dataset,
        request,
        folds=folds,
        keep_dir=target if keep_models else None,
        overwrite=overwrite,
        on_fold=report,
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
    for name in ("fold", "train", "held out", f"held-out {request.loss}", "SSE/image", "train loss"):
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


cv_command.epilog = CV_EPILOG  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- sweep

SWEEP_EPILOG = """
Examples:

  ae sweep -e mlp --grid latent_dim=2,8,32 --epochs 2

  ae sweep -e mlp --grid latent_dim=8,32 --grid encoder.hidden=256,512:256

  ae sweep -e mlp -r sparse --grid sparse.weight=1e-4,1e-3 --epochs 2

KEY is a run setting (latent_dim, lr, epochs, batch_size, seed, loss, ...)
or TARGET.PARAM as for --set (encoder.hidden, trainer.epochs, or a
regularizer's); every combination of the values is trained. Inside one
value, ':' separates the items of a list.
"""


@options_from(RunRequest, exclude=RUN_OUTPUT)
def sweep_command(
    ctx: typer.Context,
    values: dict[str, Any],
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=V1,V2,...: a run setting (latent_dim=8,32) or a component parameter "
            "(encoder.hidden=256:128,512:256; ':' separates a list's items) to sweep. Repeat for a product.",
            show_default=False,
        ),
    ] = None,
    train_size: TrainSizeOpt = None,
    out_dir: OutDirOpt = None,
    keep_models: KeepModelsOpt = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace sweep.csv and sweep.png in --out-dir and reuse its run folders.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a grid over any run setting or component parameter; tabulate and plot the test error."""
    from aecore_analysis.selection import parse_grid

    axes = parse_grid(grid or [])
    _check_train_size(train_size)
    RunRequest.from_values(values)  # the shared options' own mistakes first
    target = _fresh_dir(out_dir, "sweep")
    _refuse_existing([target / "sweep.csv", target / "sweep.png"], overwrite)

    from rich.table import Table

    from aecore_analysis.selection import SweepPoint, sweep

    def report(p: SweepPoint) -> None:
        console.print(
            f"{p.label}: test SSE/image {p.test_sse_per_image:.4g} "
            f"({p.parameters:,} parameters, {p.seconds:.1f} s)"
        )

    result = sweep(
        values,
        axes,
        data=_loader(train_size),
        keep_dir=target if keep_models else None,
        overwrite=overwrite,
        on_point=report,
        progress=not quiet,
    )
    csv_path = output_file(None, target / "sweep.csv", overwrite)
    png_path = output_file(None, target / "sweep.png", overwrite)
    rows = [p.as_row() for p in result.points]
    _write_csv(csv_path, list(rows[0]), [list(r.values()) for r in rows])
    data_name = ", ".join(dict.fromkeys(p.data for p in result.points))
    _sweep_plot(result, png_path, data_name)

    table = Table(title=f"Sweep over {' × '.join(result.keys)} on {data_name} (test error)")
    for name in (*result.keys, "parameters", "compression", "SSE/image", "PSNR (dB)", "time (s)"):
        table.add_column(name, justify="right")
    for p in result.points:
        table.add_row(
            *(p.values[k] for k in result.keys),
            f"{p.parameters:,}",
            f"{p.compression_ratio:.1f}×",
            f"{p.test_sse_per_image:.4g}",
            _fmt(p.test_psnr),
            f"{p.seconds:.1f}",
        )
    console.print(table)
    kept = f" and the models under {target}" if keep_models else ""
    console.print(f"wrote {csv_path} and {png_path}{kept}")


sweep_command.epilog = SWEEP_EPILOG  # type: ignore[attr-defined]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _sweep_plot(result: Any, path: Path, data_name: str) -> None:
    """Test SSE per image against the one numeric key swept (a line), else against each point's label."""
    from aecore_analysis.plots import figure, save_figure

    points, keys = result.points, result.keys
    fig, ax = figure(figsize=(6, 3.8))
    numbers = [_number(p.values[keys[0]]) for p in points] if len(keys) == 1 else []
    if numbers and all(x is not None for x in numbers):
        pairs = sorted(zip(numbers, points, strict=True), key=lambda pair: pair[0])
        xs = [x for x, _ in pairs]
        ax.plot(xs, [p.test_sse_per_image for _, p in pairs], marker="o")
        if xs[0] > 0 and xs[-1] / xs[0] > 8:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [p.values[keys[0]] for _, p in pairs])
        ax.set_xlabel(keys[0])
    else:
        labels = [p.values[keys[0]] if len(keys) == 1 else p.label.replace(", ", "\n") for p in points]
        ax.plot(range(len(points)), [p.test_sse_per_image for p in points], marker="o")
        ax.set_xticks(range(len(points)), labels, rotation=20 if len(keys) == 1 else 0, fontsize=8)
        ax.set_xlabel(" × ".join(keys))
    ax.set_ylabel("test SSE per image")
    ax.set_title(f"Test reconstruction error on {data_name}")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
