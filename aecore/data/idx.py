"""Read and write IDX files (the MNIST format), plain or gzipped, straight into tensors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from torch import Tensor

from aecore.errors import DataError

_UINT8 = 0x08


def read_idx(path: Path) -> Tensor:
    """A uint8 IDX file as a tensor of its declared shape."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}.") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != _UINT8:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + (int(torch.tensor(dims).prod()) if dims else 1)
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}.")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def write_idx(path: Path, data: Tensor) -> None:
    """Write a uint8 tensor as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    data = data.to(torch.uint8).contiguous()
    header = bytes([0, 0, _UINT8, data.dim()]) + struct.pack(f">{data.dim()}I", *data.shape)
    payload = header + data.numpy().tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0) if path.suffix == ".gz" else payload)
