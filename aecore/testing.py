"""Conformance checks for plugin authors to call from their own tests (no pytest needed).

Each ``check_*`` builds a component the way aecore does, exercises what the
rest of aecore relies on, and raises ``AssertionError`` naming the problem,
e.g. ``check_encoder(MyEncoder, input_shape=(3, 32, 32), params={"width": 16})``.
Checks run under a fixed seed inside :func:`torch.random.fork_rng`, so they
are reproducible and leave the caller's random state alone. They use ``assert``:
do not run them under ``python -O``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aecore import kinds, protocols
from aecore.config import config_from_dict, config_to_dict

__all__ = [
    "check_checkpoint_roundtrip",
    "check_decoder",
    "check_encoder",
    "check_regularizer",
    "check_roundtrip",
    "check_trainer",
]

_SEED = 1234
Params = Mapping[str, Any] | None
_PROTOCOLS: dict[str, type] = {
    "encoder": protocols.Encoder,
    "decoder": protocols.Decoder,
    "regularizer": protocols.Regularizer,
    "trainer": protocols.Trainer,
}


def check_encoder(
    cls: type,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Params = None,
    batch_sizes: Sequence[int] = (1, 2, 5),
) -> nn.Module:
    """Check that ``cls`` maps ``(N, *input_shape)`` to ``(N, latent_dim)``; returns the built encoder."""
    return _check_coder("encoder", cls, params, batch_sizes, input_shape=input_shape, latent_dim=latent_dim)


def check_decoder(
    cls: type,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Params = None,
    batch_sizes: Sequence[int] = (1, 2, 5),
) -> nn.Module:
    """Check that ``cls`` maps ``(N, latent_dim)`` to ``(N, *input_shape)``; returns the built decoder."""
    return _check_coder("decoder", cls, params, batch_sizes, input_shape=input_shape, latent_dim=latent_dim)


def check_regularizer(
    cls: type,
    *,
    latent_dim: int = 8,
    params: Params = None,
    input_shape: Sequence[int] = (1, 28, 28),
    batch_size: int = 4,
) -> nn.Module:
    """Check penalty and transforms inside a small linear autoencoder; returns the regularizer.

    ``transform_code`` must give a code of the same shape (alone or as the
    first of ``(code, aux)``) in training and evaluation, and
    ``transform_input`` must leave its argument alone. The penalty, computed
    the way training computes it (:meth:`aecore.model.Autoencoder.loss_terms`),
    must be a finite 0-d tensor: zero when the config's ``weight`` is 0, and
    otherwise a gradient that reaches at least one of the model's parameters
    (encoder, decoder or the regularizer's own); a penalty that moves nothing
    trains nothing. A regularizer without a ``weight`` may instead return a
    constant zero (a pure transform such as TopK or denoising).
    """
    from aecore.model import Autoencoder, ComponentSpec, ModelSpec, split_code

    input_shape, name = tuple(input_shape), cls.__name__
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        reg, config = _build("regularizer", cls, params, latent_dim=latent_dim)
        toy = ComponentSpec("linear", "aecore.testing", "0", {})
        spec = ModelSpec(input_shape, latent_dim, toy, toy, [ComponentSpec(name, "", "", {})])
        size = math.prod(input_shape)
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, latent_dim))
        decoder = nn.Sequential(nn.Linear(latent_dim, size), nn.Sigmoid(), nn.Unflatten(1, input_shape))
        model = Autoencoder(encoder, decoder, {"reg": reg}, spec)
        x = torch.rand(batch_size, *input_shape)
        clean = x.clone()

        for training in (True, False):
            model.train(training)
            z = torch.randn(batch_size, latent_dim)
            what = f"{name}.transform_code ({_mode(training)})"
            try:
                code, _, _ = split_code(reg.transform_code(z))
            except TypeError as exc:
                raise AssertionError(f"{what}: {exc}") from exc
            _expect_shape(code, z.shape, what)
        model.train()
        _expect_shape(reg.transform_input(x), x.shape, f"{name}.transform_input")
        assert torch.equal(x, clean), f"{name}.transform_input changed its argument in place"

        targets: list[Tensor] = []  # what the reconstruction loss compares against
        terms = model.loss_terms(x, lambda r, t: targets.append(t.detach().clone()) or ((r - t) ** 2).mean())
        assert torch.equal(targets[0], clean), f"with {name}, the loss did not target the clean input"
        assert "reg" in terms, f"loss_terms has no term for {name}"

        penalty = terms["reg"]
        assert isinstance(penalty, Tensor) and penalty.dim() == 0, (
            f"{name}.penalty must return a 0-d tensor, got {penalty!r}"
        )
        assert torch.isfinite(penalty), f"{name}.penalty is not finite: {penalty.item()}"
        weight = getattr(config, "weight", None)
        if weight == 0 or (weight is None and not penalty.requires_grad):
            assert penalty.item() == 0, f"{name}.penalty is a constant {penalty.item()}, expected 0"
            return reg
        assert penalty.requires_grad, f"{name}.penalty (weight {weight}) carries no gradient"
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(penalty, [p for _, p in named], allow_unused=True)
        bad = [n for (n, _), g in zip(named, grads, strict=True) if g is not None and not torch.isfinite(g).all()]
        assert not bad, f"{name}.penalty gives a non-finite gradient to {', '.join(bad)}"
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (
            f"{name}.penalty (weight {weight}) gives a zero gradient to every parameter of the model it is "
            "composed into (encoder, decoder and its own), so it trains nothing. Its z is the code after "
            "every transform_code; if it needs the code from before its own transform (a straight-through "
            "estimator carries no gradient back through it), return (code, aux) from transform_code and "
            "read penalty's aux= argument."
        )
    return reg


def check_trainer(cls: type, *, params: Params = None) -> Any:
    """Check that ``cls`` is a trainer whose ``Config`` builds and round-trips; returns an instance."""
    return _build("trainer", cls, params)[0]


def check_roundtrip(model: nn.Module, directory: str | Path | None = None) -> nn.Module:
    """Save and reload a composed model; check equal weights and eval outputs; return the copy.

    ``model`` first runs a training-mode batch (moving BatchNorm statistics) and is left in eval mode.
    """
    from aecore.checkpoint import load, save

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        with torch.no_grad():
            model.train()(torch.rand(4, *model.input_shape))
            x = torch.rand(3, *model.input_shape)
            expected = model.eval()(x)
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load(save(model, Path(directory or tmp) / "model.safetensors"))
        assert not loaded.training, "a loaded model must be in eval mode"
        assert loaded.spec == model.spec, f"spec changed on reload: {loaded.spec} != {model.spec}"
        original, restored = model.state_dict(), loaded.state_dict()
        changed = [k for k, v in original.items() if k not in restored or not torch.equal(v, restored[k])]
        assert not changed and original.keys() == restored.keys(), f"weights differ after reload: {changed}"
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), "the reloaded model's outputs differ from the original's"
    return loaded


def check_checkpoint_roundtrip(
    encoder: str,
    decoder: str | None = None,
    regularizers: Sequence[str] = (),
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    tmp_path: str | Path | None = None,
) -> nn.Module:
    """Compose a model from registry names and run :func:`check_roundtrip` on it."""
    from aecore.composition import compose

    shape = {"input_shape": input_shape, "latent_dim": latent_dim}
    return check_roundtrip(compose(encoder, decoder, regularizers, params=params, **shape), tmp_path)


# -- internals ---------------------------------------------------------------


def _check_coder(kind: str, cls: type, params: Params, sizes: Sequence[int], **context: Any) -> nn.Module:
    input_shape = context["input_shape"] = tuple(context["input_shape"])
    name, latent_dim = cls.__name__, context["latent_dim"]
    shape_in, shape_out = (input_shape, (latent_dim,)) if kind == "encoder" else ((latent_dim,), input_shape)

    def sample(n: int) -> Tensor:
        return torch.rand(n, *shape_in) if kind == "encoder" else torch.randn(n, *shape_in)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        module, _ = _build(kind, cls, params, **context)
        assert module.input_shape == input_shape, f"{name}.input_shape is {module.input_shape!r}"
        assert module.latent_dim == latent_dim, f"{name}.latent_dim is {module.latent_dim!r}"

        for n in sizes:  # batch norm cannot train on one sample, so N=1 runs in eval only
            x = sample(n)
            for training in (False,) if n == 1 else (True, False):
                what = f"{name} on input {tuple(x.shape)} ({_mode(training)})"
                try:
                    with torch.no_grad():
                        out = module.train(training)(x)
                except Exception as exc:
                    raise AssertionError(f"{what} fails: {exc}") from exc
                _expect_shape(out, (n, *shape_out), what)
                assert torch.isfinite(out).all(), f"{what} gives non-finite outputs"

        module.train().zero_grad(set_to_none=True)
        out = module(sample(4))
        (out * torch.randn_like(out)).sum().backward()  # random weights: BatchNorm cancels a plain sum
        for pname, p in module.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name} parameter '{pname}' gets no gradient from the output"
                assert torch.isfinite(p.grad).all(), f"{name} parameter '{pname}' gets a non-finite gradient"
                assert p.grad.abs().sum() > 0, f"{name} parameter '{pname}' gets an all-zero gradient"

        x, builds = sample(3), []
        for _ in range(2):
            torch.manual_seed(_SEED + 1)
            built, _ = _build(kind, cls, params, **context)
            with torch.no_grad():
                builds.append((built.state_dict(), built.eval()(x)))
        (w1, y1), (w2, y2) = builds
        same = w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        assert same, f"two {name} built under the same torch.manual_seed have different weights"
        assert torch.equal(y1, y2), f"two {name} built under the same seed give different outputs"
    return module


def _build(kind: str, cls: type, params: Params, **context: Any) -> tuple[Any, Any]:
    problems = kinds.check(kind, cls)
    assert not problems, f"{getattr(cls, '__name__', cls)} is not a valid {kind}: {'; '.join(problems)}"
    config = config_from_dict(cls.Config, dict(params or {}), owner=cls.__name__)
    _check_config_roundtrip(config, cls.__name__)
    component = cls(config, **context)
    protocol = _PROTOCOLS[kind]
    assert isinstance(component, protocol), f"{cls.__name__} does not satisfy the {kind} protocol"
    assert component.config == config, f"{cls.__name__} must keep its config as .config"
    return component, config


def _check_config_roundtrip(config: Any, owner: str) -> None:
    try:
        values = json.loads(json.dumps(config_to_dict(config)))  # as stored in checkpoint metadata
        again = config_from_dict(type(config), values, owner=owner)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{owner} config cannot be stored and rebuilt from JSON: {exc}") from exc
    assert again == config, f"{owner} config changes through config_to_dict/config_from_dict: {again}"


def _expect_shape(t: Any, shape: Sequence[int], what: str) -> None:
    assert isinstance(t, Tensor), f"{what} returned {type(t).__name__}, not a tensor"
    assert tuple(t.shape) == tuple(shape), f"{what} gives shape {tuple(t.shape)}, expected {tuple(shape)}"


def _mode(training: bool) -> str:
    return "train mode" if training else "eval mode"
