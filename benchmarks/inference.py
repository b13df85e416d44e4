"""Inference: ``ae encode``'s code path against a bare ``inference_mode`` forward pass.

Both encode the 70,000 MNIST images (training and test splits) with the same
encoder at the same batch size. The bare pass gets its input as one float32
tensor prepared beforehand, untimed; aecore's path starts from the uint8
dataset, as ``ae encode`` does, and returns each split's codes as one tensor.
Target: aecore's throughput at least 0.9 times the bare pass's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.stats import median, ratio, target

__all__ = ["run_inference"]

BATCH_SIZE = 1000
TARGET = 0.9


def run_inference(data_dir: Path, *, repeats: int = 5, preset: str = "simple") -> dict[str, Any]:
    """Median images per second of both paths, alternating, and their ratio."""
    from aecore import registry
    from aecore.composition import compose_preset
    from aecore.sources import load_dataset
    from aecore_analysis.latent import encode

    dataset = load_dataset("mnist", data_dir)
    model = compose_preset(registry.get("preset", preset)).eval()
    splits = [dataset.train, dataset.test]
    n = sum(len(s) for s in splits)
    prepared = torch.cat([s.batch(slice(0, len(s))) for s in splits])  # the bare pass's input, untimed

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for xb in prepared.split(BATCH_SIZE):
                model.encode(xb)
        return time.perf_counter() - start

    def ours() -> float:
        start = time.perf_counter()
        for split in splits:  # as `ae encode` does, one split at a time
            encode(model, split, batch_size=BATCH_SIZE)
        return time.perf_counter() - start

    bare(), ours()  # warm-up
    seconds: dict[str, list[float]] = {"aecore": [], "bare": []}
    for _ in range(repeats):
        seconds["aecore"].append(ours())
        seconds["bare"].append(bare())
    rate = {name: n / median(values) for name, values in seconds.items()}
    share = ratio(rate["aecore"], rate["bare"])
    slower = ratio(median(seconds["aecore"]), median(seconds["bare"]))
    return {
        "workload": {"preset": preset, "images": n, "batch_size": BATCH_SIZE, "repeats": repeats},
        "seconds": seconds,
        "images_per_second": rate,
        "ratio": share,
        "targets": [
            target("ae encode time / bare forward time", slower, 1 / TARGET, note="throughput ≥ 0.9×")
        ],
    }
