"""Greedy layer-wise pretraining for aecore's mlp autoencoders, then end-to-end fine-tuning.

For layer widths ``d_0, d_1, ..., d_n`` (the flattened input, the mlp
encoder's ``hidden`` widths, the latent size), pair ``i`` is a shallow
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

Only plain stacks of Linear layers can be paired up: any encoder or decoder
other than mlp, residual blocks, batch norm and a decoder that does not
mirror the encoder are refused with a ConfigError. Dropout has no weights;
pretraining runs without it and fine-tuning with it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.config import param
from aecore.data import TensorData
from aecore.errors import ConfigError
from aecore.model import Autoencoder
from aecore.protocols import RunContext
from aecore.training.default import DefaultTrainer, DefaultTrainerConfig, TrainingDiverged
from aecore_mlp import HiddenBlock, MLPDecoder, MLPEncoder

__all__ = [
    "GreedyTrainer",
    "GreedyTrainerConfig",
    "LayerPair",
    "Pretrained",
    "check_model",
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


def check_model(model: Autoencoder) -> None:
    """Raise :class:`ConfigError` unless ``model`` is a plain, mirrored mlp autoencoder."""
    parts = (("encoder", model.encoder, MLPEncoder), ("decoder", model.decoder, MLPDecoder))
    for part, module, cls in parts:
        if not isinstance(module, cls):
            name = getattr(model.spec, part).name
            raise ConfigError(
                f"the greedy trainer cannot pretrain the '{name}' {part}: greedy pretraining needs a stack "
                f"of fully connected layers whose widths it can pair up, as in the mlp {part}; "
                f"use --{part} mlp, {_OTHER_TRAINER}."
            )
    for part, module, _ in parts:
        config = module.config
        if config.residual:
            raise ConfigError(
                f"the greedy trainer cannot pretrain residual blocks ({part}.residual=true): a skip adds "
                f"each block's input to its output, so the stacked layers would not compute what the pairs "
                f"learned; set {part}.residual=false, {_OTHER_TRAINER}."
            )
        if config.batch_norm:
            raise ConfigError(
                f"the greedy trainer does not pretrain batch norm ({part}.batch_norm=true): the pairs are "
                f"plain Linear layers, and untrained BatchNorm between them would rescale the codes they "
                f"learned; set {part}.batch_norm=false, {_OTHER_TRAINER}."
            )
    enc, dec = (",".join(map(str, m.config.hidden)) or "empty" for m in (model.encoder, model.decoder))
    if enc != dec:
        raise ConfigError(
            f"the greedy trainer needs a decoder that mirrors the encoder, but encoder.hidden is "
            f"{enc} and decoder.hidden is {dec}; "
            f"each pair joins an encoder layer to the decoder layer of the same widths. Set decoder.hidden "
            f"equal to encoder.hidden (the decoder reverses it), {_OTHER_TRAINER}."
        )


def layer_slots(model: Autoencoder) -> list[Slot]:
    """The model's layer pairs, input side first (checks the model with :func:`check_model`)."""
    check_model(model)
    enc_net, dec_net = model.encoder.net, model.decoder.net
    # MLPEncoder.net: Flatten, HiddenBlock..., Linear, code activation.
    encode = [(b.body[0], b.body[1]) for b in enc_net if isinstance(b, HiddenBlock)]
    encode.append((enc_net[-2], enc_net[-1]))
    # MLPDecoder.net: HiddenBlock..., Linear, output activation, Unflatten; listed from the code side.
    decode = [(b.body[0], b.body[1]) for b in dec_net if isinstance(b, HiddenBlock)]
    decode.append((dec_net[-3], dec_net[-2]))
    decode.reverse()
    slots = [Slot(el, ea, dl, da) for (el, ea), (dl, da) in zip(encode, decode, strict=True)]
    for slot in slots:
        d_in, d_out = slot.widths
        if not (
            isinstance(slot.encode_linear, nn.Linear)
            and isinstance(slot.decode_linear, nn.Linear)
            and (slot.decode_linear.in_features, slot.decode_linear.out_features) == (d_out, d_in)
        ):
            raise ConfigError(
                "the installed aecore-mlp lays out its layers differently from what aecore-greedy expects; "
                "install matching versions of the two."
            )
    return slots


class _StartedOnce:
    """The hook relay with ``ae_train_start`` silenced: it was fired once for both phases."""

    def __init__(self, relay: Any) -> None:
        self._relay = relay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relay, name)

    @staticmethod
    def ae_train_start(**_: Any) -> list[Any]:
        return []


class GreedyTrainer:
    """Pretrains an mlp autoencoder pair by pair, then fine-tunes it with the default trainer."""

    Config = GreedyTrainerConfig

    def __init__(self, config: GreedyTrainerConfig) -> None:
        self.config = config

    def fit(
        self, model: Autoencoder, train: TensorData, val: TensorData, run: RunContext
    ) -> Mapping[str, float]:
        cfg = self.config
        slots = layer_slots(model)
        if len(train) == 0:
            raise ConfigError("the training split is empty; use more data or a smaller --val-fraction.")
        # One progress run for both phases: they share batch_size, so an epoch has the same steps.
        run.hooks.ae_train_start(
            run=run,
            total_epochs=cfg.pretrain_epochs * len(slots) + cfg.epochs,
            steps_per_epoch=math.ceil(len(train) / cfg.batch_size),
        )
        pretrained = self.pretrain(model, train, run)
        finetune = DefaultTrainer(cfg.finetune_config())
        metrics = finetune.fit(model, train, val, dataclasses.replace(run, hooks=_StartedOnce(run.hooks)))
        return {**pretrained.metrics, **metrics}

    def pretrain(self, model: Autoencoder, train: TensorData, run: RunContext) -> Pretrained:
        """Train each pair on the codes of the pairs before it and copy it into ``model``.

        Fires ``ae_step_end`` and ``ae_epoch_end`` (with ``pretrain_pair``,
        ``pretrain_epoch`` and ``pretrain_loss``), not ``ae_train_start``.
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
