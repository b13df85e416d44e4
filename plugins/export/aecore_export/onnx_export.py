"""A model part as an ONNX file: export, describe, check, write.

:func:`export_onnx` builds the module of the part (the encoder with every
regularizer's code transform, the decoder, or the whole model), puts the
model in eval mode for the export and back afterwards, and exports it with
torch's ``torch.export``-based exporter (``dynamo=True``) with a variable
first axis named ``batch``. Before the file is written, onnxruntime runs it
on random batches of other sizes and its outputs are compared with torch's,
so a file that exists computes what the model computes; the part's
description goes into the file's ``metadata_props`` (:data:`~aecore_export.METADATA_KEYS`).

When the export fails, each component of the part is exported alone to find
the one at fault, and the error names it and, where the exporter says, the
operator.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from aecore.entry_points import installed_version
from aecore.errors import ConfigError, DataError
from aecore.io import atomic_write_bytes
from aecore.model import Autoencoder, ComponentSpec, code_shape, split_code
from aecore_export.common import (
    DEFAULT_OPSET,
    IO_NAMES,
    MIN_NATIVE_OPSET,
    Part,
    UnexportableError,
    check_opset,
    check_part,
)
from aecore_export.diagnose import reason

if TYPE_CHECKING:
    import onnx

__all__ = ["export_onnx", "read_onnx_metadata"]

#: The batch the graph is traced with, and the batches the written file is checked at (others than it).
EXAMPLE_BATCH = 2
CHECK_BATCHES = (1, 5)
#: How far onnxruntime's outputs may be from torch's: float32 rounding of a different kernel order.
CHECK_ATOL = 1e-4
CHECK_RTOL = 1e-4
#: Protocol buffers hold at most 2 GiB; the graph itself needs a little room beside the weights.
MAX_WEIGHT_BYTES = 2**31 - 2**26


class EncoderPart(nn.Module):
    """Input → code exactly as :meth:`Autoencoder.encode`: the encoder, then each regularizer's transform.

    In eval mode, as exported: a variational code is its mean, a TopK code
    keeps its k largest units, a denoising regularizer does nothing (it only
    corrupts inputs in training, and ``encode`` never calls it).
    """

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.regularizers = model.regularizers

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        for reg in self.regularizers.values():
            z = split_code(reg.transform_code(z))[0]
        return z


class CodeTransform(nn.Module):
    """One regularizer's ``transform_code`` as a module: code in, code out (to export it alone)."""

    def __init__(self, regularizer: nn.Module) -> None:
        super().__init__()
        self.regularizer = regularizer

    def forward(self, z: Tensor) -> Tensor:
        return split_code(self.regularizer.transform_code(z))[0]


def part_module(model: Autoencoder, part: str) -> nn.Module:
    """The module that computes ``part`` of ``model`` (sharing its weights)."""
    check_part(part)
    if part == "encoder":
        return EncoderPart(model)
    if part == "decoder":
        return model.decoder
    return model


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every submodule's own mode is restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No output from the exporter: its progress lines, logged warnings and tracebacks, Python warnings.

    What it says on failure reaches the user through :func:`~aecore_export.diagnose.reason`;
    what it says on success is checked by running the file.
    """
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def _float_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _sample(model: Autoencoder, part: str, n: int, seed: int) -> Tensor:
    """A reproducible batch for ``part``: pixels in [0, 1) for an input, N(0, 1) for a code."""
    g = torch.Generator().manual_seed(seed)
    if IO_NAMES[part][0] == "code":
        x = torch.randn(n, model.latent_dim, generator=g)
    else:
        x = torch.rand(n, *model.input_shape, generator=g)
    return x.to(device=_device(model), dtype=_float_dtype(model))


def to_onnx(module: nn.Module, example: Tensor, opset: int, names: tuple[str, str]) -> onnx.ModelProto:
    """``module`` traced on ``example`` as an ONNX model whose first axis, ``batch``, is variable."""
    from torch.export import Dim

    with quiet():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_shapes=({0: Dim("batch")},),
            optimize=True,
            verbose=False,
        )
        return program.model_proto


def _opset_of(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _component(spec: ComponentSpec) -> dict[str, Any]:
    return {"name": spec.name, "dist": spec.dist, "version": spec.version, "params": spec.params}


def _label(kind: str, spec: ComponentSpec | None, fallback: str) -> str:
    if spec is None:
        return f"the {kind} '{fallback}'"
    return f"the {kind} '{spec.name}' ({spec.dist} {spec.version})"


def metadata(model: Autoencoder, part: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported ``part``: the keys of :data:`~aecore_export.METADATA_KEYS`."""
    spec = model.spec
    meta = model.metadata if isinstance(model.metadata, dict) else {}
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    components = {
        "encoder": _component(spec.encoder),
        "decoder": _component(spec.decoder),
        "regularizers": [_component(r) for r in spec.regularizers],
    }
    return {
        "aecore.part": part,
        "aecore.input_shape": json.dumps(list(model.input_shape)),
        "aecore.latent_dim": str(model.latent_dim),
        "aecore.code_shape": json.dumps(list(code_shape(model.encoder))),
        "aecore.normalisation": json.dumps(data.get("normalisation"), sort_keys=True),
        "aecore.components": json.dumps(components, sort_keys=True),
        "aecore.versions": json.dumps(versions, sort_keys=True),
        "aecore.version": installed_version("aecore"),
        "aecore.exporter": f"aecore-export {installed_version('aecore-export')}, torch {torch.__version__}",
    }


