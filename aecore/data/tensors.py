"""An in-memory dataset tensor with its normalisation.

Images stay ``uint8`` (a quarter of the float size) and become float only a
batch at a time; a batch is an index slice, never a per-item transform.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["TensorData"]

#: Pixels stored as uint8 become floats in [0, 1].
UINT8_IMAGES: dict[str, Any] = {"kind": "scale", "divisor": 255.0}


class TensorData:
    """``x`` of shape ``(N, *shape)``, optional labels ``y``, and how to normalise ``x``.

    ``normalisation`` is JSON-serialisable and goes into checkpoint metadata,
    so a loaded model knows how its inputs were scaled.
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, normalisation: dict[str, Any] | None = None):
        if y is not None and len(y) != len(x):
            raise ValueError(f"{len(x)} samples but {len(y)} labels")
        self.x = x
        self.y = y
        self.normalisation = dict(normalisation or {"kind": "identity"})
        self._divisor = float(self.normalisation.get("divisor", 1.0))
        mean = self.normalisation.get("mean")
        std = self.normalisation.get("std")
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=x.device)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32, device=x.device)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.x.shape[1:])

    def normalise(self, raw: Tensor) -> Tensor:
        """Raw stored values to the float inputs the model sees."""
        out = raw.to(torch.float32, copy=True)  # never normalise the stored data in place
        if self._divisor != 1.0:
            out = out.div_(self._divisor)
        if self._mean is not None:
            out = out.sub_(self._mean.to(out.device))
        if self._std is not None:
            out = out.div_(self._std.to(out.device))
        return out

    def batch(self, index: Tensor | slice) -> Tensor:
        """Float inputs for the samples at ``index``."""
        return self.normalise(self.x[index])

    def subset(self, index: Tensor) -> TensorData:
        """A new dataset of the samples at ``index`` (copies, same normalisation)."""
        y = None if self.y is None else self.y[index]
        return TensorData(self.x[index], y, self.normalisation)

    def to(self, device: torch.device | str) -> TensorData:
        """The same data on ``device`` (raw dtype kept, so uint8 stays small)."""
        if self.x.device == torch.device(device):
            return self
        y = None if self.y is None else self.y.to(device)
        return TensorData(self.x.to(device), y, self.normalisation)

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
        skip: int = 0,
        part: tuple[int, int] | None = None,
    ) -> Iterator[Tensor]:
        """Float batches in order, or in a random order drawn from ``generator``.

        ``skip`` leaves out the first batches of the same order (a resumed epoch
        draws the same permutation and continues where it stopped). ``part`` =
        (rank, world size) yields only this rank's share of each batch, so the
        ranks of a distributed job together see exactly the single-process batches.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator).to(self.x.device) if shuffle else None
        for start in range(skip * batch_size, n, batch_size):
            stop = min(start + batch_size, n)
            if part is not None:
                rank, world = part
                size = stop - start
                start, stop = start + rank * size // world, start + (rank + 1) * size // world
            yield self.batch(slice(start, stop) if order is None else order[start:stop])
