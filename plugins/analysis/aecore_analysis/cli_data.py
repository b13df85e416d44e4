"""Commands about data and numbers: ``ae pca``, ``ae encode`` and ``ae decode``.

The numbers come from :mod:`aecore.pca` (the core's PCA, which ``ae eval``
compares with) and :mod:`aecore_analysis.codes`; this module parses options,
writes the files and prints a summary. torch, numpy and matplotlib are
imported inside the commands so that ``ae --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from aecore.errors import ConfigError

FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", help="safetensors, npy or csv (default: from the --out suffix, else safetensors)."
    ),
]


def _files(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


# -- ae pca ---------------------------------------------------------------------------------------


def pca_command(
    data: Annotated[
        str | None, typer.Option(help="Data source, as for 'ae train --data' (default: embedded).")
    ] = None,
    data_dir: DataDirOpt = None,
    variance: Annotated[
        float, typer.Option(help="Share of the variance to explain, between 0 and 1.")
    ] = 0.95,
    out: Annotated[
        Path | None,
        typer.Option(help="Plot file (.png); the curve goes next to it as .csv (default: ./pca.png)."),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """How many principal components a variance target needs: a bottleneck size to start from."""
    from aecore.pca import components_for_variance, fit_pca
    from aecore.sources import load_dataset

    if not 0.0 < variance <= 1.0:
        raise ConfigError(f"--variance must be in (0, 1], got {variance:g}; e.g. --variance 0.95.")
    base = (out if out is not None else Path("pca.png")).with_suffix("")
    png = output_file(base.with_suffix(".png"), base.with_suffix(".png"), overwrite)
    csv_path = output_file(base.with_suffix(".csv"), base.with_suffix(".csv"), overwrite)
    dataset = load_dataset(data, data_dir)
    pca = fit_pca(dataset.train)
    k = components_for_variance(pca, variance)
    ratio = pca.explained_variance_ratio
    cumulative = ratio.cumsum(0)
    with csv_path.open("w") as f:
        f.write("components,explained_variance_ratio,cumulative_variance\n")
        for i, (r, c) in enumerate(zip(ratio.tolist(), cumulative.tolist(), strict=True), start=1):
            f.write(f"{i},{r:.9g},{c:.9g}\n")
    _plot_cumulative(cumulative.tolist(), variance, k, dataset.name, png)

    from rich.table import Table

    dim = pca.components.shape[1]
    table = Table(title=f"PCA of {dataset.name} (training split, {len(dataset.train)} samples)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("features", f"{dim:,}")
    table.add_row("variance target", f"{variance:.2%}")
    table.add_row("components needed", f"{k:,}")
    table.add_row("variance explained", f"{float(cumulative[k - 1]):.4%}")
    table.add_row("compression", f"{dim / k:.1f}×")
    console.print(table)
    console.print(f"{k} components explain {variance:.0%} of the variance")
    console.print(f"wrote {_files([png, csv_path])}")


def _plot_cumulative(cumulative: list[float], target: float, k: int, name: str, path: Path) -> None:
    from aecore_analysis.plots import figure, save_figure

    fig, ax = figure(figsize=(5.5, 3.6))
    xs = range(1, len(cumulative) + 1)
    ax.plot(xs, cumulative, color="tab:blue", lw=1.8, label="cumulative explained variance")
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.0%}")
    ax.axvline(k, color="tab:gray", ls=":", lw=1)
    ax.annotate(f"{k} components", (k, target), xytext=(8, -18), textcoords="offset points", fontsize=9)
    ax.set_xlabel("components")
    ax.set_ylabel("share of variance")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, len(cumulative))
    ax.set_title(f"PCA on {name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


# -- ae encode / ae decode -------------------------------------------------------------------------


def _target(out: Path | None, fmt: str | None, default_stem: Path, overwrite: bool) -> tuple[Path, str]:
    from aecore_analysis.codes import file_format

    if out is None:
        fmt = file_format(Path("x.safetensors"), fmt or "safetensors")
        out = default_stem.with_name(f"{default_stem.name}.{fmt}")
    fmt = file_format(out, fmt)
    return output_file(out, out, overwrite), fmt


def encode_command(
    model: ModelArg,
    split: Annotated[str, typer.Option(help="Which split to encode: test or train.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Codes file: .safetensors, .npy or .csv "
            "(default: codes-SPLIT.safetensors next to the checkpoint)."
        ),
    ] = None,
    fmt: FormatOpt = None,
    indices: Annotated[
        bool | None,
        typer.Option(
            "--indices/--no-indices",
            help="Codebook indices (int64, one per code position) instead of float codes "
            "(default: indices when the model's code regularizer quantises).",
        ),
    ] = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the latent codes of a dataset split (with labels where known) to a file."""
    from aecore_analysis.codes import code_indexer, encode_data, encode_indices, labels_path, write_table

    if split not in ("test", "train"):
        raise ConfigError(f"--split must be test or train, got '{split}'.")
    loaded = load_model_and_data(model, data, data_dir, device)
    if indices is None:
        indices = code_indexer(loaded.model) is not None
    subset = getattr(loaded.dataset, split)
    target, fmt = _target(out, fmt, loaded.run_dir / f"codes-{split}", overwrite)
    if fmt == "npy" and subset.y is not None:
        output_file(labels_path(target), labels_path(target), overwrite)
    where = next(loaded.model.parameters()).device
    if indices:
        codes = encode_indices(loaded.model, subset, device=where)
        written = write_table(target, codes, subset.y, fmt, key="indices", prefix="i")
    else:
        codes = encode_data(loaded.model, subset, device=where)
        written = write_table(target, codes, subset.y, fmt)

    from rich.table import Table

    table = Table(title=f"codes of {loaded.dataset.name} {split} ({len(codes):,} samples)")
    table.add_column("")
    table.add_column("value", justify="right")
    if indices:
        table.add_row("code positions (indices per sample)", str(codes.shape[1]))
        table.add_row("codebook vectors used", str(int(codes.unique().numel())))
    else:
        table.add_row("code size", str(codes.shape[1]))
        table.add_row("mean |z|", f"{codes.abs().mean():.4g}")
        table.add_row("std per unit (mean)", f"{codes.std(0).mean():.4g}" if len(codes) > 1 else "-")
        table.add_row("units never active (z = 0)", str(int((codes == 0).all(0).sum())))
    table.add_row("labels", "yes" if subset.y is not None else "none")
    console.print(table)
    console.print(f"wrote {_files(written)}")


