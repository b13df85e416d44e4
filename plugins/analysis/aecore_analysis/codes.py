"""Latent codes in and out of files: what ``ae encode`` writes and ``ae decode`` reads.

Three formats, chosen by the file suffix, so codes can go to any tool:

``.safetensors``  tensors ``codes`` (N, d) and, where known, ``labels`` (N,)
``.npy``          the codes; labels in a sibling ``<stem>.labels.npy``
``.csv``          columns ``z0 .. z{d-1}`` and ``label`` (empty where unknown)

Decoded outputs use the same formats with the key ``outputs`` and columns
``x0 ..`` (flattened), so a decoded table can be read back as ``npy:``/``csv:`` data.

A model whose code regularizer quantises (it offers ``code_indices(z)`` and
``code_from_indices(index)``) has integer codes too: one codebook index per
code position, int64 (N, P), written as the tensor ``indices``, an integer
``.npy`` array, or columns ``i0 .. i{P-1}``; :func:`code_indexer` finds such a
regularizer by those two methods, whatever it is called.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError, ShapeError
from aecore.model import Autoencoder, split_code

__all__ = [
    "FORMATS",
    "code_indexer",
    "decode_codes",
    "decode_indices",
    "denormalise",
    "encode_data",
    "encode_indices",
    "file_format",
    "holds_indices",
    "labels_path",
    "read_codes",
    "read_indices",
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


def code_indexer(model: Autoencoder) -> tuple[int, nn.Module] | None:
    """The last regularizer offering ``code_indices`` and ``code_from_indices``, with its place in order."""
    found = None
    for place, reg in enumerate(model.regularizers.values()):
        if callable(getattr(reg, "code_indices", None)) and callable(getattr(reg, "code_from_indices", None)):
            found = (place, reg)
    return found


def _indexer(model: Autoencoder) -> tuple[int, nn.Module]:
    found = code_indexer(model)
    if found is None:
        raise ConfigError(
            "the model's code has no integer form: none of its regularizers offers code_indices and "
            "code_from_indices (a quantiser does); write float codes instead."
        )
    return found


@torch.no_grad()
def encode_indices(
    model: Autoencoder, data: TensorData, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """The codebook index of every code position of every sample, in order: int64 (N, P) on the CPU.

    The indexing regularizer receives what it receives in ``model.encode``:
    the encoder's output after the regularizers listed before it.
    """
    place, indexer = _indexer(model)
    before = list(model.regularizers.values())[:place]
    model.eval()
    parts = []
    for xb in data.batches(batch_size):
        z = model.encoder(xb.to(device))
        for reg in before:
            z = split_code(reg.transform_code(z))[0]
        parts.append(indexer.code_indices(z).long().cpu())
    return torch.cat(parts) if parts else torch.empty(0, 0, dtype=torch.long)


@torch.no_grad()
def decode_indices(
    model: Autoencoder, indices: Tensor, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """Decoder outputs for codebook indices (N, P): each row's code, through the regularizers after the
    indexing one, as ``model.encode`` would have passed it on; a wrong width or index is one line."""
    place, indexer = _indexer(model)
    after = list(model.regularizers.values())[place + 1 :]
    model.eval()
    out = []
    for ib in indices.split(batch_size):
        z = indexer.code_from_indices(ib.to(device))
        for reg in after:
            z = split_code(reg.transform_code(z))[0]
        out.append(model.decode(z).float().cpu())
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
    """Write rows of ``values`` (flattened) and optional labels; returns the files written.

    Integer values (codebook indices) stay int64, and CSV cells are written as whole numbers.
    """
    integral = _integral(values)
    kept = values.detach().cpu().long() if integral else values.detach().float().cpu()
    flat = kept.reshape(len(values), -1).contiguous()
    written = [path]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = {key: kept.contiguous()}
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
                writer.writerow([str(v) if integral else f"{v:.9g}" for v in row] + [y])
    return written


def read_codes(path: Path, fmt: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Codes (float32, (N, d)) and labels if the file has them, from any of the three formats.

    Whatever the format, the codes must be a non-empty (N, d) table of finite
    numbers that float32 holds, and labels, where given, whole numbers, one
    per row; anything else is a one-line :class:`DataError` naming the file.
    Nothing is unpickled, and a ``.npy`` header is checked against the file's
    size before its data is read.
    """
    if not path.is_file():
        raise DataError(f"no codes file at {path}.")
    fmt = file_format(path, fmt)
    labels = None
    if fmt == "safetensors":
        tensors = _read_safetensors(path)
        if "codes" not in tensors:
            names = ", ".join(sorted(tensors)[:8]) or "none"
            raise DataError(f"{path} has no tensor 'codes' (it has: {names}).")
        codes, labels = tensors["codes"], tensors.get("labels")
    elif fmt == "npy":
        codes = _npy_tensor(path, "codes")
        if labels_path(path).is_file():
            labels = _npy_tensor(labels_path(path), "labels")
    else:
        codes, labels = _read_codes_csv(path)
    return _checked_codes(codes, path), None if labels is None else _checked_labels(labels, len(codes), path)


