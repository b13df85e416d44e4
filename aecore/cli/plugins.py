"""``ae plugins``: what is installed, what each plugin accepts, and whether it works."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from aecore import registry
from aecore.cli import scaffold
from aecore.cli.output import console
from aecore.errors import UnknownComponentError, suggest

app = typer.Typer(
    help="List, show and check installed plugins.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
)


@app.command("list")
def list_command(
    kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(registry.KINDS)}.")] = None,
    pattern: Annotated[
        str | None, typer.Argument(help="Shell-style name filter, e.g. 'c*' (default: all).")
    ] = None,
) -> None:
    """List plugins by kind, name, distribution and version (imports no plugin).

    A plugin whose last load failed is shown as broken; 'ae plugins doctor' loads and checks them all.
    """
    from rich.markup import escape
    from rich.table import Table

    entries = registry.list_components(kind, pattern or "*")
    broken = registry.known_broken()
    duplicated = set(registry.duplicates())
    table = Table(title="aecore plugins")
    for column in ("kind", "name", "distribution", "version", "status"):
        table.add_column(column)
    for c in entries:
        status = "ok"
        reason = broken.get(f"{c.kind}:{c.qualified_name}")
        if reason is not None:
            status = f"[red]broken[/]: {escape(reason)}"
        elif (c.kind, c.name) in duplicated:
            status = f"[yellow]duplicate name[/]: use '{c.qualified_name}'"
        table.add_row(c.kind, c.name, c.dist, c.version, status)
    console.print(table)
    restricted = registry.allowed_distributions()
    if restricted is not None:
        console.print(f"discovery limited to: {', '.join(sorted(restricted))} (environment)")


@app.command("doctor")
def doctor_command() -> None:
    """Load every plugin, check it against its contract, and report problems with their fix.

    Exits with status 1 when something is broken.
    """
    problems: list[tuple[str, str, str]] = []
    entries = registry.list_components()
    for entry in entries:
        problem = _check_entry(entry)
        if problem:
            problems.append((f"{entry.kind} {entry.name}", entry.dist, problem))
    for (kind, name), copies in registry.duplicates().items():
        dists = ", ".join(e.dist for e in copies)
        problems.append(
            (f"{kind} {name}", dists, f"published by several distributions; name one as 'dist:{name}'")
        )
    if not problems:
        console.print(f"[green]all {len(entries)} plugin entry points load and conform[/]")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(problems)} problem(s) in {len(entries)} plugin entry points")
    for column in ("plugin", "distribution", "problem and fix"):
        table.add_column(column)
    for row in problems:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    raise typer.Exit(1)


def _check_entry(entry: registry.PluginInfo) -> str | None:
    """Why ``entry`` cannot be used, or None when it loads and conforms."""
    import warnings

    from aecore.config import config_from_dict
    from aecore.errors import AecoreError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.PluginWarning)
        try:
            obj = entry.load()
        except AecoreError as exc:
            return str(exc)
    config = getattr(obj, "Config", None)
    if isinstance(obj, type) and config is not None:
        try:
            config_from_dict(config, {})
        except AecoreError as exc:
            return f"its parameters have no working defaults ({exc}); fix the Config in {entry.dist}."
    if entry.kind == "hook":
        return _check_hook(obj)
    return None


def _check_hook(obj: Any) -> str | None:
    """Register the hook in a fresh manager: pluggy checks names and arguments against the specification."""
    import pluggy

    from aecore.hooks.manager import check_plugin

    try:
        check_plugin(obj() if isinstance(obj, type) else obj)
    except pluggy.PluginValidationError as exc:
        return f"its hooks do not match the hook specification ({exc}); see 'ae plugins show' of a hook."
    except Exception as exc:  # its constructor failed
        return f"it could not be created ({type(exc).__name__}: {exc})."
    return None


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Plugin name, optionally 'dist:name'.")],
) -> None:
    """Show a plugin: its parameters (type, default and help) and what it is."""
    from rich.table import Table

    from aecore.config import params_of

    matches = registry.find(name)
    if not matches:
        every = {c.name for c in registry.list_components()}
        raise UnknownComponentError(
            f"no plugin named '{name}'.{suggest(name.rpartition(':')[2], every)} "
            "Run 'ae plugins list' to see what is installed."
        )
    for info in matches:
        obj = info.load()
        title = f"{info.kind} [bold]{info.name}[/] · {info.dist} {info.version}"
        config = getattr(obj, "Config", None)
        if isinstance(obj, type) and dataclasses.is_dataclass(config):
            table = Table(title=title, title_justify="left")
            for column in ("parameter", "type", "default", "help"):
                table.add_column(column)
            for spec in params_of(config):
                default = "required" if spec.required else _show(spec.default)
                table.add_row(spec.name, spec.type_name, default, spec.help)
            console.print(table)
        else:
            console.print(title)
        for line in _describe(info, obj):
            console.print(f"  {line}")
        console.print()


def _describe(info: registry.PluginInfo, obj: Any) -> list[str]:
    """A few lines on what a plugin is: its summary, and for presets their recipe."""
    lines = []
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    if info.kind == "preset":
        parts = [obj.encoder, *([obj.decoder] if obj.decoder else []), *obj.regularizers]
        lines.append(f"{obj.description} ({' + '.join(parts)}, code {obj.latent_dim})")
    elif doc:
        lines.append(doc[0])
    if info.kind == "hook":
        hooks = sorted(n for n in dir(obj) if n.startswith("ae_") and callable(getattr(obj, n)))
        lines.append(f"implements: {', '.join(hooks) or 'no hooks'}")
    return lines


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


app.command("new")(scaffold.new_command)
