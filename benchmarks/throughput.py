"""Training throughput: aecore's real training path against two hand-written loops.

The issue says aecore trains the ``simple`` reference model slower than a
loop anyone would write by hand. To test that claim fairly the three
competitors do exactly the same work (same architecture, seed, Adam
settings, batch size, samples per epoch and epochs) and run in one process,
alternating (a b c a b c ...), so a neighbour slowing the machine down hits
all three alike:

(a) ``aecore``   :func:`aecore.training.train` with the ``simple`` preset, hooks
                 and the Rich progress display included: the code ``ae train`` runs,
                 with its default ``--backend auto`` (aecore-fastcpu on the CPU).
                 ``aecore-autograd`` is the same with ``--backend none``: plain
                 autograd and ``torch.optim.Adam``, what the core does by itself.
(b) ``plain``    one float32 tensor in memory, a ``randperm`` slice per batch.
(c) ``classic``  torchvision's MNIST with ``ToTensor`` and a ``DataLoader``.

The test error of all three is measured by the same function,
:func:`aecore.evaluate.reconstruction_metrics`, so a faster loop that learns
less shows up. The efficiency figure relates the model's FLOPs per epoch to
this machine's fp32 matmul rate, measured in the same run.
"""

from __future__ import annotations

import gc
import itertools
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.data import Dataset, TensorData
from aecore.evaluate import reconstruction_metrics
from aecore.hooks import hookimpl
from benchmarks.stats import median, ratio, target

__all__ = [
    "BATCH_SIZE",
    "COMPETITORS",
    "LAYERS",
    "LR",
    "flops_per_sample",
    "matmul_gflops",
    "plain_model",
    "run_throughput",
]

PRESET = "simple"
BATCH_SIZE = 128
LR = 1e-3
#: (in, out) of every Linear layer of the ``simple`` preset: 784-256-128-64, then the mirror.
LAYERS: tuple[tuple[int, int], ...] = ((784, 256), (256, 128), (128, 64), (64, 128), (128, 256), (256, 784))
COMPETITORS = ("aecore", "aecore-autograd", "aecore-amp", "plain", "classic")
#: How the tables name each competitor: (a0) is (a) without a backend, (a') with the opt-in bf16 autocast.
LABELS = {"aecore": "(a)", "aecore-autograd": "(a0)", "aecore-amp": "(a')", "plain": "(b)", "classic": "(c)"}
MATMUL_SIZE = 2048
#: Kernels timed for the machine's fp32 rate: torch.mm (MKL) and oneDNN (through aecore-fastcpu,
#: when it is installed and its probe passes); the faster one counts.
MATMUL_BACKENDS = ("torch", "onednn")
MATMUL_REPEATS = 5

TARGET_AECORE_PLAIN = 0.6
LIMIT_AECORE_PLAIN = 1.0
TARGET_AECORE_CLASSIC = 0.4
TARGET_MSE_REL = 0.02


def plain_model() -> nn.Sequential:
    """The ``simple`` preset's architecture as a bare ``nn.Sequential`` on flat (N, 784) inputs."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(LAYERS):
        layers.append(nn.Linear(n_in, n_out))
        layers.append(nn.Sigmoid() if i == len(LAYERS) - 1 else nn.ReLU())
    return nn.Sequential(*layers)


def flops_per_sample() -> dict[str, int]:
    """FLOPs of one training sample, counting Linear layers only.

    Forward: 2·in·out per layer. Backward: 4·in·out per layer (gradient of
    the input and of the weight), except that the first layer's input
    gradient (2·784·256) is not computed because the data needs no gradient.
    Biases, activations, the loss and Adam's update are left out (well under
    1% here).
    """
    forward = sum(2 * i * o for i, o in LAYERS)
    first_in, first_out = LAYERS[0]
    backward = sum(4 * i * o for i, o in LAYERS) - 2 * first_in * first_out
    return {"forward": forward, "backward": backward, "total": forward + backward}


def matmul_gflops(
    size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS, backend: str = "torch", device: str = "cpu"
) -> list[float]:
    """GFLOP/s of one size×size float32 product, one figure per repeat.

    ``backend`` ``torch`` times ``torch.mm`` (MKL on x86 builds); ``onednn``
    times the oneDNN kernel :mod:`aecore.layers` uses, when this build has it
    (else nothing is measured). Runs with the current thread count, the one
    the training loops use; on a GPU it times ``torch.mm`` there.
    """
    a = torch.rand(size, size, device=device)
    b = torch.rand(size, size, device=device)
    if backend == "onednn":
        op = _onednn_linear()
        if op is None:
            return []

        def product() -> None:
            op(a, b, None, "none", [], "")
    else:
        out = torch.empty(size, size, device=device)

        def product() -> None:
            torch.mm(a, b, out=out)
            _sync(device)

    product()  # warm-up: thread pool, caches, kernel selection
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return rates


def _onednn_linear() -> Any:
    """aecore-fastcpu's oneDNN product, when that backend is installed and its probes pass."""
    try:
        from aecore_fastcpu import probes
        from aecore_fastcpu.private import linear_pointwise
    except ImportError:
        return None
    if probes.failure(probes.ONEDNN) is not None:
        return None
    return linear_pointwise()


