"""Latent codes in and out of files: what ``ae encode`` writes and ``ae decode`` reads.

Three formats, chosen by the file suffix, so codes can go to any tool:

``.safetensors``  tensors ``codes`` (N, d) and, where known, ``labels`` (N,)
``.npy``          the codes; labels in a sibling ``<stem>.labels.npy``
``.csv``          columns ``z0 .. z{d-1}`` and ``label`` (empty where unknown)

Decoded outputs use the same formats with the key ``outputs`` and columns
``x0 ..`` (flattened), so a decoded table can be read back as ``npy:``/``csv:`` data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError, ShapeError
from aecore.model import Autoencoder

__all__ = [
    "FORMATS",
    "decode_codes",
    "denormalise",
    "encode_data",
    "file_format",
    "labels_path",
    "read_codes",
    "write_table",
]

FORMATS = ("safetensors", "npy", "csv")


def file_format(path: Path, fmt: str | None = None) -> str:
    """The format named by ``fmt`` or by the suffix of ``path``; they must agree when both are given."""
    suffix = path.suffix.lower().lstrip(".")
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format '{fmt}'; choose {', '.join(FORMATS)}.")
        if suffix in FORMATS and suffix != fmt:
            raise ConfigError(f"--format {fmt} disagrees with the file name {path.name}; use one.")
        return fmt
    if suffix not in FORMATS:
        raise ConfigError(f"cannot tell the format of '{path.name}'; name it .safetensors, .npy or .csv.")
    return suffix


def labels_path(path: Path) -> Path:
    """Where the labels of a ``.npy`` file go: ``codes.npy`` -> ``codes.labels.npy``."""
    return path.with_name(f"{path.stem}.labels.npy")


@torch.no_grad()
def encode_data(
    model: Autoencoder, data: TensorData, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """The codes ``model.encode`` gives every sample, in order, as float32 on the CPU: (N, latent_dim)."""
    model.eval()
    parts = [model.encode(xb.to(device)).float().cpu() for xb in data.batches(batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, model.latent_dim)


@torch.no_grad()
def decode_codes(
    model: Autoencoder, codes: Tensor, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """Decoder outputs for codes of shape (N, latent_dim); a wrong width is a ShapeError."""
    if codes.dim() != 2 or codes.shape[1] != model.latent_dim:
        got = f"width {codes.shape[1]}" if codes.dim() == 2 else f"shape {tuple(codes.shape)}"
        raise ShapeError(
            f"the model decodes codes of size {model.latent_dim}, but these codes have {got}; "
            f"give {model.latent_dim} values per row."
        )
    model.eval()
    out = [model.decode(zb.to(device)).float().cpu() for zb in codes.float().split(batch_size)]
    return torch.cat(out) if out else torch.empty(0, *model.input_shape)


def denormalise(x: Tensor, normalisation: dict) -> Tensor:
    """Model-space values back to the data's own units (undoes ``TensorData.normalise``)."""
    out = x.float().clone()
    if normalisation.get("std") is not None:
        out = out * torch.tensor(normalisation["std"], dtype=torch.float32)
    if normalisation.get("mean") is not None:
        out = out + torch.tensor(normalisation["mean"], dtype=torch.float32)
    divisor = float(normalisation.get("divisor", 1.0))
    return out * divisor if divisor != 1.0 else out


def write_table(
    path: Path, values: Tensor, labels: Tensor | None, fmt: str, *, key: str = "codes", prefix: str = "z"
) -> list[Path]:
    """Write rows of ``values`` (flattened) and optional labels; returns the files written."""
    flat = values.detach().float().cpu().reshape(len(values), -1).contiguous()
    written = [path]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = {key: values.detach().float().cpu().contiguous()}
        if labels is not None:
            tensors["labels"] = labels.detach().cpu().contiguous()
        save_file(tensors, str(path))
    elif fmt == "npy":
        np.save(path, flat.numpy())
        if labels is not None:
            np.save(labels_path(path), labels.cpu().numpy())
            written.append(labels_path(path))
    else:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([f"{prefix}{i}" for i in range(flat.shape[1])] + ["label"])
            ys = labels.tolist() if labels is not None else [""] * len(flat)
            for row, y in zip(flat.tolist(), ys, strict=True):
                writer.writerow([f"{v:.9g}" for v in row] + [y])
    return written


def read_codes(path: Path, fmt: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Codes (float32, (N, d)) and labels if the file has them, from any of the three formats."""
    if not path.is_file():
        raise DataError(f"no codes file at {path}.")
    fmt = file_format(path, fmt)
    labels = None
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable safetensors file ({exc}).") from None
        key = "codes" if "codes" in tensors else None
        if key is None:
            raise DataError(f"{path} has no tensor 'codes' (it has: {', '.join(tensors) or 'none'}).")
        codes, labels = tensors["codes"], tensors.get("labels")
    elif fmt == "npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as a .npy array ({exc}).") from None
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{path} holds {arr.dtype} values; codes must be numbers.")
        codes = torch.from_numpy(np.ascontiguousarray(arr))
        if labels_path(path).is_file():
            labels = torch.from_numpy(np.load(labels_path(path), allow_pickle=False))
    else:
        codes, labels = _read_codes_csv(path)
    if not torch.isfinite(codes.float()).all():
        row = int((~torch.isfinite(codes.float())).reshape(len(codes), -1).any(1).nonzero()[0])
        raise DataError(f"{path} has a NaN or infinite code in row {row} (rows count from 0).")
    return codes.float(), labels


def _read_codes_csv(path: Path) -> tuple[Tensor, Tensor | None]:
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise DataError(f"{path} is empty.")
    header = rows[0]
    z_cols = [i for i, name in enumerate(header) if name.startswith("z") and name[1:].isdigit()]
    if not z_cols:
        raise DataError(f"{path} has no code columns; expected a header z0, z1, ... (as 'ae encode' writes).")
    label_col = header.index("label") if "label" in header else None
    codes, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            codes.append([float(row[i]) for i in z_cols])
        except (ValueError, IndexError):
            raise DataError(f"{path} row {line}: the codes are not all numbers.") from None
        if label_col is not None and label_col < len(row) and row[label_col] != "":
            labels.append(int(float(row[label_col])))
    y = torch.tensor(labels, dtype=torch.long) if labels and len(labels) == len(codes) else None
    return torch.tensor(codes, dtype=torch.float32).reshape(len(codes), len(z_cols)), y
