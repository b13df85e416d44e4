"""Write the CLI reference (docs/cli.md) from the installed ``ae`` commands, so it cannot drift.

    python docs/cli_reference.py --write docs/cli.md

It lists every command the ``aecore.commands`` entry points give, aecore's
and the shipped plugins'. A test regenerates it and compares it with the
committed file.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import typer.main

from aecore.cli.app import app

HEADER = """# CLI reference

Generated from the installed `ae` commands (aecore's and the shipped plugins') by
`python docs/cli_reference.py --write docs/cli.md`; do not edit by hand (a test fails when
this page and the commands disagree).
Every error a user can fix prints one line on stderr and exits with code 2.
"""


def _commands(group: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    ctx = typer.Context(group, info_name=prefix)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        path = f"{prefix} {name}"
        if hasattr(command, "list_commands"):
            yield from _commands(command, path)
        else:
            yield path, command


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render() -> str:
    root = typer.main.get_command(app)
    out = [HEADER]
    for path, command in _commands(root, "ae"):  # ae train, ..., ae plugins list
        out.append(f"## `{path}`\n")
        out.append(inspect.cleandoc(command.help or "") + "\n")
        args = [p for p in command.params if p.param_type_name == "argument"]
        opts = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
        usage = " ".join(
            [
                path,
                *(a.name.upper() if a.required else f"[{a.name.upper()}]" for a in args),
                "[OPTIONS]" if opts else "",
            ]
        ).strip()
        out.append(f"```\n{usage}\n```\n")
        rows = []
        for p in args + opts:
            names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            default = p.default if p.default not in (None, (), []) and not callable(p.default) else ""
            if isinstance(default, bool):
                default = str(default).lower() if default else ""
            repeat = " (repeatable)" if getattr(p, "multiple", False) else ""
            rows.append(f"| {names} | {_cell(getattr(p, 'help', '') or '')}{repeat} | {_cell(default)} |")
        if rows:
            out.append("| option | meaning | default |\n|---|---|---|")
            out.extend(rows)
            out.append("")
        if command.epilog:
            out.append(inspect.cleandoc(command.epilog) + "\n")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> None:
    """Print the reference, or write it with ``--write PATH``."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        from pathlib import Path

        Path(argv[1]).write_text(render())
    else:
        print(render(), end="")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
