"""Training speed of a sparse autoencoder: aecore's real training path against a plain PyTorch loop.

The workload is a TopK SAE on 256-d vectors with 4096 latents (k = 16), on
``sparse-features`` data drawn in memory. Both competitors do the same
work, alternating in one process under the same thread count:

(a) ``aecore``  :func:`aecore.training.train` with ``--encoder sae --reg topk`` (the sae
                decoder's unit-norm directions and gradient projection on, AuxK off), as
                ``ae train`` runs it, timed from ``ae_train_start`` to each ``ae_epoch_end``;
(b) ``plain``   the same model written by hand (``nn.Linear`` encoder with the decoder bias
                subtracted, ReLU, ``topk`` + ``scatter``, ``nn.Linear`` decoder), one float32
                tensor in memory sliced by a ``randperm``, ``F.mse_loss``, ``backward()``, the
                decoder columns' parallel gradient removed by hand, ``torch.optim.Adam``, the
                columns renormalised after each step.

Both report the test FVU, so a faster loop that learns less shows up. The
ratio is (a)/(b) of the median seconds per epoch::

    python -m benchmarks.sae --rows 60000 --epochs 2 --repeats 3 --threads 2

``--floor`` measures instead what FVU a TopK SAE reaches on ``sparse-features``
when its dictionary starts at the true one (:func:`sae_fvu_floor`): the part
of the error due to the linear encoder, not to learning the dictionary::

    python -m benchmarks.sae --floor --k 16 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.data import Dataset
from benchmarks.stats import median, ratio, target
from benchmarks.throughput import EpochTimer

__all__ = ["LIMIT_RATIO", "PlainSAE", "run_sae_speed", "sae_fvu_floor"]

DIM = 256
LATENTS = 4096
K = 16
BATCH_SIZE = 1024
LR = 1e-3
#: The issue's bound: aecore's seconds per epoch at most the plain loop's.
LIMIT_RATIO = 1.0


class PlainSAE(nn.Module):
    """A TopK SAE as one would write it by hand: x̂ = W_dec TopK(ReLU(W_enc (x − b_dec) + b_enc)) + b_dec."""

    def __init__(self, dim: int, latents: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(dim, latents)
        self.decoder = nn.Linear(latents, dim)
        with torch.no_grad():
            self.decoder.weight.div_(self.decoder.weight.norm(dim=0, keepdim=True))
            self.encoder.weight.copy_(self.decoder.weight.T)
            self.encoder.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.encoder(x - self.decoder.bias))
        values, index = pre.topk(self.k, dim=1)
        return self.decoder(torch.zeros_like(pre).scatter(1, index, values))


def _plain(data: Dataset, epochs: int, seed: int, batch_size: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = PlainSAE(DIM, LATENTS, K)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x = data.train.x.float()
    generator = torch.Generator().manual_seed(seed)
    weight = model.decoder.weight
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for first in range(0, len(x), batch_size):
            xb = x[order[first : first + batch_size]]
            loss = F.mse_loss(model(xb), xb)
            optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():  # unit-norm columns: no gradient along them, renormalised after
                weight.grad -= (weight.grad * weight).sum(dim=0, keepdim=True) * weight
                optimizer.step()
                weight.div_(weight.norm(dim=0, keepdim=True))
        seconds.append(time.perf_counter() - start)
    return {"epoch_seconds": seconds, "test_fvu": _fvu(model, data)}


def _aecore(data: Dataset, epochs: int, seed: int, batch_size: int, out: Path) -> dict[str, Any]:
    from aecore.training import train

    timer = EpochTimer()
    result = train(
        encoder="sae",
        regularizers=["topk"],
        latent_dim=LATENTS,
        data=data,
        val_fraction=0.0,
        params={"topk": {"k": K}, "trainer": {"epochs": epochs, "batch_size": batch_size, "lr": LR}},
        seed=seed,
        out=out,
        progress=False,
        hooks=[timer],
    )
    return {"epoch_seconds": timer.epoch_seconds(), "test_fvu": _fvu(result.model, data)}


@torch.no_grad()
def _fvu(model: nn.Module, data: Dataset) -> float:
    from aecore_sae.metrics import fraction_of_variance_unexplained

    model.eval()
    x = data.test.x.float()
    return fraction_of_variance_unexplained(x, model(x))


def run_sae_speed(
    *, rows: int = 60_000, epochs: int = 2, repeats: int = 3, seed: int = 0, batch_size: int = BATCH_SIZE
) -> dict[str, Any]:
    """Seconds per epoch of (a) aecore and (b) the plain loop, alternating ``repeats`` times; their ratio.

    Runs at the current torch thread count (set it before calling). Returns the
    workload, each repetition's epoch times and test FVU, the medians, the ratio
    (a)/(b) and the target (ratio <= 1.0).
    """
    from aecore_sae.synthetic import SparseFeatures, SparseFeaturesConfig

    source = SparseFeatures(
        SparseFeaturesConfig(features=LATENTS, dim=DIM, rows=rows, test_rows=4096, seed=seed)
    )
    data = source.load(None, data_dir=None, normalisation=None)
    runs: dict[str, list[dict[str, Any]]] = {"aecore": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="aecore-bench-sae-") as tmp:
        for rep in range(repeats):
            for name in runs:
                gc.collect()
                if name == "aecore":
                    record = _aecore(data, epochs, seed, batch_size, Path(tmp) / f"aecore-{rep}")
                else:
                    record = _plain(data, epochs, seed, batch_size)
                record["seconds_per_epoch"] = sum(record["epoch_seconds"]) / len(record["epoch_seconds"])
                runs[name].append({"repetition": rep, **record})
    seconds = {name: median([r["seconds_per_epoch"] for r in records]) for name, records in runs.items()}
    value = ratio(seconds["aecore"], seconds["plain"])
    return {
        "workload": {
            "model": f"TopK SAE {DIM}-{LATENTS}-{DIM}, k={K}, unit-norm decoder columns",
            "data": f"sparse-features, {rows} training rows",
            "batch_size": batch_size,
            "lr": LR,
            "epochs": epochs,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
        "seconds_per_epoch": seconds,
        "ratio": value,
        "target": target("aecore/plain seconds per epoch (sae)", value, LIMIT_RATIO),
    }


def sae_fvu_floor(
    *, k: int = K, steps: int = 400, magnitude: str = "uniform", seed: int = 0, batch_size: int = BATCH_SIZE
) -> dict[str, float]:
    """The FVU a TopK SAE reaches when its dictionary starts at the true one (``sparse-features`` defaults).

    Encoder and decoder start at the true directions (biases at zero), then
    every part trains ``steps`` Adam steps on batches of the training rows:
    the encoder learns the biases and directions that best separate features
    in superposition. What remains is the error of a linear encoder with a
    top-k code on this data, a floor for an SAE trained from scratch. Returns
    the ``ae eval`` figures after training.
    """
    from aecore.composition import compose
    from aecore.training.backends import adam
    from aecore_sae.metrics import evaluate_sae
    from aecore_sae.synthetic import SparseFeatures, SparseFeaturesConfig

    source = SparseFeatures(SparseFeaturesConfig(magnitude=magnitude, seed=seed))  # type: ignore[arg-type]
    data = source.load(None, data_dir=None, normalisation=None)
    true = data.tensors["true_dictionary"]
    torch.manual_seed(seed)
    model = compose(
        "sae", regularizers=["topk"], input_shape=(DIM,), latent_dim=LATENTS, params={"topk": {"k": k}}
    )
    with torch.no_grad():
        model.encoder.weight.copy_(true)
        model.decoder.weight.copy_(true)
        model.encoder.pre_bias.zero_()
        model.decoder.bias.zero_()
    model.train()
    optimizer = adam(list(model.parameters()), lr=LR)
    x = data.train.x
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        xb = x[torch.randint(len(x), (batch_size,), generator=generator)]
        optimizer.zero_grad(set_to_none=True)
        sum(model(xb, F.mse_loss).values()).backward()
        optimizer.step()
        model.decoder.renormalise_()
    return evaluate_sae(model, model.decoder, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--floor", action="store_true", help="measure the FVU floor instead (sae_fvu_floor)")
    parser.add_argument("--k", type=int, default=K, help="k of the floor's TopK code")
    parser.add_argument("--magnitude", default="uniform", help="sparse-features magnitude for the floor")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.floor:
        figures = sae_fvu_floor(k=args.k, magnitude=args.magnitude)
        print("  ".join(f"{name} {value:.4f}" for name, value in figures.items()))
        return
    record = run_sae_speed(rows=args.rows, epochs=args.epochs, repeats=args.repeats)
    for name, value in record["seconds_per_epoch"].items():
        fvu = median([r["test_fvu"] for r in record["runs"][name]])
        print(f"{name:7s} {value:8.2f} s/epoch   test FVU {fvu:.4f}")
    verdict = "PASS" if record["target"]["passed"] else "FAIL"
    print(f"aecore/plain = {record['ratio']:.3f} (target <= {LIMIT_RATIO}): {verdict}")


if __name__ == "__main__":
    main()
