"""Median time per training step of the ``simple`` preset model, batch 128, on the embedded MNIST sample.

(a) aecore-fastcpu's step and optimizer (a': the same with ``onednn=always``, which
``auto`` chooses only on CPUs with AVX-512), (b) a plain PyTorch loop (module forward,
``F.mse_loss``, ``backward()``, ``torch.optim.Adam`` with its defaults), (c) aecore's
plain path (the model's loss terms, ``backward()``, ``Adam(fused=True)``). The three
alternate in rounds in one process, each on its own copy of the same initial model, so
a slow spell of a shared machine falls on all three alike::

    python -m benchmarks.step_time --threads 2 --rounds 40 --steps 25
"""

from __future__ import annotations

import argparse
import copy
import functools
import operator
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from aecore.composition import compose
from aecore.sources import load_dataset
from aecore.training.backends import adam
from aecore_fastcpu import FastCPU, FastCPUConfig

Step = Callable[[torch.Tensor], None]


def _fastcpu(model: torch.nn.Module, onednn: str = "auto") -> Step:
    backend = FastCPU(FastCPUConfig(onednn=onednn))  # type: ignore[arg-type]
    assert backend.probe(torch.device("cpu")) is None
    model = backend.prepare(model, torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = backend.optimizer(params, lr=1e-3, weight_decay=0.0)
    by_hand = backend.step(model, F.mse_loss)
    assert optimizer is not None and by_hand is not None

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        terms = by_hand(x)
        assert terms is not None
        optimizer.step()

    return step


def _plain_torch(model: torch.nn.Module) -> Step:
    optimizer = torch.optim.Adam(model.parameters())

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), x)
        loss.backward()
        optimizer.step()

    return step


def _aecore_plain(model: torch.nn.Module) -> Step:
    optimizer = adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        terms = model(x, loss_fn=F.mse_loss)
        functools.reduce(operator.add, terms.values()).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=25, help="steps of each variant per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train = load_dataset("embedded").train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    batches = [train.batch(order[i : i + 128]) for i in range(0, len(train) - 127, 128)]
    torch.manual_seed(0)
    params = {"encoder": {"hidden": [256, 128], "code_activation": "relu"}}
    model = compose("mlp", params=params, input_shape=(1, 28, 28), latent_dim=64)
    variants = {
        "a fastcpu": _fastcpu(copy.deepcopy(model)),
        "a' onednn always": _fastcpu(copy.deepcopy(model), "always"),
        "b plain torch": _plain_torch(copy.deepcopy(model)),
        "c aecore plain": _aecore_plain(copy.deepcopy(model)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    k = 0
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, step in variants.items():
            for i in range(args.steps):
                x = batches[(k + i) % len(batches)]
                start = time.perf_counter()
                step(x)
                if round_:
                    times[name].append(time.perf_counter() - start)
        k += args.steps

    median = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()} ({cpu})")
    print(f"{args.rounds} rounds × {args.steps} steps of each, alternating; median ms per step:")
    for name, ms in median.items():
        print(f"  {name:17s} {ms:7.3f} ms")
    plain = median["b plain torch"]
    ratios = (f"{name.split()[0]}/b = {ms / plain:.3f}" for name, ms in median.items() if name[0] != "b")
    print("  " + "   ".join(ratios))


if __name__ == "__main__":
    main()