def holds_indices(path: Path, fmt: str | None = None) -> bool:
    """Whether a codes file holds codebook indices: a tensor ``indices``, an integer ``.npy`` array,
    or CSV columns ``i0 ..``. A file that cannot be read says so later, when it is read."""
    if not path.is_file():
        return False
    fmt = file_format(path, fmt)
    try:
        if fmt == "safetensors":
            from aecore.io import read_header

            return "indices" in read_header(path)
        if fmt == "npy":
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            return isinstance(mapped, np.ndarray) and mapped.dtype.kind in "iu"
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next((row for row in csv.reader(f) if row), [])
        return any(name.strip() == "i0" for name in header)
    except Exception:  # a damaged file is reported by the reader, in one line
        return False


def read_indices(path: Path, fmt: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Codebook indices (int64, (N, P)) and labels if the file has them, from any of the three formats.

    The indices must be a non-empty table of whole numbers from 0 up; whether
    they fit a codebook is for the model's ``code_from_indices`` to say. A
    bad file is a one-line :class:`DataError` naming it.
    """
    if not path.is_file():
        raise DataError(f"no codes file at {path}.")
    fmt = file_format(path, fmt)
    labels = None
    if fmt == "safetensors":
        tensors = _read_safetensors(path)
        if "indices" not in tensors:
            names = ", ".join(sorted(tensors)[:8]) or "none"
            raise DataError(f"{path} has no tensor 'indices' (it has: {names}).")
        index, labels = tensors["indices"], tensors.get("labels")
    elif fmt == "npy":
        index = _npy_tensor(path, "indices")
        if labels_path(path).is_file():
            labels = _npy_tensor(labels_path(path), "labels")
    else:
        index, labels = _read_indices_csv(path)
    index = _checked_indices(index, path)
    return index, None if labels is None else _checked_labels(labels, len(index), path)


def _checked_indices(index: Tensor, path: Path) -> Tensor:
    if index.dim() != 2:
        raise DataError(
            f"{path} holds indices of shape {tuple(index.shape)}; indices are a table, one row per sample."
        )
    if len(index) == 0 or index.shape[1] == 0:
        raise DataError(f"{path} holds no indices (shape {tuple(index.shape)}); write some with 'ae encode'.")
    if not _integral(index):
        raise DataError(
            f"{path} holds {str(index.dtype).removeprefix('torch.')} indices; "
            "codebook indices are whole numbers."
        )
    if index.dtype == torch.uint64 and int(index.numpy().max()) >= 2**63:
        raise DataError(f"{path} has an index beyond the int64 range; codebook indices are small numbers.")
    index = index.long()
    if bool((index < 0).any()):
        row = int((index < 0).any(1).nonzero()[0])
        raise DataError(
            f"{path} has a negative index in row {row} (rows count from 0); indices count from 0."
        )
    return index


def _read_indices_csv(path: Path) -> tuple[Tensor, Tensor | None]:
    """Columns ``i0 ..`` as whole numbers, and ``label`` where given (the layout ``write_table`` uses)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(line, row) for line, row in enumerate(csv.reader(f), start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV ({' '.join(str(exc).split())}).") from None
    header = [name.strip() for name in rows[0][1]] if rows else []
    columns = {int(n[1:]): i for i, n in enumerate(header) if n[:1] == "i" and n[1:].isdecimal()}
    if not columns or sorted(columns) != list(range(len(columns))):
        raise DataError(f"{path} has no index columns i0, i1, ... with no gap (as 'ae encode' writes).")
    order = [columns[k] for k in range(len(columns))]
    label_col = header.index("label") if "label" in header else None
    values, labels = [], []
    for line, row in rows[1:]:
        try:
            values.append([int(row[i]) for i in order])
            if label_col is not None and label_col < len(row) and row[label_col].strip():
                labels.append(int(row[label_col]))
        except (ValueError, IndexError):
            raise DataError(f"{path} row {line}: the indices and label are not all whole numbers.") from None
    if labels and len(labels) != len(values):
        raise DataError(f"{path} labels some rows and not others; label every row or none.")
    try:
        index = torch.tensor(values, dtype=torch.long).reshape(len(values), len(order))
    except RuntimeError:  # an index beyond int64
        raise DataError(
            f"{path} has an index beyond the int64 range; codebook indices are small numbers."
        ) from None
    return index, torch.tensor(labels, dtype=torch.long) if labels else None


#: The largest magnitude float32 holds: a larger code would become infinite.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _checked_codes(codes: Tensor, path: Path) -> Tensor:
    if codes.dim() != 2:
        raise DataError(
            f"{path} holds codes of shape {tuple(codes.shape)}; codes are a table, one row per sample."
        )
    if len(codes) == 0 or codes.shape[1] == 0:
        raise DataError(f"{path} holds no codes (shape {tuple(codes.shape)}); encode some with 'ae encode'.")
    if codes.is_complex() or not (codes.is_floating_point() or codes.dtype == torch.bool or _integral(codes)):
        raise DataError(
            f"{path} holds {str(codes.dtype).removeprefix('torch.')} codes; codes must be numbers."
        )
    wide = codes.double()
    bad = ~torch.isfinite(wide) | (wide.abs() > _FLOAT32_MAX)
    if bool(bad.any()):
        row = int(bad.any(1).nonzero()[0])
        raise DataError(
            f"{path} has a NaN, infinite or too large code in row {row} (rows count from 0); "
            "codes must be finite float32 numbers."
        )
    return codes.float()


def _checked_labels(labels: Tensor, n: int, path: Path) -> Tensor:
    """Labels as int64: one whole number per row of codes."""
    if labels.dim() != 1 or len(labels) != n:
        raise DataError(
            f"{path} has labels of shape {tuple(labels.shape)} for {n} rows of codes; "
            "give one label per row, or none."
        )
    if labels.dtype == torch.bool or _integral(labels):
        if labels.dtype == torch.uint64 and len(labels) and int(labels.numpy().max()) >= 2**63:
            raise DataError(f"{path} has a label beyond the int64 range; labels are class numbers.")
        return labels.long()
    if labels.is_floating_point():
        wide = labels.double()
        whole = torch.isfinite(wide) & (wide == wide.round()) & (wide.abs() < 2**53)
        if bool(whole.all()):
            return wide.long()
        row = int((~whole).nonzero()[0])
        raise DataError(
            f"{path} has the label {float(wide[row]):g} in row {row}; labels are whole class numbers."
        )
    raise DataError(
        f"{path} has {str(labels.dtype).removeprefix('torch.')} labels; labels are class numbers."
    )


def _integral(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from aecore.errors import CheckpointError
    from aecore.io import read_header

    try:
        read_header(path)  # sizes and offsets checked before any tensor is read
        return load_file(str(path))
    except CheckpointError as exc:  # it names the file and what is wrong with it
        raise DataError(str(exc)) from None
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise DataError(
            f"{path} is not a readable safetensors file ({' '.join(str(exc).split())})."
        ) from None


def _npy_tensor(path: Path, what: str) -> Tensor:
    """One ``.npy`` array as a tensor, never unpickled: memory-mapped first, so its size is checked."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray):
            mapped.close()
            raise DataError(f"{path} holds several arrays (.npz); save the {what} with numpy.save.")
        arr = np.array(mapped)
    except DataError:
        raise
    except Exception as exc:  # numpy's header parser can raise almost anything on a hostile file
        raise DataError(f"cannot read {path} as a .npy array ({' '.join(str(exc).split())}).") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path} holds {arr.dtype} values; {what} must be numbers.")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_codes_csv(path: Path) -> tuple[Tensor, Tensor | None]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(line, row) for line, row in enumerate(csv.reader(f), start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV ({' '.join(str(exc).split())}).") from None
    if not rows:
        raise DataError(f"{path} is empty; expected a header z0, z1, ... (as 'ae encode' writes) and rows.")
    header = [name.strip() for name in rows[0][1]]
    z_cols = {int(name[1:]): i for i, name in enumerate(header) if name[:1] == "z" and name[1:].isdecimal()}
    if not z_cols:
        raise DataError(f"{path} has no code columns; expected a header z0, z1, ... (as 'ae encode' writes).")
    width = len(z_cols)
    if (
        sorted(z_cols) != list(range(width))
        or sum(name[:1] == "z" and name[1:].isdecimal() for name in header) != width
    ):
        raise DataError(
            f"{path} has code columns {', '.join(n for n in header if n[:1] == 'z')[:80]}; "
            "expected z0, z1, ... with no gap, each once."
        )
    order = [z_cols[k] for k in range(width)]
    label_col = header.index("label") if header.count("label") == 1 else None
    if header.count("label") > 1:
        raise DataError(f"{path} has the column 'label' twice.")
    codes, labels, unlabelled = [], [], []
    for line, row in rows[1:]:
        try:
            codes.append([float(row[i]) for i in order])
        except (ValueError, IndexError):
            raise DataError(f"{path} row {line}: the codes are not all numbers.") from None
        cell = row[label_col].strip() if label_col is not None and label_col < len(row) else ""
        if cell == "":
            unlabelled.append(line)
            continue
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value == int(value) and abs(value) < 2**53):
            raise DataError(f"{path} row {line}: the label '{cell[:20]}' is not a whole class number.")
        labels.append(int(value))
    if labels and unlabelled:
        raise DataError(
            f"{path} row {unlabelled[0]} has no label while other rows have one; label every row or none."
        )
    y = torch.tensor(labels, dtype=torch.long) if labels else None
    return torch.tensor(codes, dtype=torch.float64).reshape(len(codes), width), y
