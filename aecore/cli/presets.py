"""``ae presets``: the named recipes, with parameter counts and compression ratios."""

from __future__ import annotations

from aecore.cli.output import console


def presets_command() -> None:
    """List presets with their components, code size, parameters and compression ratio."""
    from rich.table import Table

    from aecore import registry
    from aecore.composition import compose_preset
    from aecore.errors import AecoreError

    table = Table(title="aecore presets (on 1×28×28 unless noted)")
    for column, justify in (
        ("preset", "left"),
        ("components", "left"),
        ("code", "right"),
        ("parameters", "right"),
        ("compression", "right"),
        ("description", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for entry in registry.every("preset"):
        try:
            preset = entry.load()
            count = f"{compose_preset(preset).num_parameters():,}"
        except AecoreError as exc:
            table.add_row(entry.name, entry.dist, "", "", "", f"[red]broken: {exc}[/]")
            continue
        parts = [
            preset.encoder,
            *([preset.decoder] if preset.decoder and preset.decoder != preset.encoder else []),
            *preset.regularizers,
        ]
        shape = "" if preset.input_shape == (1, 28, 28) else f" on {'×'.join(map(str, preset.input_shape))}"
        table.add_row(
            entry.name,
            " + ".join(parts),
            str(preset.latent_dim),
            count,
            f"{preset.compression_ratio:.4g}×",
            preset.description + shape,
        )
    console.print(table)