def _backend_record() -> dict[str, Any]:
    """Which backend (a) trains with here, and whether its products go through oneDNN."""
    from aecore.training.backends import choose_backend

    backend, name = choose_backend("auto", torch.device("cpu"))
    uses = getattr(backend, "uses_onednn", None)
    return {"backend": name, "onednn": bool(uses()) if callable(uses) else False}


class _FlatModel(nn.Module):
    """Lets :func:`reconstruction_metrics` evaluate a flat model on (N, 1, 28, 28) batches."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).view_as(x)


class EpochTimer:
    """A hook plugin noting perf_counter at ``ae_train_start`` and each ``ae_epoch_end``.

    The interval so covers everything in the epoch loop (batches, metrics,
    hooks, the previous epoch's checkpoint) and nothing before it (data,
    model building) or after the last epoch (test evaluation, final save).
    """

    def __init__(self) -> None:
        self.start = math.nan
        self.ends: list[float] = []
        self.samples = 0

    @hookimpl
    def ae_train_start(self, run: Any, total_epochs: int, steps_per_epoch: int) -> None:
        self.start = time.perf_counter()

    @hookimpl
    def ae_step_end(self, run: Any, epoch: int, step: int, batch_size: int, loss: Any) -> None:
        self.samples += batch_size

    @hookimpl
    def ae_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        _sync(run.device)
        self.ends.append(time.perf_counter())

    def epoch_seconds(self) -> list[float]:
        marks = [self.start, *self.ends]
        return [b - a for a, b in itertools.pairwise(marks)]


def _sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _result(
    epoch_seconds: list[float], samples: int, epochs: int, model: nn.Module, test: TensorData, device: str
) -> dict[str, Any]:
    mse = reconstruction_metrics(model, test, device=device)["mse_per_pixel"]
    return {
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "samples_per_epoch": samples / epochs,
        "test_mse": mse,
    }


def run_aecore(
    dataset: Dataset,
    epochs: int,
    seed: int,
    out: Path,
    amp: bool = False,
    device: str = "cpu",
    backend: str = "auto",
) -> dict[str, Any]:
    """(a) The real training path, as ``ae train --preset simple`` runs it (progress on stderr).

    (a') is the same with ``--set trainer.amp=true``: bfloat16 autocast, an opt-in
    that trades precision for speed, reported beside (a) but never instead of it.
    """
    from aecore.training import train

    timer = EpochTimer()
    wall = time.perf_counter()
    result = train(
        preset=PRESET,
        data=dataset,
        val_fraction=0.0,
        params={"trainer": {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": LR, "amp": amp}},
        seed=seed,
        out=out,
        progress=True,
        hooks=[timer],
        device=device,
        backend=backend,
    )
    wall = time.perf_counter() - wall
    record = _result(timer.epoch_seconds(), timer.samples, epochs, result.model, dataset.test, device)
    record["train_call_seconds"] = wall  # the whole train() call, for context only
    record["reported_test_mse"] = result.metrics.get("test_mse_per_pixel")
    return record


def _fit(model: nn.Module, batches: Any, epochs: int, device: str) -> tuple[list[float], int]:
    """The hand-written loop shared by (b) and (c): ``batches()`` yields flat float batches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    seconds, samples = [], 0
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        for xb in batches():
            loss = F.mse_loss(model(xb), xb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += xb.shape[0]
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, samples


def run_plain(x: Tensor, test: TensorData, epochs: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """(b) One (N, 784) float32 tensor in [0, 1] (on ``device``); each batch is a slice of a ``randperm``."""
    torch.manual_seed(seed)
    model = plain_model().to(device)
    generator = torch.Generator().manual_seed(seed)
    x = x.to(device)
    n = x.shape[0]

    def batches() -> Any:
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, BATCH_SIZE):
            yield x[order[start : start + BATCH_SIZE]]

    seconds, samples = _fit(model, batches, epochs, device)
    return _result(seconds, samples, epochs, _FlatModel(model), test, device)


def run_classic(images: Any, test: TensorData, epochs: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """(c) torchvision MNIST with ``ToTensor`` through a shuffling ``DataLoader`` (no workers).

    On a GPU each batch is copied to it, as such a loop does.
    """
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    model = plain_model().to(device)
    loader = DataLoader(
        images,
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )

    def batches() -> Any:
        for xb, _ in loader:
            yield xb.view(xb.shape[0], -1).to(device)

    seconds, samples = _fit(model, batches, epochs, device)
    return _result(seconds, samples, epochs, _FlatModel(model), test, device)


def same_initial_weights(seed: int) -> bool:
    """Whether (a)'s model and (b)/(c)'s ``nn.Sequential`` start from identical weights."""
    from aecore import registry
    from aecore.composition import compose_preset

    torch.manual_seed(seed)
    ours = [m for m in compose_preset(registry.get("preset", PRESET)).modules() if isinstance(m, nn.Linear)]
    torch.manual_seed(seed)
    theirs = [m for m in plain_model().modules() if isinstance(m, nn.Linear)]
    return len(ours) == len(theirs) and all(
        torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        for a, b in zip(ours, theirs, strict=True)
    )


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset.train):
        return dataset
    train = dataset.train
    y = None if train.y is None else train.y[:limit].clone()
    subset = TensorData(train.x[:limit].clone(), y, train.normalisation)
    return Dataset(dataset.name, subset, dataset.test, dict(dataset.spec))


def run_throughput(
    data_dir: Path,
    *,
    epochs: int = 2,
    limit: int | None = None,
    repeats: int = 3,
    seed: int = 0,
    matmul_size: int = MATMUL_SIZE,
    device: str = "cpu",
    amp: bool = False,
) -> dict[str, Any]:
    """Run (a), (a0), (b) and (c) ``repeats`` times, alternating, plus a matmul burst per round.

    ``amp`` adds (a'), bfloat16 autocast: informational, and slow where the CPU has no bf16 units.

    ``device`` is where all three train (``cuda`` for the GPU table); the data
    starts in host memory as each loop would have it.
    """
    from torchvision import datasets, transforms

    from aecore.sources import load_dataset

    dataset = _limited(load_dataset("mnist", data_dir), limit)
    n = len(dataset.train)
    flat = dataset.train.x.reshape(n, -1).to(torch.float32).div_(255.0)  # (b)'s tensor, built untimed
    images: Any = datasets.MNIST(str(data_dir), train=True, transform=transforms.ToTensor())
    if n < len(images):
        images = torch.utils.data.Subset(images, range(n))

    backends = MATMUL_BACKENDS if device == "cpu" else ("torch",)
    matmul_gflops(matmul_size, repeats=1, device=device)  # untimed warm-up: starts the thread pool
    competitors = [name for name in COMPETITORS if amp or name != "aecore-amp"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in competitors}
    gflops: dict[str, list[float]] = {backend: [] for backend in backends}
    with tempfile.TemporaryDirectory(prefix="aecore-bench-") as tmp:
        for rep in range(repeats):
            for name in competitors:
                gc.collect()
                if name.startswith("aecore"):
                    out = Path(tmp) / f"{name}-{rep}"
                    backend = "none" if name == "aecore-autograd" else "auto"
                    bf16 = name == "aecore-amp"
                    record = run_aecore(dataset, epochs, seed, out, amp=bf16, device=device, backend=backend)
                elif name == "plain":
                    record = run_plain(flat, dataset.test, epochs, seed, device)
                else:
                    record = run_classic(images, dataset.test, epochs, seed, device)
                runs[name].append({"repetition": rep, **record})
            for backend in backends:
                gflops[backend] += matmul_gflops(matmul_size, backend=backend, device=device)

    seconds = {name: median([r["seconds_per_epoch"] for r in runs[name]]) for name in competitors}
    mse = {name: median([r["test_mse"] for r in runs[name]]) for name in competitors}
    ratios = {
        "aecore/plain": ratio(seconds["aecore"], seconds["plain"]),
        "aecore-autograd/plain": ratio(seconds["aecore-autograd"], seconds["plain"]),
        "aecore/classic": ratio(seconds["aecore"], seconds["classic"]),
        "plain/classic": ratio(seconds["plain"], seconds["classic"]),
    }
    if amp:
        ratios["aecore-amp/plain"] = ratio(seconds["aecore-amp"], seconds["plain"])
    mse_rel = ratio(mse["aecore"] - mse["plain"], mse["plain"])
    mse_rel_amp = ratio(mse["aecore-amp"] - mse["plain"], mse["plain"]) if amp else math.nan
    flops = flops_per_sample()
    flops_epoch = flops["total"] * n
    rates = {backend: median(samples) for backend, samples in gflops.items() if samples}
    best = max(rates, key=lambda backend: rates[backend])  # the machine's fp32 rate: its faster kernel
    rate = rates[best]
    efficiency = {name: ratio(flops_epoch, seconds[name] * rate * 1e9) for name in competitors}
    return {
        "workload": {
            "preset": PRESET,
            "architecture": "784-256-128-64 ReLU code, 64-128-256 ReLU, 784 sigmoid",
            "loss": "mse",
            "optimizer": "Adam (default options)",
            "lr": LR,
            "batch_size": BATCH_SIZE,
            "train_samples": n,
            "steps_per_epoch": math.ceil(n / BATCH_SIZE),
            "test_samples": len(dataset.test),
            "epochs": epochs,
            "repeats": repeats,
            "seed": seed,
            "device": device,
            "threads": torch.get_num_threads(),
            **(_backend_record() if device == "cpu" else {"backend": "none", "onednn": False}),
            "order": f"{' '.join(LABELS[n] for n in competitors)}, repeated; matmul bursts after each round",
        },
        "competitors": {
            "aecore": "aecore.training.train(preset='simple', val_fraction=0.0, progress=True), backend auto",
            "aecore-autograd": "the same with backend='none': plain autograd and torch.optim.Adam",
            "aecore-amp": "the same with params={'trainer': {'amp': True}} (bfloat16 autocast, opt-in)",
            "plain": "one float32 (N, 784) tensor, randperm slices, nn.Sequential, Adam",
            "classic": "torchvision MNIST + ToTensor + DataLoader(shuffle=True, num_workers=0)",
        },
        "same_initial_weights": same_initial_weights(seed),
        "runs": runs,
        "seconds_per_epoch": seconds,
        "ratios": ratios,
        "test_mse": mse,
        "test_mse_rel_diff_aecore_vs_plain": mse_rel,
        "test_mse_rel_diff_aecore_amp_vs_plain": mse_rel_amp,
        "flops": {
            "per_sample_forward": flops["forward"],
            "per_sample_backward": flops["backward"],
            "per_sample": flops["total"],
            "per_epoch": flops_epoch,
            "convention": "Linear layers only: forward 2·in·out, backward 4·in·out, "
            "minus the first layer's input gradient (not computed)",
        },
        "matmul": {
            "size": matmul_size,
            "dtype": "float32",
            "backend": best,
            "gflops_samples": gflops[best],
            "gflops": rate,
            "by_backend": {
                backend: {"gflops": rates[backend], "gflops_samples": gflops[backend]} for backend in rates
            },
        },
        "efficiency": efficiency,
        "targets": [
            target("aecore/plain", ratios["aecore/plain"], TARGET_AECORE_PLAIN),
            target("aecore/plain (never above)", ratios["aecore/plain"], LIMIT_AECORE_PLAIN),
            target(
                "(a0) aecore without a backend/plain", ratios["aecore-autograd/plain"], LIMIT_AECORE_PLAIN
            ),
            target("aecore/classic", ratios["aecore/classic"], TARGET_AECORE_CLASSIC),
            target("|test MSE aecore - plain| / plain", abs(mse_rel), TARGET_MSE_REL),
            *(
                [
                    target(
                        "(a') aecore amp/plain, opt-in bf16", ratios["aecore-amp/plain"], TARGET_AECORE_PLAIN
                    ),
                    target("|test MSE (a') - plain| / plain", abs(mse_rel_amp), TARGET_MSE_REL),
                ]
                if amp
                else []
            ),
        ],
    }
