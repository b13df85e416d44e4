"""Bring-your-own-data figures: image folders, memory-mapped caches, colour, and the block order.

Every comparison is made within one run, on the same machine and threads:

``folder``   MNIST's 60,000 training (and 10,000 test) images written out as PNG
             files in class folders, trained with the ``simple`` preset for two
             epochs from ``--data folder:DIR`` (the first epoch includes decoding
             and caching the folder), against ``torchvision.datasets.ImageFolder``
             with ``ToTensor`` through ``DataLoader(batch_size=128, shuffle=True,
             num_workers=2)`` feeding the same modules; and the test SSE per image
             against the same training from the IDX files, their rows put in the
             folder's order (by class, then index), so both see the same batches.
``mapped``   synthetic uint8 caches of about 1, 4 and 8 GB, one epoch of a small
             model each, each in a fresh process: the peak anonymous memory
             (RssAnon, sampled) must grow by less than 200 MB from 1 to 8 GB, and
             training from the map must run at least 0.9x as fast as from a copy
             in memory on the cache that fits.
``colour``   the 3x32x32 conv preset on a generated CIFAR-10 binary sample, seconds
             per epoch against a plain PyTorch loop of the same modules: at most 1.0x.
``order``    block-shuffled against fully shuffled training on MNIST: the test SSE
             per image of each, and their ratio.

``python -m benchmarks --only data`` runs it; ``--limit`` shrinks every workload.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.stats import median, ratio, target
from benchmarks.throughput import EpochTimer

__all__ = ["run_data"]

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
_MB = 1024 * 1024
_GB = 1024 * _MB
MAPPED_SIZES_GB = (1, 4, 8)
MAPPED_SHAPE = (3, 64, 64)
COLOUR_PRESET = "conv-cifar"
COLOUR_SAMPLES = 10_000


@contextlib.contextmanager
def _cache_dir() -> Iterator[Path]:
    """A fresh, empty aecore cache for the duration (the first load really decodes)."""
    old = os.environ.get("AECORE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="aecore-bench-cache-") as tmp:
        os.environ["AECORE_CACHE_DIR"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("AECORE_CACHE_DIR", None)
            else:
                os.environ["AECORE_CACHE_DIR"] = old


# --- folder against ImageFolder ----------------------------------------------------------------------


def export_png_tree(data_dir: Path, root: Path, limit: int | None) -> int:
    """Write MNIST (from the IDX files) as ``root/{train,test}/<digit>/<index>.png``; returns the count."""
    from PIL import Image

    from aecore.sources import load_dataset

    mnist = load_dataset("mnist", data_dir)
    count = 0
    for split, data in (("train", mnist.train), ("test", mnist.test)):
        n = len(data) if limit is None else min(len(data), limit if split == "train" else max(1, limit // 6))
        x, y = data.x[:n].numpy(), data.y[:n].tolist()
        for digit in range(10):
            (root / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(x[i, 0], mode="L").save(root / split / str(y[i]) / f"{i:05d}.png")
        count += n
    return count


def _simple_params(epochs: int) -> dict[str, Any]:
    return {"trainer": {"epochs": epochs, "batch_size": BATCH, "lr": 1e-3}}


def _aecore_folder(tree: Path, epochs: int, out: Path) -> dict[str, Any]:
    import aecore
    from aecore.sources import load_dataset

    with _cache_dir():
        start = time.perf_counter()
        dataset = load_dataset(f"folder:{tree}")
        prepare = time.perf_counter() - start
        clock = EpochTimer()
        result = aecore.train(
            preset="simple",
            data=dataset,
            val_fraction=0.0,
            params=_simple_params(epochs),
            out=str(out),
            progress=False,
            hooks=[clock],
        )
        start = time.perf_counter()
        load_dataset(f"folder:{tree}")
        cached = time.perf_counter() - start
    epochs_s = clock.epoch_seconds()
    return {
        "prepare_seconds": prepare,
        "cached_load_seconds": cached,
        "epoch_seconds": epochs_s,
        "first_epoch_seconds": prepare + epochs_s[0],
        "later_epoch_seconds": median(epochs_s[1:]),
        "test_sse_per_image": result.metrics.get("test_sse_per_image"),
    }


def _idx_sse(data_dir: Path, epochs: int, out: Path, limit: int | None) -> float:
    import torch

    import aecore
    from aecore.data import Dataset
    from aecore.sources import load_dataset

    mnist = load_dataset("mnist", data_dir)
    if limit is not None:
        mnist = Dataset(
            mnist.name,
            mnist.train.subset(torch.arange(min(limit, len(mnist.train)))),
            mnist.test.subset(torch.arange(min(max(1, limit // 6), len(mnist.test)))),
            mnist.spec,
        )
    # The folder lists class by class, then file by file (each named by its IDX index): the same
    # rows in that order give the same batches under the same seed, so only the pixels can differ.
    by_class = [split.subset(torch.argsort(split.y, stable=True)) for split in (mnist.train, mnist.test)]
    mnist = Dataset(mnist.name, by_class[0], by_class[1], mnist.spec)
    result = aecore.train(
        preset="simple",
        data=mnist,
        val_fraction=0.0,
        params=_simple_params(epochs),
        out=str(out),
        progress=False,
    )
    return float(result.metrics["test_sse_per_image"])


def _imagefolder(tree: Path, epochs: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from aecore import registry
    from aecore.composition import compose_preset

    torch.manual_seed(0)
    model = compose_preset(registry.get("preset", "simple"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    images = datasets.ImageFolder(
        str(tree / "train"), transform=transforms.Compose([transforms.Grayscale(), transforms.ToTensor()])
    )
    loader = DataLoader(
        images, batch_size=BATCH, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    index = time.perf_counter() - start
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for xb, _ in loader:
            loss = F.mse_loss(model(xb), xb)  # the simple preset has no regularizer
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return {
        "index_seconds": index,
        "epoch_seconds": seconds,
        "first_epoch_seconds": index + seconds[0],
        "later_epoch_seconds": median(seconds[1:]),
    }


def run_folder(data_dir: Path, limit: int | None, epochs: int = 2) -> dict[str, Any]:
    """The folder workload: aecore's ``folder:`` source against ImageFolder + DataLoader."""
    with tempfile.TemporaryDirectory(prefix="aecore-bench-png-") as tmp:
        tree = Path(tmp) / "mnist-png"
        start = time.perf_counter()
        files = export_png_tree(data_dir, tree, limit)
        export = time.perf_counter() - start
        rival = _imagefolder(tree, epochs)
        ours = _aecore_folder(tree, epochs, Path(tmp) / "run-folder")
        idx = _idx_sse(data_dir, epochs, Path(tmp) / "run-idx", limit)
    first = ratio(ours["first_epoch_seconds"], rival["first_epoch_seconds"])
    later = ratio(ours["later_epoch_seconds"], rival["later_epoch_seconds"])
    sse_gap = abs(ratio(ours["test_sse_per_image"], idx) - 1.0)
    return {
        "workload": {"files": files, "export_seconds": export, "epochs": epochs, "preset": "simple"},
        "aecore": ours,
        "imagefolder": rival,
        "idx_test_sse_per_image": idx,
        "first_epoch_ratio": first,
        "later_epoch_ratio": later,
        "targets": [
            target("folder: first epoch (with the cache build) ÷ ImageFolder's", first, 1.0),
            target("folder: later epoch ÷ ImageFolder's", later, 0.2),
            target(
                "folder: |test SSE ÷ IDX-trained test SSE − 1|",
                sse_gap,
                0.02,
                note="the IDX rows in the folder's order, so the same batches: only pixels could differ",
            ),
        ],
    }


