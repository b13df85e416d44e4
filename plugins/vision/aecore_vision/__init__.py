"""Standard image datasets as aecore data sources, read from their published on-disk formats.

``--data mnist``, ``fashion-mnist``, ``kmnist``, ``emnist?split=...``,
``cifar10``, ``cifar100``, ``svhn`` and ``stl10`` read the files from
``--data-dir`` (default ``$AECORE_DATA_DIR`` or ``~/.cache/aecore/data``) in
the folders torchvision's own dataset classes use, so a folder torchvision
downloaded into works as it is. Images come out uint8 N×C×H×W, upright;
labels int64. Nothing is unpickled: CIFAR is read from its binary
distribution only, SVHN's ``.mat`` files with scipy's MATLAB v5 reader.
Every file is checked (size, header, shapes, label range) before anything
is built, and a problem is one line naming the file and the fix.

Nothing is downloaded unless ``?download=true`` asks (``--data
cifar10?download=true``); then only the missing files are fetched, into the
data root. One module per format: :mod:`~aecore_vision.idx`,
:mod:`~aecore_vision.cifar`, :mod:`~aecore_vision.svhn`,
:mod:`~aecore_vision.stl`; the shared parts are in :mod:`~aecore_vision.common`.
"""

from __future__ import annotations

from aecore_vision.cifar import CIFAR10, CIFAR100
from aecore_vision.common import default_data_root
from aecore_vision.idx import EMNIST, KMNIST, MNIST, FashionMNIST
from aecore_vision.stl import STL10
from aecore_vision.svhn import SVHN

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "EMNIST",
    "KMNIST",
    "MNIST",
    "STL10",
    "SVHN",
    "FashionMNIST",
    "default_data_root",
]
