"""The ``ae`` command: a group whose command table is the ``aecore.commands`` entry points.

Listing the commands (``ae --help``, shell completion) reads entry-point
metadata and each command's one-line help from its source file, statically:
no plugin is imported, and neither is torch. A command is imported when it
is run. aecore's own commands (train, eval, inspect, presets, plugins) are
entry points of the same group, so a third party's ``ae mycommand`` is
listed and run exactly like them.

Every failure the user can fix leaves as one line on stderr with exit code
2; a broken command plugin breaks only itself.

``ae --install-completion`` / ``--show-completion`` install or print the
completion script of the shell (:mod:`aecore.cli.completion`); a completion
runs through Typer's machinery with the same lazy command table.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from aecore import registry
from aecore.cli import interrupts
from aecore.cli.help import command_help
from aecore.cli.output import fail_line, warning_line
from aecore.errors import AecoreError, AmbiguousComponentError, Notice, UnknownComponentError, suggest
from aecore.paths import report_failure

__all__ = ["AeGroup", "app", "main", "to_click"]

HELP = "aecore: train, compose and inspect autoencoders built from plugins."


class AeGroup(TyperGroup):
    """The root group: commands come from entry points, are listed from metadata and load on use."""

    _listing = False
    _broken: dict[str, str] | None = None

    def list_commands(self, ctx: Any) -> list[str]:
        return registry.names("command")

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if self._listing:
            return self._stub(cmd_name)
        try:
            entry = registry.info("command", cmd_name)
        except AmbiguousComponentError:
            raise
        except UnknownComponentError:
            if ctx.resilient_parsing:
                return None
            names = registry.names("command")
            raise UnknownComponentError(
                f"no command '{cmd_name}'.{suggest(cmd_name, names)} Commands: {', '.join(names)} "
                "(see 'ae --help')."
            ) from None
        command = to_click(entry.load(), entry.name)
        if ctx.resilient_parsing:  # completing: names for the parameters other modules declare
            from aecore.cli.completion import attach

            attach(command, (entry.name,))
        return command

    def _stub(self, name: str) -> Any:
        """A command carrying only the name and one-line help that the metadata gives."""
        entries = [e for e in registry.every("command") if e.name == name]
        if not entries:
            return None
        if len(entries) > 1:
            text = f"(provided by {' and '.join(e.dist for e in entries)}; run 'ae DIST:{name}')"
        else:
            if self._broken is None:
                self._broken = registry.known_broken()
            text = command_help(entries[0], self._broken)
        return TyperCommand(name=name, help=text, callback=None)

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        """Within this block, commands are metadata stand-ins: nothing is imported."""
        self._listing, self._broken = True, None
        try:
            yield
        finally:
            self._listing = False

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with self.listing():
            super().format_commands(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> Any:
        with self.listing():
            return super().shell_complete(ctx, incomplete)

    def _main_shell_completion(self, ctx_args: Any, prog_name: str, complete_var: str | None = None) -> None:
        """Typer's completion, with its bash, zsh and fish formats registered first (only when asked)."""
        if os.environ.get(complete_var or f"_{prog_name}_COMPLETE".replace("-", "_").upper()):
            from typer.completion import completion_init

            completion_init()
        super()._main_shell_completion(ctx_args, prog_name, complete_var)

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        if not extra.get("standalone_mode", True):
            return super().main(args, prog_name, **extra)
        extra["standalone_mode"] = False
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            rv = super().main(args, prog_name, **extra)
        except AecoreError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted.", 130)
        except typer.Abort:
            _fail("aborted.", 1)
        except Exception as exc:
            if isinstance(exc, OSError) and _file_system_fault(exc):  # a full disk, a read-only folder...
                from aecore.io import file_system_error

                _fail(str(file_system_error(exc, action="use")), 2)
            if not _is_usage_error(exc):
                if report_failure("".join(traceback.format_exception(exc)), 1):  # under --nproc
                    sys.exit(1)
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # `ae` or `ae plugins` alone: the help
                typer.echo(exc.ctx.get_help())  # type: ignore[attr-defined]
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{exc.format_message()}{hint}", getattr(exc, "exit_code", 2))  # type: ignore[attr-defined]
        finally:
            warnings.showwarning = previous
        if rv == 130:  # Typer turns Ctrl-C into exit code 130 before we see it
            _fail("interrupted.", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    """Leave with ``message`` as one line on stderr."""
    _say(message, code)
    sys.exit(code)


def _say(message: str, code: int) -> None:
    """``message`` as one line on stderr; in a process of ``ae train --nproc``, for the launcher to print."""
    if not report_failure(interrupts.fail_text(message), code):
        fail_line(message)


def _file_system_fault(exc: OSError) -> bool:
    from aecore.io import FILE_SYSTEM_ERRNOS

    return exc.errno in FILE_SYSTEM_ERRNOS


def _is_usage_error(exc: BaseException) -> bool:
    """A Click usage error (a bad option, a missing argument), whichever Click Typer uses."""
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


def _show_warning(message: Any, category: type, filename: str, lineno: int, *rest: Any, **kw: Any) -> None:
    """aecore's notices as one line each; everything else as Python shows it."""
    if issubclass(category, Notice):
        warning_line(str(message))
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))


