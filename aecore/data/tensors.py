"""An in-memory dataset tensor with its normalisation.

Images stay ``uint8`` (a quarter of the float size) and become float only a
batch at a time; a batch is an index slice, never a per-item transform.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from aecore.errors import DataError

__all__ = ["TensorData", "check_normalisation"]

#: Pixels stored as uint8 become floats in [0, 1].
UINT8_IMAGES: dict[str, Any] = {"kind": "scale", "divisor": 255.0}


def check_normalisation(norm: Any, shape: Sequence[int] | None = None) -> dict[str, Any]:
    """``norm`` checked as a normalisation record, or a one-line :class:`DataError` naming the bad field.

    A record is a table: ``kind`` a name; ``divisor`` a finite positive
    number; ``mean`` and ``std`` finite numbers (``std`` positive) as nested
    lists whose shape fits one sample of ``shape`` when that is given. Other
    keys are left to the source that wrote them.
    """
    if not isinstance(norm, Mapping):
        raise DataError(f"the normalisation is a {type(norm).__name__}, not a table.")
    if "kind" in norm and not isinstance(norm["kind"], str):
        raise DataError(f"the normalisation's kind {_short(norm['kind'])} is not a name.")
    divisor = norm.get("divisor")
    if divisor is not None and not (_number(divisor) and math.isfinite(divisor) and divisor > 0):
        raise DataError(f"the normalisation's divisor {_short(divisor)} is not a positive number.")
    for key in ("mean", "std"):
        value = norm.get(key)
        if value is None:
            continue
        flat, dims = _nested_numbers(value)
        if flat is None or not all(math.isfinite(v) for v in flat):
            raise DataError(f"the normalisation's {key} is not a list of finite numbers.")
        if key == "std" and not all(v > 0 for v in flat):
            raise DataError("the normalisation's std has a value that is not positive.")
        if shape is not None and not _fits(dims, tuple(shape)):
            raise DataError(
                f"the normalisation's {key} has shape {dims}, which does not fit samples of shape "
                f"{tuple(shape)}."
            )
    return dict(norm)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nested_numbers(value: Any, depth: int = 0) -> tuple[list[float] | None, tuple[int, ...]]:
    """A rectangular nest of lists of numbers as (flat values, shape); (None, ()) for anything else."""
    if _number(value):
        return [float(value)], ()
    if not isinstance(value, list | tuple) or depth > 8 or not value:
        return None, ()
    parts = [_nested_numbers(v, depth + 1) for v in value]
    first = parts[0][1]
    if any(flat is None or dims != first for flat, dims in parts):
        return None, ()
    return [v for flat, _ in parts for v in flat or ()], (len(value), *first)


def _fits(dims: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether statistics of shape ``dims`` broadcast over one sample of ``shape`` without growing it."""
    if len(dims) > len(shape):
        return False
    return all(d in (1, s) for d, s in zip(reversed(dims), reversed(shape), strict=False))


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TensorData:
    """``x`` of shape ``(N, *shape)``, optional labels ``y``, and how to normalise ``x``.

    ``normalisation`` is JSON-serialisable and goes into checkpoint metadata,
    so a loaded model knows how its inputs were scaled.

    :meth:`subset` returns a view that shares the stored tensor and keeps only
    row numbers, so a class filter plus a validation split cost no copy of the
    images. Reading ``x`` or ``y`` of a view gathers its rows (a copy).

    ``extras`` are further tensors with one row per sample (an anomaly mask
    per image, say): views, the cache and the training split carry them
    along with ``x``, and :meth:`extra_batch` gathers them by index.

    ``x`` may be memory-mapped (a prepared dataset from the cache is): it is
    only ever read, so a dataset larger than memory trains from the map.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None = None,
        normalisation: dict[str, Any] | None = None,
        *,
        rows: Tensor | None = None,
        extras: Mapping[str, Tensor] | None = None,
        block_rows: int | None = None,
    ):
        if y is not None and len(y) != len(x):
            raise ValueError(f"{len(x)} samples but {len(y)} labels")
        for name, extra in (extras or {}).items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"extra {name!r} needs a name that is an identifier")
            rows_of_extra = len(extra) if extra.dim() else 0
            if rows_of_extra != len(x):
                raise ValueError(f"{len(x)} samples but extra '{name}' has {rows_of_extra} rows")
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {block_rows}")
        self._x = x
        self._y = y
        self._extras = dict(extras or {})
        self._rows = None if rows is None else rows.to(device=x.device, dtype=torch.long)
        self.block_rows = block_rows
        self.normalisation = check_normalisation(normalisation or {"kind": "identity"}, tuple(x.shape[1:]))
        self._divisor = float(self.normalisation.get("divisor", 1.0))
        mean = self.normalisation.get("mean")
        std = self.normalisation.get("std")
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=x.device)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32, device=x.device)

    @property
    def x(self) -> Tensor:
        """The stored samples (gathered, for a view)."""
        return self._x if self._rows is None else self._x[self._rows]

    @property
    def y(self) -> Tensor | None:
        """The labels, or None (gathered, for a view)."""
        if self._y is None or self._rows is None:
            return self._y
        return self._y[self._rows]

    @property
    def extras(self) -> dict[str, Tensor]:
        """The per-sample extra tensors by name (gathered, for a view)."""
        if self._rows is None:
            return dict(self._extras)
        return {name: t.index_select(0, self._rows.to(t.device)) for name, t in self._extras.items()}

    @property
    def extra_names(self) -> tuple[str, ...]:
        """The names of the per-sample extras this data carries (no rows are gathered)."""
        return tuple(sorted(self._extras))

    def extra_batch(self, name: str, index: Tensor | slice | Sequence[int]) -> Tensor:
        """The raw rows of extra ``name`` for the samples at ``index`` (like :meth:`batch`, unscaled)."""
        if name not in self._extras:
            have = ", ".join(sorted(self._extras)) or "none"
            raise KeyError(f"no extra named '{name}' (this data has: {have})")
        extra = self._extras[name]
        if not isinstance(index, slice):
            index = torch.as_tensor(index, device=extra.device)
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            index = index.to(torch.long)
        stored = self._stored(index)
        return extra[stored] if isinstance(stored, slice) else extra.index_select(0, stored.to(extra.device))

    @property
    def storage(self) -> dict[str, Tensor]:
        """The stored tensors behind this data (shared by views): ``x``, and ``y``, ``rows`` and
        ``extras.NAME`` where present. What the cache writes."""
        parts = {"x": self._x, "y": self._y, "rows": self._rows}
        parts.update({f"extras.{name}": t for name, t in self._extras.items()})
        return {key: t for key, t in parts.items() if t is not None}

    @property
    def nbytes(self) -> int:
        """Memory held by the stored tensors (shared by views)."""
        return sum(t.numel() * t.element_size() for t in self.storage.values())

    def in_blocks(self, block_rows: int | None) -> TensorData:
        """The same data (shared storage) drawn in a block-shuffled order when shuffled.

        Rows are cut into consecutive blocks of ``block_rows``; a shuffled epoch
        visits the blocks in a random order and the rows of each block in a
        random order, so reads of a memory-mapped file stay within a block at a
        time instead of jumping across the whole file. ``None``: full shuffling.
        """
        return TensorData(
            self._x, self._y, self.normalisation, rows=self._rows, extras=self._extras, block_rows=block_rows
        )

    def __len__(self) -> int:
        return self._x.shape[0] if self._rows is None else self._rows.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self._x.shape[1:])

    def normalise(self, raw: Tensor, out: Tensor | None = None) -> Tensor:
        """Raw stored values to the float inputs the model sees (written into ``out`` if given)."""
        if out is not None:  # convert into the caller's buffer, then scale it there: no temporaries
            out.copy_(raw)
            if self._divisor != 1.0:
                out.div_(self._divisor)
        elif self._divisor != 1.0 and not raw.is_floating_point():
            out = torch.div(raw, self._divisor)  # uint8 in, float32 out, in one call (same bits as two)
        else:
            out = raw.to(torch.float32, copy=True)  # never normalise the stored data in place
            if self._divisor != 1.0:
                out = out.div_(self._divisor)
        if self._mean is not None:
            out = out.sub_(self._mean.to(out.device))
        if self._std is not None:
            out = out.div_(self._std.to(out.device))
        return out

    def _stored(self, index: Tensor | slice) -> Tensor | slice:
        """Positions in the stored tensor of the samples at ``index`` of this (view of the) data."""
        if self._rows is None:
            return index
        return self._rows[index] if isinstance(index, slice) else self._rows.index_select(0, index)

    def batch(self, index: Tensor | slice | Sequence[int], out: Tensor | None = None) -> Tensor:
        """Float inputs for the samples at ``index`` (written into ``out`` if given).

        ``index_select`` gathers rows several times faster than advanced
        indexing, which matters once per training step.
        """
        if not isinstance(index, slice):
            index = torch.as_tensor(index, device=self._x.device)
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            if index.dim() != 1:  # a single position: the usual indexing, no batch dimension kept
                return self.normalise(self._x[self._rows[index] if self._rows is not None else index])
            index = index.to(torch.long)
        stored = self._stored(index)
        raw = self._x[stored] if isinstance(stored, slice) else self._x.index_select(0, stored)
        return self.normalise(raw, None if out is None else out[: raw.shape[0]])

    def subset(self, index: Tensor) -> TensorData:
        """The samples at ``index``, as a view sharing this data's storage and normalisation."""
        index = torch.as_tensor(index, device=self._x.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        rows = self._stored(index.to(torch.long))
        return TensorData(
            self._x,
            self._y,
            self.normalisation,
            rows=rows,  # type: ignore[arg-type]
            extras=self._extras,
            block_rows=self.block_rows,
        )

    def to(self, device: torch.device | str) -> TensorData:
        """The same data on ``device`` (raw dtype kept, so uint8 stays small)."""
        if self._x.device == torch.device(device):
            return self
        y = None if self._y is None else self._y.to(device)
        rows = None if self._rows is None else self._rows.to(device)
        extras = {name: t.to(device) for name, t in self._extras.items()}
        return TensorData(
            self._x.to(device), y, self.normalisation, rows=rows, extras=extras, block_rows=self.block_rows
        )

    def order(
        self,
        generator: torch.Generator | None = None,
        *,
        part: tuple[int, int] | None = None,
        batch_size: int = 1,
    ) -> Tensor:
        """A shuffled order of all positions: fully random, or block-shuffled (:meth:`in_blocks`).

        Block-shuffled with ``part`` = (rank, world size), each rank draws its
        positions from its own fixed, contiguous share of the rows, so under
        torchrun a rank reads only its own shard of a memory-mapped file. The
        share each rank gets of every batch of ``batch_size`` is the one
        :meth:`batches` hands it.
        """
        n = len(self)
        if self.block_rows is None:
            return torch.randperm(n, generator=generator)
        if part is None or part[1] == 1:
            return _block_shuffle(0, n, self.block_rows, generator)
        rank_of = _rank_of_position(n, batch_size, part[1])
        order = torch.empty(n, dtype=torch.long)
        start = 0
        for rank in range(part[1]):  # every rank draws the same generator in the same sequence
            mine = rank_of == rank
            count = int(mine.sum())
            order[mine] = _block_shuffle(start, start + count, self.block_rows, generator)
            start += count
        return order

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
        skip: int = 0,
        part: tuple[int, int] | None = None,
        reuse: bool = False,
    ) -> Iterator[Tensor]:
        """Float batches in order, or in a random order drawn from ``generator``.

        ``skip`` leaves out the first batches of the same order (a resumed epoch
        draws the same permutation and continues where it stopped). ``part`` =
        (rank, world size) yields only this rank's share of each batch, so the
        ranks of a distributed job together see exactly the single-process batches.
        ``reuse`` writes every batch into one float buffer, which saves a fresh
        multi-megabyte allocation (and its page faults) per batch in evaluation
        loops; a batch is then only valid until the next one is drawn.
        """
        n = len(self)
        order = None
        if shuffle:
            order = self.order(generator, part=part, batch_size=batch_size).to(self._x.device)
        buffer = None
        if reuse and n:
            rows = min(batch_size, n)
            buffer = torch.empty((rows, *self.shape), dtype=torch.float32, device=self._x.device)
        for start in range(skip * batch_size, n, batch_size):
            stop = min(start + batch_size, n)
            if part is not None:
                rank, world = part
                size = stop - start
                start, stop = start + rank * size // world, start + (rank + 1) * size // world
            yield self.batch(slice(start, stop) if order is None else order[start:stop], out=buffer)


def _block_shuffle(start: int, stop: int, block_rows: int, generator: torch.Generator | None) -> Tensor:
    """Positions ``start..stop-1``: blocks of ``block_rows`` in a random order, rows shuffled in each."""
    n = stop - start
    blocks = torch.randperm(max(1, -(-n // block_rows)), generator=generator)
    parts = []
    for block in blocks.tolist():
        first = start + block * block_rows
        size = min(block_rows, stop - first)
        if size > 0:
            parts.append(first + torch.randperm(size, generator=generator))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def _rank_of_position(n: int, batch_size: int, world: int) -> Tensor:
    """Which rank takes each position of an epoch's order, given how :meth:`TensorData.batches`
    splits every batch (rank r of batch [start, start+size) takes size*r//world onwards)."""
    position = torch.arange(n)
    offset = position % batch_size
    size = torch.clamp(n - (position - offset), max=batch_size)
    return ((offset + 1) * world + size - 1) // size - 1
