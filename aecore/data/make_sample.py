"""Rebuild the embedded MNIST subset from a full copy in torchvision's layout.

    python -m aecore.data.make_sample ../shared/data/mnist

Takes the first 10,000 training and first 2,000 test images (with labels)
and writes them as gzipped IDX files into ``aecore/data/mnist_sample``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aecore.data.idx import read_idx, write_idx

TRAIN, TEST = 10_000, 2_000


def main(source: str) -> None:
    raw = Path(source) / "MNIST" / "raw"
    out = Path(__file__).parent / "mnist_sample"
    for prefix, count in (("train", TRAIN), ("t10k", TEST)):
        for kind in ("images-idx3", "labels-idx1"):
            data = read_idx(raw / f"{prefix}-{kind}-ubyte")[:count]
            write_idx(out / f"{prefix}-{kind}-ubyte.gz", data)
            print(f"wrote {prefix}-{kind}-ubyte.gz: {tuple(data.shape)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mnist")
