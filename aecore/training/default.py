"""The default trainer: Adam over shuffled index-slice batches of an in-memory dataset.

Registered as ``default`` in the ``aecore.trainers`` entry-point group, the
same way a third-party trainer would be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from aecore.config import param
from aecore.data import TensorData
from aecore.errors import AecoreError, ConfigError
from aecore.model import Autoencoder
from aecore.training.context import RunContext

__all__ = ["DefaultTrainer", "TrainingDiverged"]


class TrainingDiverged(AecoreError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class DefaultTrainerConfig:
    epochs: int = param(10, "Passes over the training data.")
    batch_size: int = param(128, "Samples per optimisation step.")
    lr: float = param(1e-3, "Adam learning rate.")
    weight_decay: float = param(0.0, "Adam weight decay (L2 on the weights).")
    checkpoint_every: int = param(1, "Save model.safetensors every N epochs (0: only at the end).")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.checkpoint_every < 0:
            raise ValueError("weight_decay and checkpoint_every cannot be negative")


class DefaultTrainer:
    """Adam, seeded shuffling, per-term metrics, validation every epoch."""

    Config = DefaultTrainerConfig

    def __init__(self, config: DefaultTrainerConfig) -> None:
        self.config = config

    def fit(
        self, model: Autoencoder, train: TensorData, val: TensorData, run: RunContext
    ) -> Mapping[str, float]:
        cfg = self.config
        if len(train) == 0:
            raise ConfigError("the training split is empty; use more data or a smaller --val-fraction.")
        device = run.device
        train = train.to(device)
        val = val.to(device)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(run.seed)
        steps = math.ceil(len(train) / cfg.batch_size)
        run.hooks.ae_train_start(run=run, total_epochs=cfg.epochs, steps_per_epoch=steps)
        metrics: dict[str, float] = {}
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            sums: dict[str, torch.Tensor] = {}
            for step, xb in enumerate(train.batches(cfg.batch_size, generator=generator, shuffle=True)):
                terms = model.loss_terms(xb, run.loss_fn)
                loss = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = xb.shape[0]
                for name, value in terms.items():
                    contribution = value.detach() * n
                    sums[name] = sums[name] + contribution if name in sums else contribution
                run.hooks.ae_step_end(run=run, epoch=epoch, step=step, batch_size=n, loss=loss.detach())
            metrics = {"epoch": epoch, "train_loss": 0.0}
            for name, total in sums.items():
                value = total.item() / len(train)
                metrics[f"train_{name}"] = value
                metrics["train_loss"] += value
            if not math.isfinite(metrics["train_loss"]):
                raise TrainingDiverged(
                    f"the loss became {metrics['train_loss']} in epoch {epoch}; the last good checkpoint "
                    f"is kept in {run.out_dir}. Try a lower --lr."
                )
            if len(val):
                metrics["val_recon"] = self._validate(model, val, run)
            run.hooks.ae_epoch_end(run=run, epoch=epoch, metrics=dict(metrics))
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
                run.save_checkpoint(model, "model.safetensors", metrics)
        return metrics

    @torch.no_grad()
    def _validate(self, model: Autoencoder, val: TensorData, run: RunContext) -> float:
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=run.device)
        for xb in val.batches(1000):
            total += run.loss_fn(model(xb), xb).double() * xb.shape[0]
        model.train()
        return total.item() / len(val)
