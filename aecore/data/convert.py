"""Data from Python: tensors, numpy arrays and ``torch.utils.data.Dataset`` objects as a :class:`Dataset`.

``aecore.train(data=...)`` takes what a notebook already holds. Each is
converted once into the data model: uint8 stays uint8 (pixels, scaled by
1/255 a batch at a time), any other numbers become float32 used as they
are. A single array is split into train and test by a seeded random
fraction; a pair ``(train, test)`` is used as given. The checkpoint records
what can be known of such data (its origin, shapes and normalisation) and
that it was in memory, so commands that reload the model ask for ``--data``
instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from aecore.data.dataset import Dataset
from aecore.data.tensors import UINT8_IMAGES, TensorData
from aecore.errors import DataError

__all__ = ["IN_MEMORY", "as_dataset"]

#: The name of a dataset converted from Python objects.
IN_MEMORY = "in-memory"

_FLOAT32_MAX = torch.finfo(torch.float32).max


def as_dataset(data: Any, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """``data`` as a :class:`Dataset`: a Dataset as it is, else converted once.

    ``data`` is a tensor or numpy array of shape ``(N, ...)``; a
    ``torch.utils.data.Dataset`` whose items are tensors (or arrays) or
    ``(sample, label)`` pairs; or a pair ``(train, test)`` of any of those.
    A single one is split: a seeded random ``test_fraction`` of it is the
    test split (at least one sample each side). Labels must be integers.
    """
    if isinstance(data, Dataset):
        return data
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    if isinstance(data, tuple | list) and len(data) == 2 and not _is_pair_sample(data):
        if _looks_like_labels(data[0], data[1]):
            raise DataError(
                "a pair is (train, test), but the second part looks like one label per sample; pass "
                "labelled samples as torch.utils.data.TensorDataset(x, y), or a (train, test) pair of those."
            )
        train_x, train_y, origin = _samples(data[0], "the training data")
        test_x, test_y, _ = _samples(data[1], "the test data")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(
                f"the training samples have shape {tuple(train_x.shape[1:])} but the test samples "
                f"{tuple(test_x.shape[1:])}; give both splits the same sample shape."
            )
        if train_x.dtype != test_x.dtype:
            raise DataError(
                f"the training data is {_dtype(train_x)} but the test data {_dtype(test_x)}; "
                "give both splits the same type (uint8 pixels, or floats)."
            )
        if (train_y is None) != (test_y is None):
            raise DataError("only one of the two splits has labels; give labels to both or to neither.")
        split: dict[str, Any] = {"given": True}
    else:
        x, y, origin = _samples(data, "the data")
        n = len(x)
        if n < 2:
            raise DataError(f"the data holds {n} sample; a train and a test split need at least 2.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        test_rows, train_rows = order[:n_test].sort().values, order[n_test:].sort().values
        train_x, test_x = x[train_rows], x[test_rows]
        train_y = None if y is None else y[train_rows]
        test_y = None if y is None else y[test_rows]
        split = {"test_fraction": test_fraction, "seed": seed}
    norm = UINT8_IMAGES if train_x.dtype == torch.uint8 else {"kind": "identity"}
    spec = {
        "in_memory": True,
        "origin": origin,
        "sample_shape": list(train_x.shape[1:]),
        "train_size": len(train_x),
        "test_size": len(test_x),
        "split": split,
    }
    return Dataset(IN_MEMORY, TensorData(train_x, train_y, norm), TensorData(test_x, test_y, norm), spec)


def _is_pair_sample(data: Sequence[Any]) -> bool:
    """Whether a 2-sequence is one (sample, label) rather than (train, test)."""
    return not hasattr(data[1], "__len__") or getattr(data[1], "ndim", 1) == 0


def _looks_like_labels(first: Any, second: Any) -> bool:
    shape = getattr(second, "shape", None)
    return (
        shape is not None
        and len(shape) == 1
        and len(getattr(first, "shape", ())) > 1
        and (shape[0] == first.shape[0])
    )


def _samples(data: Any, what: str) -> tuple[Tensor, Tensor | None, str]:
    """(samples, labels or None, a description of the origin) of one split."""
    origin = f"{type(data).__module__}.{type(data).__qualname__}"
    if isinstance(data, Tensor) or _is_array(data):
        return _values(_tensor(data, what), what), None, origin
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) in (1, 2):
        x = _values(_tensor(data.tensors[0], what), what)  # the tensors themselves: no loop over items
        y = None if len(data.tensors) == 1 else _labels(data.tensors[1].tolist(), what)
        return x, y, origin
    if isinstance(data, torch.utils.data.Dataset):
        x, y = _from_torch_dataset(data, what)
        return x, y, origin
    raise DataError(
        f"{what} is a {type(data).__name__}; pass a tensor, a numpy array, a torch Dataset of tensors or "
        "(tensor, label) pairs, a pair (train, test) of those, or an aecore Dataset."
    )


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if getattr(value, "dtype", None) is not None and value.dtype.kind in "OUSVMm":
        raise DataError(f"{what} holds {value.dtype} values, not numbers; convert it to numbers first.")
    try:
        return torch.as_tensor(value).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{what} is not an array of numbers; convert it to one first.") from None


def _values(x: Tensor, what: str) -> Tensor:
    """Samples checked and stored: uint8 kept, other numbers as finite float32."""
    if x.dim() < 2:
        raise DataError(
            f"{what} has shape {tuple(x.shape)}; samples come along the first axis, so it needs at least two "
            "axes (reshape to (N, 1) for one feature per sample)."
        )
    if len(x) == 0:
        raise DataError(f"{what} holds no samples.")
    if x.is_complex():
        raise DataError(f"{what} holds complex numbers; pass real and imaginary parts as features.")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.dtype == torch.bool or not x.is_floating_point():
        x = x.to(torch.float64)
    if x.dtype == torch.float64:
        big = x.abs() > _FLOAT32_MAX
        if bool(big.any()):
            raise DataError(f"{what} holds a value beyond float32's range at {_where(big)}; rescale it.")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise DataError(f"{what} holds a NaN or infinite value at {_where(bad)}; fill or drop it first.")
    return x.to(torch.float32).contiguous()


def _where(mask: Tensor) -> str:
    index = tuple(int(i) for i in mask.nonzero()[0])
    return f"sample {index[0]}" + (f", position {index[1:]}" if len(index) > 1 else "")


def _labels(values: list[Any], what: str) -> Tensor:
    try:
        labels = torch.as_tensor([_label(v) for v in values], dtype=torch.long)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{what} has labels that are not integers; map them to 0, 1, ... first.") from None
    return labels


def _label(value: Any) -> int:
    if isinstance(value, Tensor) or _is_array(value):
        if value.numel() != 1 if isinstance(value, Tensor) else value.size != 1:
            raise ValueError("not one label")
        value = value.item()
    if isinstance(value, bool) or not float(value).is_integer() or not math.isfinite(float(value)):
        raise ValueError("not an integer")
    return int(value)


def _from_torch_dataset(data: torch.utils.data.Dataset, what: str) -> tuple[Tensor, Tensor | None]:
    """Every item of a map-style dataset, read once into one preallocated tensor."""
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            f"{what} is a torch Dataset without a length; aecore reads map-style datasets."
        ) from None
    if n == 0:
        raise DataError(f"{what} is an empty torch Dataset.")
    first = data[0]
    labelled = isinstance(first, tuple | list)
    if labelled and len(first) != 2:
        raise DataError(
            f"{what} yields items of {len(first)} parts; aecore reads samples or (sample, label)."
        )
    sample = _tensor(first[0] if labelled else first, f"item 0 of {what}")
    out = torch.empty((n, *sample.shape), dtype=sample.dtype)
    labels: list[Any] = []
    for i in range(n):
        item = first if i == 0 else data[i]
        if labelled != isinstance(item, tuple | list):
            raise DataError(f"item {i} of {what} differs in form from item 0; every item must be alike.")
        value = _tensor(item[0] if labelled else item, f"item {i} of {what}")
        if value.shape != sample.shape:
            raise DataError(
                f"item {i} of {what} has shape {tuple(value.shape)}, item 0 {tuple(sample.shape)}; "
                "resize the samples to one shape."
            )
        out[i] = value
        if labelled:
            labels.append(item[1])
    return _values(out, what), _labels(labels, what) if labelled else None


def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")