def _describe(proto: onnx.ModelProto, model: Autoencoder, part: str) -> None:
    props = metadata(model, part)
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    inp, out = IO_NAMES[part]
    proto.producer_name = "aecore-export"
    proto.producer_version = installed_version("aecore-export")
    proto.graph.name = f"aecore_{part}"
    proto.doc_string = f"aecore {part}: {inp} → {out} (first axis: batch); see metadata_props aecore.*"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _check(payload: bytes, module: nn.Module, model: Autoencoder, part: str, opset: int) -> None:
    """Run the file in onnxruntime at other batch sizes than the traced one; it must give torch's outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types, by the fault
        raise ConfigError(
            f"onnxruntime {ort.__version__} cannot load the exported {part} at opset {opset} "
            f"({_first_line(exc)}); choose another opset (--opset {DEFAULT_OPSET} is the default)."
        ) from None
    inp = IO_NAMES[part][0]
    for n in CHECK_BATCHES:
        x = _sample(model, part, n, seed=n)
        with torch.no_grad():
            want = module(x).detach().to("cpu", torch.float32).numpy()
        try:
            got = session.run(None, {inp: x.to("cpu").numpy()})[0]
        except Exception as exc:  # e.g. a graph traced with a fixed batch size
            raise UnexportableError(
                f"onnxruntime cannot run the exported {part} on a batch of {n} ({_first_line(exc)}); "
                "the file was not written."
            ) from None
        if got.shape != want.shape or got.shape[:1] != (n,):
            raise UnexportableError(
                f"the exported {part} gives outputs of shape {tuple(got.shape)} for a batch of {n} where "
                f"the model gives {tuple(want.shape)}: the exporter fixed a size it should have kept "
                "variable; the file was not written."
            )
        gap = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not np.allclose(got, want, rtol=CHECK_RTOL, atol=CHECK_ATOL):
            raise UnexportableError(
                f"the exported {part} does not compute what the model computes (outputs differ by up to "
                f"{gap:.3g} on a random batch of {n}); the file was not written."
            )


def _pieces(model: Autoencoder, part: str) -> list[tuple[str, nn.Module, Tensor]]:
    """The components of ``part`` in forward order, each with an example of what it receives."""
    spec = model.spec
    pieces: list[tuple[str, nn.Module, Tensor]] = []
    if part == "decoder":
        return [(_label("decoder", spec.decoder, "decoder"), model.decoder, _sample(model, part, 2, 0))]
    x = _sample(model, "encoder", EXAMPLE_BATCH, 0)
    pieces.append((_label("encoder", spec.encoder, "encoder"), model.encoder, x))
    by_name = {r.name: r for r in spec.regularizers}
    with torch.no_grad():
        code = model.encoder(x)
        for name, reg in model.regularizers.items():
            pieces.append((_label("regularizer", by_name.get(name), name), CodeTransform(reg), code))
            code = split_code(reg.transform_code(code))[0]
    if part == "autoencoder":
        pieces.append((_label("decoder", spec.decoder, "decoder"), model.decoder, code))
    return pieces


def _culprit(model: Autoencoder, part: str, opset: int, failure: Exception) -> UnexportableError:
    """The error naming the first component of ``part`` that does not export alone (or the part)."""
    skip = [os.path.dirname(torch.__file__)]
    label, cause = f"the {part}", failure
    try:
        pieces = _pieces(model, part)
    except Exception:  # a component that fails in torch itself: name the part, with the export's reason
        pieces = []
    if len(pieces) == 1:  # the part is that one component: the export that failed was its own
        return UnexportableError(
            f"{pieces[0][0]} cannot be exported to ONNX: {reason(failure, skip)}; change its forward, "
            "or export a part without it (--part)."
        )
    for piece_label, module, example in pieces:
        try:
            to_onnx(module, example, opset, ("input", "output"))
        except Exception as exc:
            label, cause = piece_label, exc
            break
    return UnexportableError(
        f"{label} cannot be exported to ONNX: {reason(cause, skip)}; change its forward, "
        "or export a part without it (--part)."
    )


def _check_size(module: nn.Module, part: str) -> None:
    total = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if total > MAX_WEIGHT_BYTES:
        raise ConfigError(
            f"the {part}'s weights take {total / 2**30:.2f} GiB, more than one ONNX file holds (2 GiB); "
            "export the encoder and decoder separately (--part), or use a smaller model."
        )


def export_onnx(
    model: Autoencoder | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    part: Part = "autoencoder",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> Path:
    """Write ``part`` of ``model`` to ``path`` as ONNX; returns the path.

    ``model`` is an :class:`~aecore.model.Autoencoder` or a checkpoint
    (a ``.safetensors`` file or a run directory, reloaded with
    :func:`aecore.load`). ``part``: ``encoder`` (input → code, as
    ``model.encode`` in eval mode), ``decoder`` (code → reconstruction) or
    ``autoencoder`` (input → reconstruction, as ``model(x)`` in eval mode).
    The graph takes and gives float32 values in the model's units (the
    caller applies the normalisation recorded under ``aecore.normalisation``;
    see :func:`aecore_export.normalise`); its first axis is the batch, of
    any size. With ``check`` (the default) onnxruntime runs the file on
    random batches before it is written and must reproduce torch's outputs.
    The file is written atomically and replaces one already at ``path``.

    Raises :class:`~aecore_export.UnexportableError` (a
    :class:`~aecore.errors.ConfigError`) naming the component that cannot be
    exported, and ``ConfigError`` for a bad ``part`` or ``opset``.
    """
    check_part(part)
    check_opset(opset)
    if not isinstance(model, Autoencoder):
        from aecore.checkpoint import load

        model = load(model)
    module = part_module(model, part)
    _check_size(module, part)
    names = IO_NAMES[part]
    with evaluating(model):
        example = _sample(model, part, EXAMPLE_BATCH, seed=0)
        try:
            proto = to_onnx(module, example, opset, names)
        except Exception as exc:  # the exporter raises many kinds; each becomes one line naming the culprit
            raise _culprit(model, part, opset, exc) from None
        got = _opset_of(proto)
        if got != opset:
            raise ConfigError(
                f"the exporter could not convert the {part} to ONNX opset {opset} (it stays at {got}); "
                f"choose a higher opset ({MIN_NATIVE_OPSET} and up are translated without conversion)."
            )
        _describe(proto, model, part)
        payload = proto.SerializeToString()
        if check:
            _check(payload, module, model, part, opset)
    target = Path(path)
    atomic_write_bytes(target, payload)
    return target


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``aecore.*`` metadata of an exported file, JSON values decoded (``aecore.latent_dim`` an int).

    A file that is not an ONNX model, or not one aecore wrote, is a one-line
    :class:`~aecore.errors.DataError`.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise DataError(f"{path} is not a readable ONNX file ({_first_line(exc)}).") from None
    if not any(p.key == "aecore.part" for p in proto.metadata_props):
        raise DataError(f"{path} has no aecore metadata; it was not written by ae export.")
    found: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if not prop.key.startswith("aecore."):
            continue
        value: Any = prop.value
        try:
            if prop.key == "aecore.latent_dim":
                value = int(value)
            elif prop.key in _JSON_KEYS:
                value = json.loads(value)
        except (ValueError, RecursionError):
            raise DataError(f"{path} has a malformed {prop.key} entry; the file is damaged.") from None
        found[prop.key] = value
    return found


_JSON_KEYS = {
    "aecore.input_shape",
    "aecore.code_shape",
    "aecore.normalisation",
    "aecore.components",
    "aecore.versions",
}
