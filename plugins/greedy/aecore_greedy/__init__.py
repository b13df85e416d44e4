"""Greedy layer-wise pretraining for aecore autoencoders, then end-to-end fine-tuning.

It works with any encoder and decoder that offer aecore's optional
``layer_stack()`` method (aecore-mlp's do): their Linear layers, each with
the activation after it, in forward order. For layer widths
``d_0, d_1, ..., d_n`` (the flattened input, the hidden widths, the latent
size), pair ``i`` is a shallow
autoencoder ``Linear(d_i, d_i+1) -> act -> Linear(d_i+1, d_i) -> act``. The
pairs are trained one after another, each on the codes of the frozen pairs
before it (computed once for the whole training set, in memory). Each
pair's first Linear then becomes the encoder's i-th Linear, its second the
mirror Linear of the decoder, and the whole model is fine-tuned end to end
by the default trainer.

A pair is built from the composed model's own layers, so its activations
are the model's: the encoder's ``activation`` (``code_activation`` for the
last pair) on the code side, and the decoder's ``activation``
(``output_activation`` for the first pair) on the reconstruction side. The
historical recipe (ReLU codes, sigmoid output for the first pair and ReLU
for the others) is ``--set encoder.code_activation=relu`` with the mlp
defaults.

Only plain stacks of Linear layers can be paired up: an encoder or decoder
without ``layer_stack()``, one whose ``layer_stack()`` refuses (mlp's does
for residual blocks and batch norm), and a decoder that does not mirror the
encoder are refused with a one-line ConfigError. Dropout has no weights;
pretraining runs without it and fine-tuning with it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.config import param
from aecore.data import TensorData
from aecore.errors import ConfigError
from aecore.model import Autoencoder
from aecore.protocols import RunContext
from aecore.training.default import DefaultTrainer, DefaultTrainerConfig, TrainingDiverged

__all__ = [
    "GreedyTrainer",
    "GreedyTrainerConfig",
    "LayerPair",
    "Pretrained",
    "layer_slots",
]

#: Batch size used to compute the codes a later pair trains on (no gradients, so it can be large).
_CODE_BATCH = 4096


@dataclass(frozen=True)
class GreedyTrainerConfig(DefaultTrainerConfig):
    """The default trainer's fields drive fine-tuning; two more drive pretraining."""

    pretrain_epochs: int = param(5, "Epochs of pretraining for each pair of layers (0: no pretraining).")
    pretrain_lr: float = param(1e-3, "Adam learning rate while pretraining a pair (batch_size is shared).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs cannot be negative, got {self.pretrain_epochs}")
        if not self.pretrain_lr > 0:
            raise ValueError(f"pretrain_lr must be positive, got {self.pretrain_lr}")

    def finetune_config(self) -> DefaultTrainerConfig:
        """The fields the default trainer knows, as its own config."""
        return DefaultTrainerConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(DefaultTrainerConfig)}
        )


@dataclass
class Slot:
    """Where pair ``i`` lives in the composed model: the encoder's and the decoder's layers."""

    encode_linear: nn.Linear
    encode_act: nn.Module
    decode_linear: nn.Linear
    decode_act: nn.Module

    @property
    def widths(self) -> tuple[int, int]:
        return self.encode_linear.in_features, self.encode_linear.out_features


