"""What ``ae export`` accepts and writes, without torch: formats, parts, file names, metadata keys.

The command checks its options against these before it loads a model, so a
misspelt ``--part`` or ``--format`` costs nothing; :mod:`aecore_export.onnx_export`
does the work.
"""

from __future__ import annotations

from typing import Literal

from aecore.errors import ConfigError, suggest

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_OPSET",
    "FORMATS",
    "IO_NAMES",
    "METADATA_KEYS",
    "MIN_NATIVE_OPSET",
    "PARTS",
    "Part",
    "UnexportableError",
    "check_format",
    "check_opset",
    "check_part",
]

Part = Literal["encoder", "decoder", "autoencoder"]

#: The parts a model can be exported as, and what each computes.
PARTS: dict[str, str] = {
    "encoder": "input → code, as model.encode gives it in eval mode (regularizers' code transforms included)",
    "decoder": "code → reconstruction, as model.decode",
    "autoencoder": "input → reconstruction, as model(x) in eval mode",
}

#: Formats ``ae export`` writes. TorchScript and .pt2 are left out: loading them unpickles (docs/export.md).
FORMATS = ("onnx",)

#: The file each part gets next to the checkpoint when ``--out`` is not given.
DEFAULT_FILES: dict[str, str] = {
    "autoencoder": "model.onnx",
    "encoder": "encoder.onnx",
    "decoder": "decoder.onnx",
}

#: The graph's input and output names, by part; the first axis of each is named ``batch``.
IO_NAMES: dict[str, tuple[str, str]] = {
    "encoder": ("input", "code"),
    "decoder": ("code", "reconstruction"),
    "autoencoder": ("input", "reconstruction"),
}

#: The opset torch's exporter translates to natively; lower ones go through ONNX's version converter.
MIN_NATIVE_OPSET = 18
#: The opset written unless asked otherwise: fixed here, so a torch upgrade does not change the files.
DEFAULT_OPSET = 18

#: The keys of the ONNX file's ``metadata_props`` that aecore writes, and what each holds.
METADATA_KEYS: dict[str, str] = {
    "aecore.part": "encoder, decoder or autoencoder",
    "aecore.input_shape": "one sample's shape, JSON (e.g. [1, 28, 28]); the graph adds the batch axis",
    "aecore.latent_dim": "the code size, an integer",
    "aecore.code_shape": "the code's shape, JSON: [latent_dim] or a spatial [C, H, W] (flat in the graph)",
    "aecore.normalisation": "the training data's normalisation record, JSON (null when unknown)",
    "aecore.components": "encoder, decoder and regularizers: name, dist, version and params of each, JSON",
    "aecore.versions": "the versions the checkpoint recorded at training time, JSON ({} when unknown)",
    "aecore.version": "the aecore version that exported the file",
    "aecore.exporter": "the aecore-export and torch versions that exported the file",
}


class UnexportableError(ConfigError):
    """A model part whose computation ONNX cannot express, or that the exporter got wrong.

    The message names the component (and, where the exporter says, the
    operator), so the fix is clear: change that component, or export a part
    without it. A :class:`~aecore.errors.ConfigError`, so the CLI shows it as
    one line with exit code 2.
    """


def check_part(part: str) -> str:
    """``part`` if it is one of :data:`PARTS`; else a one-line :class:`ConfigError` listing them."""
    if part not in PARTS:
        raise ConfigError(f"unknown part '{part}'; choose one of {', '.join(PARTS)}.{suggest(part, PARTS)}")
    return part


def check_format(fmt: str) -> str:
    """``fmt`` (any case) if it is one of :data:`FORMATS`; else a one-line :class:`ConfigError`."""
    name = fmt.lower()
    if name in ("torchscript", "pt2", "pt", "jit"):
        raise ConfigError(
            f"format '{fmt}' is not offered: loading it unpickles data (docs/export.md); use --format onnx."
        )
    if name not in FORMATS:
        raise ConfigError(f"unknown format '{fmt}'; the formats are: {', '.join(FORMATS)}.")
    return name


def check_opset(opset: int) -> int:
    """``opset`` if onnx knows it (7 to the newest it defines); else a one-line :class:`ConfigError`."""
    import onnx  # not torch: the command checks this before it loads the model

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= newest:
        raise ConfigError(
            f"opset {opset!r} is out of range; choose one from 7 to {newest} (onnx {onnx.__version__}), "
            f"e.g. {DEFAULT_OPSET}."
        )
    return opset
