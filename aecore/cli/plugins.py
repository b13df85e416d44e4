"""``ae plugins``: what is installed, and what each component accepts."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Annotated

import typer

from aecore import registry
from aecore.cli import scaffold
from aecore.cli.output import console
from aecore.errors import UnknownComponentError, suggest

app = typer.Typer(help="List, show and check installed plugins.", no_args_is_help=True)


def _entries(kind: str | None, pattern: str) -> list[registry.ComponentInfo]:
    if kind in registry.OTHER_GROUPS.values():
        group = next(g for g, k in registry.OTHER_GROUPS.items() if k == kind)
        return [e for e in registry.entry_point_infos(group) if fnmatch.fnmatchcase(e.name, pattern)]
    entries = registry.list_components(kind, pattern)
    if kind is None:
        entries += [
            e
            for e in registry.entry_point_infos(registry.HOOKS_GROUP)
            if fnmatch.fnmatchcase(e.name, pattern)
        ]
    return entries


@app.command("list")
def list_command(
    kind: Annotated[
        str | None,
        typer.Option(help="Only this kind: encoder, decoder, regularizer, trainer, hook or preset."),
    ] = None,
    pattern: Annotated[str, typer.Argument(help="Shell-style name filter, e.g. 'c*'.")] = "*",
) -> None:
    """List components by kind, name, distribution and version (imports no plugin).

    A plugin whose last load failed is shown as broken; 'ae plugins doctor' loads and checks them all.
    """
    from rich.markup import escape
    from rich.table import Table

    entries = _entries(kind, pattern)
    broken = registry.known_broken()
    duplicated = {key for key in registry.duplicates()}
    table = Table(title="aecore plugins")
    for column in ("kind", "name", "distribution", "version", "status"):
        table.add_column(column)
    for c in entries:
        status = "ok"
        if c.qualified_name in broken:
            status = f"[red]broken[/]: {escape(broken[c.qualified_name])}"
        elif (c.kind, c.name) in duplicated:
            status = f"[yellow]duplicate name[/]: use '{c.qualified_name}'"
        table.add_row(c.kind, c.name, c.dist, c.version, status)
    console.print(table)
    restricted = registry.allowed_distributions()
    if restricted is not None:
        console.print(f"discovery limited to: {', '.join(sorted(restricted))} (environment)")


@app.command("doctor")
def doctor_command() -> None:
    """Load every plugin, check it against its protocol, and report problems with their fix.

    Exits with status 1 when something is broken.
    """
    from aecore.protocols import check_component_class  # noqa: F401  (imported by loading)

    problems: list[tuple[str, str, str]] = []
    checked = 0
    groups = [*registry.GROUPS.values(), *registry.OTHER_GROUPS]
    for group in groups:
        for entry in registry.entry_point_infos(group):
            checked += 1
            problem = _check_entry(entry)
            if problem:
                problems.append((f"{entry.kind} {entry.name}", entry.dist, problem))
    for (kind, name), entries in registry.duplicates().items():
        dists = ", ".join(e.dist for e in entries)
        problems.append(
            (f"{kind} {name}", dists, f"published by several distributions; name one as 'dist:{name}'")
        )
    if not problems:
        console.print(f"[green]all {checked} plugin entry points load and conform[/]")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(problems)} problem(s) in {checked} plugin entry points")
    for column in ("plugin", "distribution", "problem and fix"):
        table.add_column(column)
    for row in problems:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    raise typer.Exit(1)


def _check_entry(entry: registry.ComponentInfo) -> str | None:
    """Why ``entry`` cannot be used, or None when it loads and its parameters have working defaults."""
    import warnings

    from aecore.config import config_from_dict
    from aecore.errors import AecoreError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.PluginWarning)
        try:
            obj = entry.load()
        except AecoreError as exc:
            return str(exc)
    if entry.kind in registry.GROUPS:
        try:
            config_from_dict(obj.Config, {})
        except AecoreError as exc:
            return f"its parameters have no working defaults ({exc}); fix the Config in {entry.dist}."
    if entry.kind == "preset":
        from aecore.presets import Preset

        if not isinstance(obj, Preset):
            return f"it is a {type(obj).__name__}, not an aecore Preset; fix the entry point in {entry.dist}."
    return None


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Component name, optionally 'dist:name'.")],
) -> None:
    """Show a component's parameters: type, default and help."""
    from rich.table import Table

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


app.command("new")(scaffold.new_command)