class LayerPair(nn.Module):
    """A one-hidden-layer autoencoder: ``Linear, act`` to the code, ``Linear, act`` back."""

    def __init__(self, slot: Slot) -> None:
        super().__init__()
        # Copies of the model's freshly initialised layers: seeded like the model, and separate from it.
        self.encode_linear = copy.deepcopy(slot.encode_linear)
        self.encode_act = copy.deepcopy(slot.encode_act)
        self.decode_linear = copy.deepcopy(slot.decode_linear)
        self.decode_act = copy.deepcopy(slot.decode_act)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_act(self.encode_linear(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_act(self.decode_linear(self.encode(x)))

    def copy_into(self, slot: Slot) -> None:
        """Write this pair's weights into the composed model's layers."""
        with torch.no_grad():
            slot.encode_linear.load_state_dict(self.encode_linear.state_dict())
            slot.encode_act.load_state_dict(self.encode_act.state_dict())
            slot.decode_linear.load_state_dict(self.decode_linear.state_dict())
            slot.decode_act.load_state_dict(self.decode_act.state_dict())


@dataclass
class Pretrained:
    """What pretraining produced: the trained pairs, each pair's loss per epoch, and the metrics."""

    pairs: list[LayerPair]
    losses: list[list[float]]
    metrics: dict[str, float]


_OTHER_TRAINER = "or train this model with --trainer default"


def _stack(model: Autoencoder, part: str) -> list[tuple[nn.Module, nn.Module]]:
    module = getattr(model, part)
    name = getattr(model.spec, part).name
    layer_stack = getattr(module, "layer_stack", None)
    if not callable(layer_stack):
        raise ConfigError(
            f"the greedy trainer cannot pretrain the '{name}' {part}: greedy pretraining needs a stack "
            f"of fully connected layers whose widths it can pair up (a {part} with a layer_stack() method, "
            f"as the mlp {part} has); use --{part} mlp, {_OTHER_TRAINER}."
        )
    try:
        return list(layer_stack())
    except ConfigError as exc:
        raise ConfigError(
            f"the greedy trainer cannot pretrain this model: {exc}, {_OTHER_TRAINER}."
        ) from None


def layer_slots(model: Autoencoder) -> list[Slot]:
    """The model's layer pairs, input side first; a ConfigError says why a model cannot be paired."""
    encode = _stack(model, "encoder")
    decode = list(reversed(_stack(model, "decoder")))  # the decoder's, listed from the output side
    widths = [(lin.in_features, lin.out_features) for lin, _ in encode if isinstance(lin, nn.Linear)]
    mirrored = [(lin.out_features, lin.in_features) for lin, _ in decode if isinstance(lin, nn.Linear)]
    if len(widths) != len(encode) or len(mirrored) != len(decode) or widths != mirrored:
        enc = " → ".join(str(w[0]) for w in widths) or "?"
        dec = " → ".join(str(w[0]) for w in mirrored) or "?"
        raise ConfigError(
            f"the greedy trainer needs a decoder that mirrors the encoder, but the encoder's layers start "
            f"at widths {enc} and the decoder's mirror at {dec}; each pair joins an encoder layer to the "
            f"decoder layer of the same widths (for mlp, set decoder.hidden equal to encoder.hidden), "
            f"{_OTHER_TRAINER}."
        )
    return [Slot(el, ea, dl, da) for (el, ea), (dl, da) in zip(encode, decode, strict=True)]


class GreedyTrainer:
    """Pretrains an autoencoder pair by pair, then fine-tunes it with the default trainer."""

    Config = GreedyTrainerConfig

    def __init__(self, config: GreedyTrainerConfig) -> None:
        self.config = config

    def fit(
        self, model: Autoencoder, train: TensorData, val: TensorData, run: RunContext
    ) -> Mapping[str, float]:
        cfg = self.config
        if len(train) == 0:
            raise ConfigError("the training split is empty; use more data or a smaller --val-fraction.")
        pretrained = self.pretrain(model, train, run)
        metrics = DefaultTrainer(cfg.finetune_config()).fit(model, train, val, run)
        return {**pretrained.metrics, **metrics}

    def check(self, model: Autoencoder) -> None:
        """Refuse a model whose layers cannot be paired up, before the run directory is made."""
        layer_slots(model)

    def schedule(self, model: Autoencoder, train: TensorData) -> tuple[int, int]:
        """Both phases as one run: they share batch_size, so an epoch has the same steps."""
        cfg = self.config
        pairs = len(layer_slots(model)) if cfg.pretrain_epochs else 0
        return cfg.pretrain_epochs * pairs + cfg.epochs, math.ceil(len(train) / cfg.batch_size)

    def pretrain(self, model: Autoencoder, train: TensorData, run: RunContext) -> Pretrained:
        """Train each pair on the codes of the pairs before it and copy it into ``model``.

        Fires ``ae_step_end`` and ``ae_epoch_end`` (with ``pretrain_pair``,
        ``pretrain_epoch`` and ``pretrain_loss``); the core fires ``ae_train_start``.
        """
        cfg = self.config
        slots = layer_slots(model)
        if cfg.pretrain_epochs == 0:
            return Pretrained([], [], {})
        device = run.device
        model.to(device)
        data = train.to(device)
        generator = torch.Generator().manual_seed(run.seed)
        result = Pretrained([], [], {})
        for i, slot in enumerate(slots, start=1):
            pair = LayerPair(slot).to(device)
            losses = self._train_pair(pair, data, i, generator, run)
            pair.copy_into(slot)
            result.pairs.append(pair)
            result.losses.append(losses)
            result.metrics[f"pretrain_{i}_loss"] = losses[-1]
            if i < len(slots):
                data = _codes(pair, data)
        return result

    def _train_pair(
        self, pair: LayerPair, data: TensorData, index: int, generator: torch.Generator, run: RunContext
    ) -> list[float]:
        cfg = self.config
        optimizer = torch.optim.Adam(pair.parameters(), lr=cfg.pretrain_lr)
        pair.train()
        losses = []
        for epoch in range(1, cfg.pretrain_epochs + 1):
            total = torch.zeros((), dtype=torch.float64, device=run.device)
            for step, xb in enumerate(data.batches(cfg.batch_size, generator=generator, shuffle=True)):
                # Always MSE: codes after the first pair are not in [0, 1], so BCE would not apply.
                loss = F.mse_loss(pair(xb), xb.flatten(1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = xb.shape[0]
                total += loss.detach().double() * n
                run.hooks.ae_step_end(run=run, epoch=epoch, step=step, batch_size=n, loss=loss.detach())
            value = total.item() / len(data)
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the loss of pretraining pair {index} became {value} in epoch {epoch}; "
                    f"try a lower --set trainer.pretrain_lr."
                )
            losses.append(value)
            metrics = {"pretrain_pair": index, "pretrain_epoch": epoch, "pretrain_loss": value}
            run.hooks.ae_epoch_end(run=run, epoch=epoch, metrics=metrics)
        pair.eval()
        return losses


@torch.no_grad()
def _codes(pair: LayerPair, data: TensorData) -> TensorData:
    """``pair``'s codes for every sample of ``data``, in order, as an in-memory dataset."""
    pair.eval()
    return TensorData(torch.cat([pair.encode(xb) for xb in data.batches(_CODE_BATCH)]))
