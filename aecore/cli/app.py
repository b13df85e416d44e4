"""The Typer application and its error boundary.

Every failure the user can fix (an unknown name, a bad value, a missing
file, a wrong option) leaves as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

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
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(0)  # Typer has printed the help already
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            fail_line(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2))
        if rv == 130:  # Typer turns Ctrl-C into exit code 130 before we see it
            fail_line("interrupted.")
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=AeGroup,
    rich_markup_mode=None,
    name="ae",
    help="aecore: train, compose and inspect autoencoders built from plugins.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from aecore import __version__

        typer.echo(f"aecore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """aecore: train, compose and inspect autoencoders built from plugins."""


app.command("train", epilog=train.EPILOG)(train.train_command)
app.command("eval")(evaluate.eval_command)
app.command("presets")(presets.presets_command)
app.command("bench")(bench.bench_command)
app.add_typer(plugins.app, name="plugins")
for _module in (analyse_data, analyse_visual, analyse_apply):
    _module.register(app)


def main() -> None:
    """Console-script entry point for ``ae``."""
    app()