# --- memory-mapped against in-memory -----------------------------------------------------------------


def _rss_anon() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


class _PeakAnon:
    """Samples RssAnon every 20 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_anon())

    def __enter__(self) -> _PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())


def build_cache(path: Path, gigabytes: float) -> int:
    """A mapped uint8 image tensor of about ``gigabytes`` at ``path``, written in chunks; its rows."""
    import torch

    from aecore.data.store import create_mapped

    row = 1
    for s in MAPPED_SHAPE:
        row *= s
    n = int(gigabytes * _GB) // row
    x = create_mapped(path, (n, *MAPPED_SHAPE), torch.uint8)
    pattern = (torch.arange(row) % 251).to(torch.uint8).view(MAPPED_SHAPE)
    chunk = 4096
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x[start:stop] = pattern
        x[start:stop, 0, 0, :] = (torch.arange(start, stop) % 256).to(torch.uint8).view(-1, 1)
    del x
    return n


def mapped_probe(args: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: one epoch of a small model from the map (or from a copy in memory)."""
    import torch

    import aecore
    from aecore.data import UINT8_IMAGES, Dataset, TensorData
    from aecore.data.store import open_mapped

    torch.set_num_threads(args["threads"])
    base = _rss_anon()
    x = open_mapped(Path(args["path"]))
    if args["mode"] == "memory":
        x = x.clone()
    test = x[: min(1000, len(x))].clone()
    dataset = Dataset("synthetic", TensorData(x, None, UINT8_IMAGES), TensorData(test, None, UINT8_IMAGES))
    clock = EpochTimer()
    with _PeakAnon() as peak:
        aecore.train(
            "mlp",
            data=dataset,
            latent_dim=16,
            val_fraction=0.0,
            shuffle=args.get("shuffle", "auto"),
            params={"encoder": {"hidden": ()}, "trainer": {"epochs": 1, "batch_size": BATCH}},
            out=args["out"],
            progress=False,
            hooks=[clock],
        )
    return {
        "rows": len(x),
        "bytes": x.numel(),
        "epoch_seconds": clock.epoch_seconds()[0],
        "rss_anon_start": base,
        "rss_anon_peak": peak.peak,
    }


