"""Pieces for commands that work on a trained model, aecore's own and plugins' alike.

Options are declared once here so every command spells them the same way;
:func:`load_model_and_data` reloads a checkpoint with the data it was trained
on; :func:`output_file` enforces the rule that existing files are never
overwritten without ``--overwrite``. This module is public API for command
plugins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aecore.errors import DataError, RunDirectoryError, ShapeError

if TYPE_CHECKING:
    from aecore.data import Dataset
    from aecore.model import Autoencoder

ModelArg = Annotated[Path, typer.Argument(help="A .safetensors checkpoint or a run directory.")]
DataOpt = Annotated[str | None, typer.Option(help="Dataset (default: the one the model was trained on).")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Local copy of the dataset (no download).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
OutOpt = Annotated[Path | None, typer.Option(help="Output file (default: next to the checkpoint).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output file.")]


@dataclass
class Loaded:
    """A reloaded model, its checkpoint path, metadata and the matching dataset."""

    model: Autoencoder
    path: Path
    meta: dict[str, Any]
    dataset: Dataset

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def load_model_and_data(
    path: Path, data: str | None = None, data_dir: Path | None = None, device: str = "cpu"
) -> Loaded:
    """Reload a checkpoint and the dataset it names (or ``data``), checking their shapes agree."""
    from aecore import checkpoint
    from aecore.sources import load_dataset
    from aecore.training.run import resolve_device

    torch_device = resolve_device(device)
    model = checkpoint.load(path, map_location=torch_device)  # resolves (and checks) the path itself
    file = checkpoint.resolve(path)
    recorded = model.metadata.get("data", {})
    if data is None:
        if recorded.get("in_memory") is True:
            shape = recorded.get("sample_shape")
            raise DataError(
                f"{file} was trained on data held in memory ({recorded.get('origin', 'from Python')}"
                f"{f', samples of shape {tuple(shape)}' if isinstance(shape, list) else ''}); "
                "pass --data naming a source with the same kind of samples."
            )
        data = recorded.get("name") if isinstance(recorded.get("name"), str) else None
        if data_dir is None and isinstance(recorded.get("data_dir"), str):
            data_dir = Path(recorded["data_dir"])
    # the model's recorded normalisation: tables reuse the training statistics, never recompute them
    norm = recorded.get("normalisation")
    dataset = load_dataset(data, data_dir, normalisation=norm if isinstance(norm, dict) else None)
    if dataset.test.shape != model.input_shape:
        raise ShapeError(
            f"the model takes inputs of shape {model.input_shape}, but {dataset.name} has "
            f"{dataset.test.shape}; use the data it was trained on."
        )
    return Loaded(model, file, model.metadata, dataset)


def output_file(out: Path | None, default: Path, overwrite: bool) -> Path:
    """Where to write an artefact: ``out`` or ``default``; refuses to replace a file unless told to.

    The folder is made if need be and tried with a scratch file, so a
    read-only, missing or full place, or a file where a folder should be,
    is a one-line :class:`~aecore.errors.FileSystemError` now, before any
    work, rather than a crash at the end.
    """
    import tempfile

    from aecore.io import FILE_SYSTEM_ERRNOS, file_system_error

    target = out if out is not None else default
    if target.is_dir():
        raise RunDirectoryError(f"{target} is a folder; choose a file name for --out.")
    if target.exists() and not overwrite:
        raise RunDirectoryError(f"{target} already exists; pass --overwrite or choose another --out.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        if exc.errno not in FILE_SYSTEM_ERRNOS:
            raise
        raise file_system_error(exc, target, fix="choose another --out") from exc
    return target
