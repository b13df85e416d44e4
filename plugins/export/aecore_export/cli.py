"""``ae export``: a checkpoint's model, encoder or decoder as an ONNX file.

Only typer and aecore's option declarations are imported here; torch and
onnx load inside the command, so ``ae --help`` stays light. The options are
checked before the model is loaded, and the output file before the export
runs: a typo or an existing file costs nothing.
"""

from __future__ import annotations

from typing import Annotated

import typer

from aecore.cli.common import ModelArg, OutOpt, OverwriteOpt, output_file
from aecore_export.common import (
    DEFAULT_FILES,
    DEFAULT_OPSET,
    IO_NAMES,
    check_format,
    check_opset,
    check_part,
)

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format", help="onnx (TorchScript and .pt2 are not offered: loading them unpickles data)."
    ),
]
PartOpt = Annotated[
    str,
    typer.Option(
        help="encoder (input → code), decoder (code → reconstruction) or autoencoder "
        "(input → reconstruction)."
    ),
]
OpsetOpt = Annotated[int, typer.Option(help="ONNX opset of the file (18 and up are translated natively).")]


def _shape(name: str, dims: tuple[int, ...]) -> str:
    return f"{name} (batch, {', '.join(map(str, dims))})"


def export_command(
    model: ModelArg,
    fmt: FormatOpt = "onnx",
    part: PartOpt = "autoencoder",
    out: OutOpt = None,
    opset: OpsetOpt = DEFAULT_OPSET,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a trained model, its encoder or its decoder to ONNX (any batch size)."""
    check_format(fmt)
    check_part(part)
    check_opset(opset)

    from aecore import checkpoint
    from aecore_export.onnx_export import export_onnx

    file = checkpoint.resolve(model)
    target = output_file(out, file.parent / DEFAULT_FILES[part], overwrite)
    net = checkpoint.load(file)
    written = export_onnx(net, target, part=part, opset=opset)  # type: ignore[arg-type]
    inp, res = IO_NAMES[part]
    sizes = {"input": net.input_shape, "code": (net.latent_dim,), "reconstruction": net.input_shape}
    typer.echo(
        f"wrote {written}: {part}, {_shape(inp, sizes[inp])} → {_shape(res, sizes[res])}, opset {opset}"
    )
