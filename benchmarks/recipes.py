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


def measure(name: str, epochs: int) -> dict[str, Any]:
    """Train preset ``name`` for ``epochs`` on the embedded sample; its test figures and time."""
    from aecore.training import train

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(
            preset=name,
            params={"trainer": {"epochs": epochs}},
            out=Path(tmp) / name,
            progress=False,
        )
        seconds = time.perf_counter() - start
    return {
        "epochs": epochs,
        "sse_per_image": result.metrics["test_sse_per_image"],
        "psnr": result.metrics.get("test_psnr"),
        "seconds": seconds,
    }


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
        f"ae train --preset {name}",
        f"ae train --preset {name} --data mnist --data-dir ../shared/data/mnist   # full MNIST",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| components | {components} |",
        f"| code size | {preset.latent_dim} |",
        f"| parameters | {parameters:,} on {'×'.join(map(str, preset.input_shape))}"
        + (
            " (the reference table's count)"
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
        lines += [
            "",
            f"Measured when this page was written: {figures['epochs']} epoch(s) on the embedded "
            f"MNIST sample (9,000 training images), {figures['seconds']:.0f} s on 2 CPU cores; "
            f"test SSE per image {figures['sse_per_image']:.2f}"
            + (f", PSNR {figures['psnr']:.2f} dB." if figures.get("psnr") else "."),
            "A short run shows the recipe works; train longer (`--epochs`) for real use.",
        ]
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def write_pages(folder: Path, epochs: int | None) -> list[Path]:
    """One page per installed preset; ``epochs`` None writes them without measured figures."""
    from aecore import registry
    from aecore.composition import compose_preset

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in registry.list_components("preset"):
        preset = entry.load()
        parameters = compose_preset(preset).num_parameters()
        figures = measure(entry.name, epochs) if epochs else None
        path = folder / f"{entry.name}.md"
        path.write_text(page(entry.name, preset, parameters, figures))
        written.append(path)
        print(f"wrote {path}" + (f" (SSE {figures['sse_per_image']:.2f})" if figures else ""))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=Path("docs/recipes"))
    parser.add_argument("--epochs", type=int, default=1, help="Epochs per measured run (0: no figures).")
    args = parser.parse_args(argv)
    write_pages(args.write, args.epochs or None)


if __name__ == "__main__":
    main()