def to_click(obj: Any, name: str) -> Any:
    """A Click command from what an ``aecore.commands`` entry point names.

    That is a function (made a command by Typer, its docstring the help), a
    ``typer.Typer`` application, or a command object of Typer's Click.
    """
    if isinstance(obj, typer.Typer):
        command = typer.main.get_command(obj)
    elif callable(getattr(obj, "make_context", None)) and callable(getattr(obj, "invoke", None)):
        command = obj
    else:
        single = typer.Typer(rich_markup_mode=None, add_completion=False)
        single.command(name=name, epilog=getattr(obj, "epilog", None))(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


def _version(value: bool) -> None:
    if value:
        from aecore.entry_points import installed_version

        typer.echo(f"aecore {installed_version('aecore')}")
        raise typer.Exit()


def _show_completion(value: bool) -> None:
    if value:
        from aecore.cli.completion import completion_script, detect_shell

        typer.echo(completion_script(detect_shell()))
        raise typer.Exit()


def _install_completion(value: bool) -> None:
    if value:
        from aecore.cli.completion import detect_shell, install

        shell = detect_shell()
        path = install(shell)
        typer.echo(f"{shell} completion for ae installed in {path}; it takes effect in a new shell.")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    install_completion: Annotated[
        bool,
        typer.Option(
            "--install-completion",
            callback=_install_completion,
            is_eager=True,
            expose_value=False,
            help="Install completion for the shell this runs in (bash, zsh or fish), else for $SHELL's.",
        ),
    ] = False,
    show_completion: Annotated[
        bool,
        typer.Option(
            "--show-completion",
            callback=_show_completion,
            is_eager=True,
            expose_value=False,
            help="Print the completion script for this shell, to install it by hand.",
        ),
    ] = False,
) -> None:
    """aecore: train, compose and inspect autoencoders built from plugins."""


#: The root application (``python -m aecore`` and the tests use it).
app = typer.Typer(
    cls=AeGroup,
    rich_markup_mode=None,
    name="ae",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(_root)


def main() -> None:
    """Console-script entry point for ``ae``: Ctrl-C at any moment is one line and exit code 130."""
    interrupts.begin_command()
    code = 130
    try:
        try:
            app()
            code = 0
        except SystemExit as exc:
            code = _exit_status(exc)
        finally:
            interrupts.command_over()  # from here on, Ctrl-C ends the process at once
    except KeyboardInterrupt:  # one that came after the command's own handling
        _say("interrupted.", 130)
        code = 130
    code = interrupts.end_command(code)
    if interrupts.console_process():
        interrupts.exit_process(code)
    sys.exit(code)


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    sys.stderr.write(f"{exc.code}\n")  # sys.exit("message"), as Python would print it
    return 1
