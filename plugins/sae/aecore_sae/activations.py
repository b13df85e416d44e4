"""``--data activations:PATH``: a model's activation vectors, from ``.npy`` or ``.safetensors`` shards.

PATH is one file, a folder (every ``*.npy`` and ``*.safetensors`` in it, in
name order), or a glob pattern (``acts/layer6-*.npy``). Each shard holds one
(N_i, d) array of float16, bfloat16 or float32 vectors; every shard must
have the same d and dtype. A ``.safetensors`` shard with several tensors
names the one to read with ``?key=NAME``. Nothing is unpickled: ``.npy``
files are opened with ``allow_pickle=False`` and memory-mapped, safetensors
through ``safe_open``, and every value must be finite.

The shards are copied once, a chunk at a time, into aecore's data cache in
their own dtype (memory-mapped from then on, so the data may exceed memory),
then split into train and test rows by a seeded draw
(``test_fraction``, ``seed``), as tables are. The stored vectors are used
as they are (normalisation ``{"kind": "identity"}``) unless
``scale=mean_squared_norm``: every vector is then divided by one constant c
so that the training rows' mean squared norm is d, and c is recorded
(``{"kind": "mean_squared_norm", "divisor": c}``) for the model to reuse.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from aecore.config import param
from aecore.data import Dataset, TensorData, TensorStore
from aecore.data.tensors import check_normalisation
from aecore.errors import DataError

__all__ = ["Activations", "ActivationsConfig", "Shard", "find_shards", "open_shard"]

#: Rows copied at a time from a shard into the prepared tensor.
CHUNK_ROWS = 65536
SUFFIXES = (".npy", ".safetensors")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


@dataclass(frozen=True)
class ActivationsConfig:
    test_fraction: float = param(0.1, "Share of the rows held out for testing (a seeded draw).")
    seed: int = param(0, "Seed of the train/test split of the rows.")
    scale: Literal["none", "mean_squared_norm"] = param(
        "none",
        "none: vectors as stored; mean_squared_norm: divided by one constant so that the training "
        "rows' mean squared norm is d.",
    )
    key: str | None = param(None, "The tensor to read from safetensors shards holding several.")

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction:g}")


@dataclass(frozen=True)
class Shard:
    """One readable shard: its path, rows, width and dtype name, and how to read a range of rows."""

    path: Path
    rows: int
    dim: int
    dtype: str
    key: str | None = None

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as a tensor of the shard's dtype (a copy: the file stays closed)."""
        try:
            if self.path.suffix == ".npy":
                return torch.from_numpy(np.array(_open_npy(self.path)[start:stop]))
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                return f.get_slice(self.key)[start:stop].clone()
        except DataError:
            raise
        except Exception as exc:  # the file changed or is damaged past its header
            raise DataError(
                f"cannot read rows {start}-{stop} of {self.path} ({' '.join(str(exc).split())})."
            ) from None


def find_shards(location: str) -> list[Path]:
    """The shard files ``location`` names: a file, a folder's shards, or a glob pattern's matches."""
    path = Path(location)
    if any(c in location for c in "*?["):
        found = [Path(p) for p in sorted(glob.glob(location)) if Path(p).suffix in SUFFIXES]
        if not found:
            raise DataError(f"no .npy or .safetensors shards match {location}.")
        return found
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"{path} holds no .npy or .safetensors shards.")
        return found
    if not path.exists():
        raise DataError(f"activation file {path} does not exist.")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path} is neither .npy nor .safetensors; save the activations as one of them.")
    return [path]


def _open_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy's header parser can raise almost anything on a hostile file
        raise DataError(f"cannot read {path} as a .npy array ({' '.join(str(exc).split())}).") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} holds several arrays (.npz); save one array per shard with numpy.save.")
    return array


def open_shard(path: Path, key: str | None = None) -> Shard:
    """A shard's header, checked: a 2-D array of float16, bfloat16 or float32 values."""
    if path.suffix == ".npy":
        array = _open_npy(path)
        dtype, shape = str(array.dtype), tuple(array.shape)
        if array.dtype.byteorder == ">" or dtype not in ("float16", "float32"):
            described = f"big-endian {array.dtype.name}" if array.dtype.byteorder == ">" else array.dtype.name
            raise DataError(
                f"{path} holds {described} values; activation shards are little-endian float16, bfloat16 "
                "or float32."
            )
    else:
        dtype, shape, key = _safetensors_header(path, key)
    if len(shape) != 2 or shape[1] == 0:
        raise DataError(f"{path} has shape {shape}; an activation shard is one (rows, d) array.")
    return Shard(path, int(shape[0]), int(shape[1]), dtype, key)