def _run_probe(args: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aecore-bench-map-run-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.data", json.dumps({**args, "out": str(Path(tmp) / "run")})],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_mapped(threads: int, limit: int | None, repeats: int) -> dict[str, Any]:
    """The mapped workload: caches of 1, 4 and 8 GB (scaled down with ``limit``)."""
    scale = 1.0 if limit is None else min(1.0, limit / 100_000)
    sizes = [g * scale for g in MAPPED_SIZES_GB]
    with tempfile.TemporaryDirectory(prefix="aecore-bench-map-") as tmp:
        free = shutil.disk_usage(tmp).free
        if free < sum(sizes) * _GB * 1.1:
            return {"skipped": f"needs {sum(sizes):.1f} GB of free disk in {tmp}, has {free / _GB:.1f} GB"}
        runs: dict[str, Any] = {}
        for size in sizes:
            path = Path(tmp) / f"cache-{size:g}.safetensors"
            start = time.perf_counter()
            rows = build_cache(path, size)
            built = time.perf_counter() - start
            mapped = [_run_probe({"path": str(path), "mode": "mapped", "threads": threads}) for _ in range(1)]
            runs[f"{size:g}"] = {"rows": rows, "build_seconds": built, "mapped": mapped[0]}
            if size == sizes[0]:  # the cache that surely fits: in memory too, alternating
                times = {"mapped": [], "memory": []}
                for _ in range(repeats):
                    for mode in ("memory", "mapped"):
                        probe = _run_probe({"path": str(path), "mode": mode, "threads": threads})
                        times[mode].append(probe.get("epoch_seconds", float("nan")))
                runs[f"{size:g}"]["alternating_epoch_seconds"] = times
            path.unlink()
    small, large = runs[f"{sizes[0]:g}"], runs[f"{sizes[-1]:g}"]
    growth = (
        large["mapped"].get("rss_anon_peak", float("nan")) - small["mapped"].get("rss_anon_peak", 0)
    ) / _MB
    times = small["alternating_epoch_seconds"]
    speed = ratio(median(times["memory"]), median(times["mapped"]))
    return {
        "workload": {
            "sizes_gb": sizes,
            "shape": list(MAPPED_SHAPE),
            "model": "mlp, no hidden layer, latent 16",
        },
        "runs": runs,
        "rss_anon_growth_mb": growth,
        "mapped_speed_vs_memory": speed,
        "targets": [
            target(f"mapped: RssAnon growth from {sizes[0]:g} to {sizes[-1]:g} GB (MB)", growth, 200),
            target("mapped: in-memory time ÷ mapped time, inverted (≥ 0.9 wanted)", 1 / speed, 1 / 0.9),
        ],
    }


# --- colour against a plain loop ---------------------------------------------------------------------


def write_cifar_sample(root: Path, n: int) -> None:
    """A CIFAR-10 binary distribution of ``n`` training and ``n // 5`` test images (smooth colour fields)."""
    import torch

    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)

    def records(count: int) -> bytes:
        labels = torch.randint(0, 10, (count, 1), generator=generator, dtype=torch.uint8)
        coarse = torch.rand(count, 3, 4, 4, generator=generator)
        images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
        pixels = (images * 255).round().to(torch.uint8).view(count, -1)
        return torch.cat([labels, pixels], dim=1).numpy().tobytes()

    per = -(-n // 5)
    for i in range(5):
        (folder / f"data_batch_{i + 1}.bin").write_bytes(records(min(per, n - i * per)))
    (folder / "test_batch.bin").write_bytes(records(max(1, n // 5)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")


def run_colour(limit: int | None, repeats: int, epochs: int = 1) -> dict[str, Any]:
    """The colour preset on a CIFAR-format sample against a plain loop of the same modules."""
    import torch
    import torch.nn.functional as F

    import aecore
    from aecore import registry
    from aecore.composition import compose_preset
    from aecore.sources import load_dataset

    n = COLOUR_SAMPLES if limit is None else min(COLOUR_SAMPLES, limit)
    preset = registry.get("preset", COLOUR_PRESET)
    trainer = dict(preset.params.get("trainer", {}))
    batch = int(trainer.get("batch_size", BATCH))
    lr = float(trainer.get("lr", 1e-3))
    times: dict[str, list[float]] = {"aecore": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="aecore-bench-cifar-") as tmp, _cache_dir():
        write_cifar_sample(Path(tmp), n)
        dataset = load_dataset("cifar10", tmp)
        x = dataset.train.batch(slice(0, len(dataset.train)))  # the plain loop's one float tensor
        for rep in range(repeats):
            clock = EpochTimer()
            aecore.train(
                preset=COLOUR_PRESET,
                data=dataset,
                val_fraction=0.0,
                params={"trainer": {"epochs": epochs, "cosine": False}},
                out=str(Path(tmp) / f"run-{rep}"),
                progress=False,
                hooks=[clock],
            )
            times["aecore"].append(median(clock.epoch_seconds()))
            torch.manual_seed(0)
            model = compose_preset(preset)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            generator = torch.Generator().manual_seed(0)
            seconds = []
            for _ in range(epochs):
                start = time.perf_counter()
                order = torch.randperm(len(x), generator=generator)
                model.train()
                for first in range(0, len(x), batch):
                    xb = x[order[first : first + batch]]
                    loss = F.mse_loss(model(xb), xb)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                seconds.append(time.perf_counter() - start)
            times["plain"].append(median(seconds))
    share = ratio(median(times["aecore"]), median(times["plain"]))
    return {
        "workload": {"preset": COLOUR_PRESET, "train_samples": len(dataset.train), "epochs": epochs},
        "seconds_per_epoch": {k: median(v) for k, v in times.items()},
        "runs": times,
        "ratio": share,
        "targets": [target("colour: aecore s/epoch ÷ plain loop's", share, 1.0)],
    }


# --- block order against full shuffling --------------------------------------------------------------


def run_order(data_dir: Path, limit: int | None, epochs: int = 5) -> dict[str, Any]:
    """Test SSE per image of the ``simple`` preset trained with ``--shuffle full`` and ``block``."""
    import torch

    import aecore
    from aecore.data import Dataset
    from aecore.sources import load_dataset

    mnist = load_dataset("mnist", data_dir)
    if limit is not None:
        mnist = Dataset(
            mnist.name, mnist.train.subset(torch.arange(min(limit, 60_000))), mnist.test, mnist.spec
        )
    sse = {}
    with tempfile.TemporaryDirectory(prefix="aecore-bench-order-") as tmp:
        for order in ("full", "block"):
            result = aecore.train(
                preset="simple",
                data=mnist,
                shuffle=order,
                params=_simple_params(epochs),
                out=str(Path(tmp) / order),
                progress=False,
            )
            sse[order] = float(result.metrics["test_sse_per_image"])
    return {
        "workload": {"preset": "simple", "epochs": epochs, "train_samples": len(mnist.train)},
        "test_sse_per_image": sse,
        "block_vs_full": ratio(sse["block"], sse["full"]),
    }


def run_data(data_dir: Path, *, limit: int | None, threads: int, repeats: int) -> dict[str, Any]:
    """Every data workload; each reports its figures and targets."""
    record: dict[str, Any] = {}
    for name, run in (
        ("folder", lambda: run_folder(data_dir, limit)),
        ("mapped", lambda: run_mapped(threads, limit, repeats)),
        ("colour", lambda: run_colour(limit, repeats)),
        ("order", lambda: run_order(data_dir, limit)),
    ):
        print(f"data: {name} ...", file=sys.stderr, flush=True)
        try:
            record[name] = run()
        except Exception as exc:  # one failing workload must not hide the others' figures
            record[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return record


if __name__ == "__main__":
    print(json.dumps(mapped_probe(json.loads(sys.argv[1]))))
