"""Small files in each published format, written from upright images (``from vision_helpers import``).

Every writer takes images as uint8 N×C×H×W, the way the sources must give
them back, and lays their bytes out as the format's own description says,
so a test that reads them back checks the reader's conversions.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.io
import torch

from aecore.data import write_idx

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: The training batch sizes of the small CIFAR-10 sample (5 files), and its test size.
CIFAR10_BATCHES = (3, 2, 4, 1, 2)
CIFAR10_TEST = 5


def images(n: int, channels: int, side: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, channels, side, side), dtype=np.uint8)


def one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Assert a CLI failure printed exactly one 'error: ...' line on stderr, no traceback; returns it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- IDX (MNIST, Fashion-MNIST, KMNIST, EMNIST) ---------------------------------------------------


def write_idx_split(
    raw: Path, images_name: str, labels_name: str, x: np.ndarray, y: np.ndarray, *, transposed=False
):
    """One split as two IDX files; ``transposed`` stores each image column by column, as EMNIST does."""
    raw.mkdir(parents=True, exist_ok=True)
    stored = x[:, 0].transpose(0, 2, 1) if transposed else x[:, 0]
    write_idx(raw / images_name, torch.from_numpy(np.ascontiguousarray(stored)))
    write_idx(raw / labels_name, torch.from_numpy(np.asarray(y, dtype=np.uint8)))


def write_mnist_like(root: Path, folder: str, x_train, y_train, x_test, y_test) -> Path:
    raw = root / folder / "raw"
    write_idx_split(raw, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", x_train, y_train)
    write_idx_split(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", x_test, y_test)
    return raw


def write_emnist(root: Path, split: str, x_train, y_train, x_test, y_test) -> Path:
    raw = root / "EMNIST" / "raw"
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        prefix = f"emnist-{split}-{part}"
        write_idx_split(
            raw, f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte", x, y, transposed=True
        )
    return raw


# -- CIFAR binary ---------------------------------------------------------------------------------


def cifar_records(x: np.ndarray, *labels: np.ndarray) -> bytes:
    """Records of the label byte(s) then the red, green and blue planes, each row by row."""
    columns = [np.asarray(label, dtype=np.uint8).reshape(-1, 1) for label in labels]
    return np.concatenate([*columns, x.reshape(len(x), -1)], axis=1).tobytes()


def write_cifar10(root: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The small CIFAR-10 sample: five training batches of CIFAR10_BATCHES images, CIFAR10_TEST test ones."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    n = sum(CIFAR10_BATCHES)
    x = images(n + CIFAR10_TEST, 3, 32, seed)
    y = np.arange(n + CIFAR10_TEST, dtype=np.uint8) % 10
    start = 0
    for i, size in enumerate(CIFAR10_BATCHES, 1):
        (folder / f"data_batch_{i}.bin").write_bytes(
            cifar_records(x[start : start + size], y[start : start + size])
        )
        start += size
    (folder / "test_batch.bin").write_bytes(cifar_records(x[n:], y[n:]))
    (folder / "batches.meta.txt").write_text(
        "\n".join(CIFAR10_NAMES) + "\n\n"
    )  # as published: blank lines end it
    return x[:n], y[:n], x[n:], y[n:]


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 1):
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    x = images(n_train + n_test, 3, 32, seed)
    fine = (np.arange(n_train + n_test) * 17 % 100).astype(np.uint8)
    coarse = (fine // 5).astype(np.uint8)
    (folder / "train.bin").write_bytes(cifar_records(x[:n_train], coarse[:n_train], fine[:n_train]))
    (folder / "test.bin").write_bytes(cifar_records(x[n_train:], coarse[n_train:], fine[n_train:]))
    (folder / "fine_label_names.txt").write_text("".join(f"fine_{i}\n" for i in range(100)))
    (folder / "coarse_label_names.txt").write_text("".join(f"coarse_{i}\n" for i in range(20)))
    return x, coarse, fine


# -- SVHN .mat ------------------------------------------------------------------------------------


def write_svhn_mat(path: Path, x: np.ndarray, digits: np.ndarray, **options) -> None:
    """X as MATLAB holds it, height × width × channel × image; y the labels 1..10 (10 for the digit 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.where(np.asarray(digits) == 0, 10, digits).astype(np.float64).reshape(-1, 1)
    scipy.io.savemat(path, {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)), "y": y}, **options)


def write_svhn(root: Path, n_train: int = 5, n_test: int = 3, n_extra: int = 0, seed: int = 2):
    x = images(n_train + n_test + n_extra, 3, 32, seed)
    digits = np.arange(len(x)) % 10
    write_svhn_mat(root / "train_32x32.mat", x[:n_train], digits[:n_train])
    write_svhn_mat(root / "test_32x32.mat", x[n_train : n_train + n_test], digits[n_train : n_train + n_test])
    if n_extra:
        write_svhn_mat(root / "extra_32x32.mat", x[n_train + n_test :], digits[n_train + n_test :])
    return x, digits


# -- STL-10 binary --------------------------------------------------------------------------------


def stl_bytes(x: np.ndarray) -> bytes:
    """Images as STL-10 stores them: each channel column by column."""
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(root: Path, n_train: int = 4, n_test: int = 3, n_unlabeled: int = 0, seed: int = 3):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    x = images(n_train + n_test + n_unlabeled, 3, 96, seed)
    classes = np.arange(n_train + n_test) % 10  # 0..9, stored as 1..10
    (folder / "train_X.bin").write_bytes(stl_bytes(x[:n_train]))
    (folder / "train_y.bin").write_bytes((classes[:n_train] + 1).astype(np.uint8).tobytes())
    (folder / "test_X.bin").write_bytes(stl_bytes(x[n_train : n_train + n_test]))
    (folder / "test_y.bin").write_bytes((classes[n_train:] + 1).astype(np.uint8).tobytes())
    if n_unlabeled:
        (folder / "unlabeled_X.bin").write_bytes(stl_bytes(x[n_train + n_test :]))
    return x, classes


# -- a pickle that runs code when loaded ------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled: code ran"))


def hostile_pickle(marker: Path) -> bytes:
    """A pickle that writes ``marker`` when anything unpickles it (a CIFAR batch's dict around it)."""
    return pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=4)
