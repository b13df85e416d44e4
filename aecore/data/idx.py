"""Read and write IDX files (the MNIST format), plain or gzipped, straight into tensors.

The header is read and checked first: a file whose declared shape needs more
bytes than it holds (or could hold, once decompressed) is refused before
anything of that size is allocated.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from aecore.errors import DataError

__all__ = ["read_idx", "write_idx"]

_UINT8 = 0x08
#: Deflate cannot shrink data by more than about 1032:1, so a gzip file of n bytes holds at most this many.
_MAX_RATIO = 1100
_CHUNK = 1 << 20


def read_idx(path: Path) -> Tensor:
    """A uint8 IDX file as a tensor of its declared shape; any damage is a one-line :class:`DataError`."""
    gz = path.suffix == ".gz"
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{path} is empty; it should be a uint8 IDX file (download it again).")
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            header = _read(f, 4)
            if len(header) < 4 or header[0:2] != b"\x00\x00" or header[2] != _UINT8:
                raise DataError(f"{path} is not a uint8 IDX file (bad magic number).")
            ndim = header[3]
            raw_dims = _read(f, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(
                    f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, "
                    f"the file has {4 + len(raw_dims)}."
                )
            dims = struct.unpack(f">{ndim}I", raw_dims)
            payload = math.prod(dims)
            expected = 4 + 4 * ndim + payload
            if not gz and size != expected:
                raise DataError(_size_problem(path, size, expected))
            if gz and payload > _MAX_RATIO * size:
                raise DataError(
                    f"{path} declares shape {dims} ({payload:,} bytes), more than a {size:,}-byte gzip file "
                    "can hold; the file is damaged (download it again)."
                )
            data = _read(f, payload + 1 if gz else payload)  # one byte more finds gzipped padding
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}.") from None
    if len(data) > payload:  # only a gzipped file gets here: the size of a plain one was checked
        raise DataError(
            f"{path} is padded: it decompresses to more than the {expected:,} bytes its header declares; "
            "the file is damaged (download it again)."
        )
    if len(data) < payload:
        raise DataError(_size_problem(path, expected - payload + len(data), expected, decompressed=gz))
    return (
        torch.frombuffer(data, dtype=torch.uint8).reshape(dims)
        if payload
        else torch.empty(dims, dtype=torch.uint8)
    )


def _read(f: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes, in chunks: memory grows with what the file really holds, not with ``n``."""
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(_CHUNK, n - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _size_problem(path: Path, size: int, expected: int, *, decompressed: bool = False) -> str:
    what = "decompressed bytes" if decompressed else "bytes"
    kind = "truncated" if size < expected else "padded (it has more data than its header declares)"
    return (
        f"{path} is {kind}: {size:,} {what} where its header declares {expected:,}; "
        "the file is damaged (download it again)."
    )


def write_idx(path: Path, data: Tensor) -> None:
    """Write a uint8 tensor as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    data = data.to(torch.uint8).contiguous()
    header = bytes([0, 0, _UINT8, data.dim()]) + struct.pack(f">{data.dim()}I", *data.shape)
    payload = header + data.numpy().tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0) if path.suffix == ".gz" else payload)
