"""Rebuild the embedded MNIST subset from a full copy in torchvision's layout.

    python -m aecore_vision.make_sample ../shared/data/mnist

Takes the first 10,000 training and first 2,000 test images (with labels)
and writes them as gzipped IDX files into aecore's ``aecore/data/mnist_sample``
(run it from a source checkout, where that folder is the repository's).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from aecore.data import read_idx, write_idx

TRAIN, TEST = 10_000, 2_000


def main(source: str) -> None:
    raw = Path(source) / "MNIST" / "raw"
    out = Path(str(resources.files("aecore.data.mnist_sample")))
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        for kind in ("images-idx3", "labels-idx1"):
            data = read_idx(raw / f"{prefix}-{kind}-ubyte")[:count]
            write_idx(out / f"{prefix}-{kind}-ubyte.gz", data)
            print(f"wrote {prefix}-{kind}-ubyte.gz: {tuple(data.shape)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mnist")