def decode_command(
    model: ModelArg,
    codes: Annotated[
        Path,
        typer.Argument(
            help="Codes: .safetensors (key 'codes', or 'indices' for a quantised model), .npy or .csv (z0.. "
            "or i0..)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Outputs: .safetensors, .npy or .csv (plus a .png grid for image models), or just a "
            ".png grid (default: decoded.safetensors next to the checkpoint)."
        ),
    ] = None,
    fmt: FormatOpt = None,
    codes_format: Annotated[
        str | None, typer.Option(help="Format of CODES (default: from its suffix).")
    ] = None,
    data_units: Annotated[
        bool, typer.Option(help="Undo the data normalisation (e.g. standardisation) in the data file.")
    ] = False,
    max_images: Annotated[int, typer.Option(help="At most this many images in the grid.")] = 64,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Decode latent codes from a file into outputs (a PNG grid for image models, and/or a data file)."""
    from aecore import checkpoint
    from aecore.training.run import resolve_device
    from aecore_analysis.codes import (
        code_indexer,
        decode_codes,
        decode_indices,
        denormalise,
        holds_indices,
        read_codes,
        read_indices,
        write_table,
    )

    path = checkpoint.resolve(model)
    grid_only = out is not None and out.suffix.lower() == ".png"
    torch_device = resolve_device(device)
    net = checkpoint.load(path, map_location=torch_device)
    norm = net.metadata.get("data", {}).get("normalisation", {})
    image = len(net.input_shape) == 3 and net.input_shape[0] in (1, 3)
    if grid_only and not image:
        raise ConfigError(
            f"the model's outputs have shape {net.input_shape}, not images; write .npy or .csv."
        )
    if grid_only:
        assert out is not None
        data_file, fmt, png = None, None, output_file(out, out, overwrite)
    else:
        data_file, fmt = _target(out, fmt, path.parent / "decoded", overwrite)
        png = (
            output_file(data_file.with_suffix(".png"), data_file.with_suffix(".png"), overwrite)
            if image
            else None
        )
    # Integer codes go through the model's quantiser; a model without one reads them as numbers.
    integral = code_indexer(net) is not None and holds_indices(codes, codes_format)
    if integral:
        z, labels = read_indices(codes, codes_format)
        outputs = decode_indices(net, z, device=torch_device)
    else:
        z, labels = read_codes(codes, codes_format)
        outputs = decode_codes(net, z, device=torch_device)
    written = []
    if data_file is not None and fmt is not None:
        values = denormalise(outputs, norm) if data_units else outputs
        written += write_table(data_file, values, labels, fmt, key="outputs", prefix="x")
    if png is not None:
        from aecore_analysis.plots import save_grid

        shown = denormalise(outputs[:max_images], norm) / float(norm.get("divisor", 1.0))
        nrow = min(len(shown), 8) or 1
        written.append(save_grid(shown.clamp(0, 1), png, nrow=nrow))
    what = "rows of indices" if integral else "codes"
    console.print(
        f"decoded {len(z):,} {what} of size {z.shape[1]} into outputs of shape "
        f"{'×'.join(map(str, net.input_shape))} "
        f"(range {float(outputs.min()):.3g} to {float(outputs.max()):.3g})"
    )
    console.print(f"wrote {_files(written)}")
