"""Write one recipe page per preset (docs/recipes/<preset>.md), with figures measured here.

    python -m benchmarks.recipes --write docs/recipes --epochs 1

For every installed preset the page gives the command, the architecture,
the parameter count (against the reference table where there is one), the
compression ratio, and the test error of a short run on the embedded MNIST
sample, measured when the page is written (so the figure is real, and says
how it was obtained).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["measure", "page", "write_pages"]


MNIST_SHAPE = (1, 28, 28)
#: Training images of the synthetic colour set a colour preset's page is measured on.
SYNTHETIC_IMAGES = 10_000


def synthetic_colour(shape: tuple[int, ...], n: int, seed: int = 0) -> Any:
    """``n`` smooth random colour images of ``shape`` (and ``n // 5`` test ones) as an aecore Dataset."""
    import torch

    from aecore.data import UINT8_IMAGES, Dataset, TensorData

    generator = torch.Generator().manual_seed(seed)
    total = n + n // 5
    coarse = torch.rand(total, shape[0], 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(
        coarse, size=tuple(shape[1:]), mode="bilinear", align_corners=False
    )
    pixels = (images * 255).round().to(torch.uint8)
    return Dataset(
        "synthetic-colour",
        TensorData(pixels[:n], None, UINT8_IMAGES),
        TensorData(pixels[n:], None, UINT8_IMAGES),
    )


def measure(name: str, epochs: int, input_shape: tuple[int, ...] = MNIST_SHAPE) -> dict[str, Any]:
    """Train preset ``name`` for ``epochs``: on the embedded MNIST sample when it takes 1×28×28
    images, else on synthetic smooth colour images of its shape. Its test figures and time."""
    from aecore.training import train

    data = (
        None if tuple(input_shape) == MNIST_SHAPE else synthetic_colour(tuple(input_shape), SYNTHETIC_IMAGES)
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(
            preset=name,
            params={"trainer": {"epochs": epochs}},
            out=Path(tmp) / name,
            progress=False,
            **({} if data is None else {"data": data}),
        )
        seconds = time.perf_counter() - start
    return {
        "epochs": epochs,
        "sse_per_image": result.metrics["test_sse_per_image"],
        "psnr": result.metrics.get("test_psnr"),
        "seconds": seconds,
        "data": "embedded" if data is None else "synthetic",
    }


def _commands(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == MNIST_SHAPE:
        return [
            f"ae train --preset {name}",
            f"ae train --preset {name} --data mnist --data-dir ../shared/data/mnist   # full MNIST",
        ]
    if shape == (3, 32, 32):
        return [
            f"ae train --preset {name} --data cifar10 --data-dir DATA   # DATA/cifar-10-batches-bin/",
            f"ae train --preset {name} --data svhn --data-dir DATA      # DATA/train_32x32.mat ...",
        ]
    size = "x".join(map(str, shape[1:]))
    return [f"ae train --preset {name} --data 'folder:PHOTOS?size={size}&channels={shape[0]}'"]


def page(name: str, preset: Any, parameters: int, figures: dict[str, Any] | None) -> str:
    """The markdown of one recipe page."""
    parts = [preset.encoder]
    if preset.decoder not in (None, preset.encoder):
        parts.append(preset.decoder)
    components = " + ".join([*parts, *preset.regularizers])
    lines = [
        f"# Recipe: `{name}`",
        "",
        preset.description + ".",
        "",
        "```",
        *_commands(name, tuple(preset.input_shape)),
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| components | {components} |",
        f"| code size | {preset.latent_dim} |",
        f"| parameters | {parameters:,} on {'×'.join(map(str, preset.input_shape))}"
        + (
            (" (the reference table's count)" if tuple(preset.input_shape) == MNIST_SHAPE else "")
            if preset.reference_params == parameters
            else f" (reference: {preset.reference_params})"
        )
        + " |",
        f"| compression | {preset.compression_ratio:.4g}× (input size / code size) |",
    ]
    for target, values in preset.params.items():
        shown = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
        lines.append(f"| {target} settings | {shown} |")
    if figures:
        where = (
            "the embedded MNIST sample (9,000 training images)"
            if figures.get("data", "embedded") == "embedded"
            else f"{SYNTHETIC_IMAGES:,} synthetic smooth colour images of its shape (no real colour data "
            "is available offline; the figure shows the recipe trains, not how well it does on photos)"
        )
        lines += [
            "",
            f"Measured when this page was written: {figures['epochs']} epoch(s) on {where}, "
            f"{figures['seconds']:.0f} s on 2 CPU cores; "
            f"test SSE per image {figures['sse_per_image']:.2f}"
            + (f", PSNR {figures['psnr']:.2f} dB." if figures.get("psnr") else "."),
            "A short run shows the recipe works; train longer (`--epochs`) for real use.",
        ]
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def write_pages(folder: Path, epochs: int | None, only: list[str] | None = None) -> list[Path]:
    """One page per installed preset (or those in ``only``); ``epochs`` None: no measured figures."""
    from aecore import registry
    from aecore.composition import compose_preset

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in registry.list_components("preset"):
        if only and entry.name not in only:
            continue
        preset = entry.load()
        parameters = compose_preset(preset).num_parameters()
        figures = measure(entry.name, epochs, tuple(preset.input_shape)) if epochs else None
        path = folder / f"{entry.name}.md"
        path.write_text(page(entry.name, preset, parameters, figures))
        written.append(path)
        print(f"wrote {path}" + (f" (SSE {figures['sse_per_image']:.2f})" if figures else ""))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=Path("docs/recipes"))
    parser.add_argument("--epochs", type=int, default=1, help="Epochs per measured run (0: no figures).")
    parser.add_argument("--only", action="append", help="Write only this preset's page; repeat for several.")
    args = parser.parse_args(argv)
    write_pages(args.write, args.epochs or None, args.only)


if __name__ == "__main__":
    main()