def _safetensors_header(path: Path, key: str | None) -> tuple[str, tuple[int, ...], str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if key is None:
                if len(keys) != 1:
                    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
                    raise DataError(
                        f"{path} holds {len(keys)} tensors ({shown or 'none'}); name one with ?key=NAME."
                    )
                key = keys[0]
            elif key not in keys:
                raise DataError(f"{path} has no tensor '{key}'; it holds {', '.join(keys[:5]) or 'none'}.")
            piece = f.get_slice(key)
            code, shape = piece.get_dtype(), tuple(piece.get_shape())
    except DataError:
        raise
    except Exception as exc:  # a damaged header: safetensors raises its own error types
        raise DataError(f"cannot read {path} as safetensors ({' '.join(str(exc).split())}).") from None
    if code not in _SAFETENSORS_DTYPES:
        raise DataError(f"{path} holds {code} values; activation shards are float16, bfloat16 or float32.")
    return _SAFETENSORS_DTYPES[code], shape, key


def _resolve(text: str, data_dir: Path | None) -> Path:
    path = Path(text).expanduser()
    base = data_dir if data_dir is not None else Path.cwd()
    return path if path.is_absolute() else base / path


def _chunks(shards: list[Shard]) -> Iterator[tuple[Shard, int, int, int]]:
    """(shard, start, stop, position in the whole) for every chunk of every shard."""
    position = 0
    for shard in shards:
        for start in range(0, shard.rows, CHUNK_ROWS):
            stop = min(shard.rows, start + CHUNK_ROWS)
            yield shard, start, stop, position
            position += stop - start


class Activations:
    """Activation vectors from ``.npy``/``.safetensors`` shards: ``--data activations:acts/``."""

    Config = ActivationsConfig
    takes_location = True

    def __init__(self, config: ActivationsConfig) -> None:
        self.config = config

    def locate(self, location: str, data_dir: Path | None) -> str:
        """The location as an absolute path (relative ones start at --data-dir, else here)."""
        return str(_resolve(location, data_dir).absolute())

    def files(self, location: str, *, data_dir: Path | None) -> list[Path]:
        return find_shards(location)

    def load(
        self,
        location: str,
        *,
        data_dir: Path | None,
        normalisation: dict[str, Any] | None,
        store: TensorStore | None = None,
    ) -> Dataset:
        cfg = self.config
        shards = [open_shard(p, cfg.key) for p in find_shards(location)]
        first = shards[0]
        for shard in shards[1:]:
            if shard.dim != first.dim:
                raise DataError(
                    f"shard {shard.path.name} has vectors of {shard.dim} values but {first.path.name} has "
                    f"{first.dim}; every shard needs the same width."
                )
            if shard.dtype != first.dtype:
                raise DataError(
                    f"shard {shard.path.name} is {shard.dtype} but {first.path.name} is {first.dtype}; "
                    "save every shard in one dtype."
                )
        total = sum(s.rows for s in shards)
        if total < 2:
            raise DataError(f"{location} holds {total} vector(s); a train/test split needs at least 2.")
        n_test = min(max(round(total * cfg.test_fraction), 1), total - 1)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(cfg.seed))
        is_test = torch.zeros(total, dtype=torch.bool)
        is_test[order[:n_test]] = True
        del order

        store = store or TensorStore(None)
        x = store.empty("all.x", (total, first.dim), DTYPES[first.dtype])
        advance = store.progress(total, "reading activations")
        square = 0.0  # Σ‖x‖² over the training rows, in float64
        for shard, start, stop, position in _chunks(shards):
            chunk = shard.read(start, stop)
            wide = chunk.double()
            finite = torch.isfinite(wide).all(dim=1)
            if not bool(finite.all()):
                row = start + int((~finite).nonzero()[0])
                raise DataError(
                    f"{shard.path} row {row} (counting from 0) holds a NaN or infinite value; "
                    "fix or drop that vector."
                )
            x[position : position + len(chunk)] = chunk
            square += float(wide.pow(2).sum(dim=1)[~is_test[position : position + len(chunk)]].sum())
            advance(len(chunk))
        norm = self._normalisation(normalisation, square / (total - n_test), first.dim, location)
        whole = TensorData(x, None, norm)
        spec = {
            "format": "activations",
            "path": location,
            "shards": len(shards),
            "dim": first.dim,
            "dtype": first.dtype,
            "rows": total,
        }
        return Dataset(
            f"activations:{location}",
            whole.subset((~is_test).nonzero().flatten()),
            whole.subset(is_test.nonzero().flatten()),
            spec,
        )

    def _normalisation(
        self, recorded: dict[str, Any] | None, mean_square: float, dim: int, location: str
    ) -> dict[str, Any]:
        if recorded is not None:  # a trained model's record: its scale, never recomputed
            try:
                return check_normalisation(recorded)
            except DataError as exc:
                raise DataError(f"the model's normalisation cannot be used for {location}: {exc}") from None
        if self.config.scale == "none":
            return {"kind": "identity"}
        if not mean_square > 0:
            raise DataError(f"{location}: the training vectors are all zero, so they cannot be scaled.")
        divisor = math.sqrt(mean_square / dim)
        return {"kind": "mean_squared_norm", "divisor": divisor, "mean_squared_norm": float(dim)}
