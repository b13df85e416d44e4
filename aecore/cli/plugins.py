"""``ae plugins``: what is installed, and what each component accepts."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.table import Table

from aecore import registry
from aecore.cli.output import console
from aecore.errors import UnknownComponentError, suggest

app = typer.Typer(help="List installed plugins and show their parameters.", no_args_is_help=True)


@app.command("list")
def list_command(
    kind: Annotated[
        str | None, typer.Option(help="Only this kind: encoder, decoder, regularizer, trainer or hook.")
    ] = None,
    pattern: Annotated[str, typer.Argument(help="Shell-style name filter, e.g. 'c*'.")] = "*",
) -> None:
    """List components by kind, name, distribution and version (imports no plugin)."""
    if kind == "hook":
        entries = list(registry.entry_point_infos(registry.HOOKS_GROUP))
    else:
        entries = registry.list_components(kind, pattern)
        if kind is None:
            entries += registry.entry_point_infos(registry.HOOKS_GROUP)
    table = Table(title="aecore plugins")
    for column in ("kind", "name", "distribution", "version"):
        table.add_column(column)
    for c in entries:
        table.add_row(c.kind, c.name, c.dist, c.version)
    console.print(table)


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Component name, optionally 'dist:name'.")],
) -> None:
    """Show a component's parameters: type, default and help."""
    from aecore.config import params_of

    matches = registry.find(name)
    if not matches:
        every = {c.name for c in registry.list_components()}
        raise UnknownComponentError(
            f"no component named '{name}'.{suggest(name.rpartition(':')[2], every)} "
            "Run 'ae plugins list' to see what is installed."
        )
    for info in matches:
        cls = info.load()
        doc = (cls.__doc__ or "").strip().splitlines()
        table = Table(
            title=f"{info.kind} [bold]{info.name}[/] · {info.dist} {info.version}", title_justify="left"
        )
        for column in ("parameter", "type", "default", "help"):
            table.add_column(column)
        for spec in params_of(cls.Config):
            default = "required" if spec.default is dataclasses.MISSING else _show(spec.default)
            table.add_row(spec.name, spec.type_name, default, spec.help)
        console.print(table)
        if doc:
            console.print(f"  {doc[0]}\n")


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)
