"""The Typer application and its error boundary.

Every failure the user can fix (an unknown name, a bad value, a missing
file, a wrong option) leaves as one line on stderr with exit code 2.
"""

from __future__ import annotations

import copy
import inspect
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.main import get_command_name
from typer.models import CommandInfo

from aecore.cli import analyse_apply, analyse_data, analyse_visual, bench, evaluate, plugins, presets, train
from aecore.cli.lazy_coercion import defer_typer_coercion
from aecore.cli.output import fail_line
from aecore.errors import AecoreError

defer_typer_coercion()


class AeGroup(TyperGroup):
    """A command group whose errors are one line, never a traceback or a panel."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except AecoreError as exc:
            fail_line(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            fail_line("interrupted.")
            sys.exit(130)
        except typer.Abort:
            fail_line("aborted.")
            sys.exit(1)
        except typer.TyperException as exc:  # Click's usage errors, re-exported by Typer
            if type(exc).__name__ == "NoArgsIsHelpError":  # `ae` or `ae plugins` alone: the help
                typer.echo(exc.ctx.get_help())  # type: ignore[attr-defined]
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            fail_line(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2))
        if rv == 130:  # Typer turns Ctrl-C into exit code 130 before we see it
            fail_line("interrupted.")
        sys.exit(rv if isinstance(rv, int) else 0)


def _new_app() -> typer.Typer:
    """The root ``ae`` application with its own options and no commands yet."""
    root = typer.Typer(
        cls=AeGroup,
        rich_markup_mode=None,
        name="ae",
        help="aecore: train, compose and inspect autoencoders built from plugins.",
        no_args_is_help=True,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    root.callback()(_root)
    return root


def _version(value: bool) -> None:
    if value:
        from aecore import __version__

        typer.echo(f"aecore {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """aecore: train, compose and inspect autoencoders built from plugins."""


#: The whole application (the CLI reference, the tests and ``python -m aecore`` use it).
app = _new_app()
app.command("train", epilog=train.EPILOG)(train.train_command)
app.command("eval")(evaluate.eval_command)
app.command("presets")(presets.presets_command)
app.command("bench")(bench.bench_command)
app.add_typer(plugins.app, name="plugins")
for _module in (analyse_data, analyse_visual, analyse_apply):
    _module.register(app)


def app_for(args: list[str]) -> typer.Typer:
    """The application to run for these arguments: only what they can reach.

    Typer turns every registered command into a Click command (reading each
    signature and its type hints) on every call, about 20-30 ms for all of
    ``ae``'s, while one call runs one command. The root's own options take no
    value, so the first argument that is not an option names the command, and
    only that one is registered. With no name, ``ae`` or ``ae --help`` lists the
    commands, which needs their names and help but not their options. A name
    that is no command gets the whole application, for the error and its
    close-match suggestion.
    """
    name = next((arg for arg in args if not arg.startswith("-")), None)
    if name is None:
        return _listing_app()
    single = _new_app()
    single.registered_commands = [c for c in app.registered_commands if _name(c) == name]
    single.registered_groups = [g for g in app.registered_groups if g.name == name]
    return single if single.registered_commands or single.registered_groups else app


def _name(command: CommandInfo) -> str:
    return command.name or get_command_name(command.callback.__name__)  # type: ignore[union-attr]


def _listed_only() -> None:
    """Stands in for a command's function where only its name and help are shown."""


def _listing_app() -> typer.Typer:
    """The application with each command's help but none of its options (for the command list)."""
    listing = _new_app()
    for command in app.registered_commands:
        stub = copy.copy(command)
        stub.name, stub.callback = _name(command), _listed_only
        stub.help = command.help if command.help is not None else inspect.getdoc(command.callback)
        listing.registered_commands.append(stub)
    for group in app.registered_groups:
        stub_group = copy.copy(group)
        stub_group.typer_instance = copy.copy(group.typer_instance)
        stub_group.typer_instance.registered_commands = []  # type: ignore[union-attr]
        stub_group.typer_instance.registered_groups = []  # type: ignore[union-attr]
        listing.registered_groups.append(stub_group)
    return listing


def main() -> None:
    """Console-script entry point for ``ae``."""
    app_for(sys.argv[1:])()
