"""Shell completion for ``ae``: the scripts for bash, zsh and fish, and the names to offer.

Typer's completion machinery does the work (its scripts call
``_AE_COMPLETE=complete_bash ae ...``, and Click finds the parameter being
completed); this module says what the candidates are. Plugin names come
from entry-point metadata through :mod:`aecore.registry`, so a completion
imports no plugin and not torch: one <TAB> costs a fraction of an
``import torch`` (``python -m benchmarks.completion`` measures it).

:data:`RUN_REQUEST` gives ``ae train``'s generated options their completers
(by field of :class:`aecore.RunRequest`); :func:`attach` gives them to
parameters of commands declared elsewhere (``ae plugins show NAME``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aecore import registry
from aecore.errors import ConfigError

__all__ = [
    "COMPLETE_VAR",
    "PROG_NAME",
    "RUN_REQUEST",
    "SHELLS",
    "attach",
    "completion_script",
    "detect_shell",
    "install",
    "kind_completer",
    "plugin_names",
]

PROG_NAME = "ae"
#: The variable the scripts set to ask ``ae`` for candidates (Typer's instruction style, ``complete_bash``).
COMPLETE_VAR = "_AE_COMPLETE"
SHELLS = ("bash", "zsh", "fish")

#: A completer: the word being completed -> the candidates (what Typer's ``autocompletion`` takes).
Completer = Callable[[str], list[str]]


def plugin_names(kinds: Iterable[str], incomplete: str = "", extra: Iterable[str] = ()) -> list[str]:
    """Names of installed plugins of ``kinds`` starting with ``incomplete``, from metadata only.

    A name two distributions provide is offered qualified (``dist:name``) as
    well; once the word holds a ``:``, only qualified names are. ``extra``
    values (``auto``, ``none``) come first. No help text goes with them:
    Typer renders help for zsh and fish through Rich, which would double
    the time a <TAB> takes.
    """
    dists: dict[str, set[str]] = {}
    for kind in kinds:
        for entry in registry.every(kind):
            dists.setdefault(entry.name, set()).add(entry.dist)
    found = list(dict.fromkeys(extra))
    for name, providers in sorted(dists.items()):
        qualified = [f"{d}:{name}" for d in sorted(providers)]
        if ":" in incomplete:
            found += qualified
        else:
            found += [name, *(qualified if len(providers) > 1 else ())]
    return [c for c in found if c.startswith(incomplete)]


def kind_completer(*kinds: str, extra: Iterable[str] = ()) -> Completer:
    """A completer (``incomplete -> candidates``) of the names of ``kinds``: Typer's ``autocompletion``."""
    fixed = tuple(extra)

    def complete(incomplete: str) -> list[str]:
        return plugin_names(kinds, incomplete, fixed)

    complete.__name__ = f"complete_{'_'.join(kinds)}"
    return complete


def _choices(*values: str) -> Completer:
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


#: Completers for the fields of :class:`aecore.RunRequest` that take a name (``--encoder`` ...).
#: Fields typed ``Literal[...]`` complete their choices without an entry here.
RUN_REQUEST: Mapping[str, Completer] = {
    "encoder": kind_completer("encoder"),
    "decoder": kind_completer("decoder"),
    "regularizers": kind_completer("regularizer"),
    "preset": kind_completer("preset"),
    "trainer": kind_completer("trainer"),
    "loss": kind_completer("loss"),
    "data": kind_completer("dataset"),
    "backend": kind_completer("backend", extra=("auto", "none")),
    "device": _choices("auto", "cpu", "cuda", "mps"),
}

#: Completers for parameters of commands this module does not declare, by command path.
_ELSEWHERE: Mapping[tuple[str, ...], Mapping[str, Completer]] = {
    ("plugins", "show"): {"name": kind_completer(*registry.KINDS)},
    ("plugins", "list"): {"kind": _choices(*registry.KINDS)},
}


def attach(command: Any, path: tuple[str, ...]) -> None:
    """Give the parameters of ``command`` (at ``path``, e.g. ``("plugins",)``) their completers.

    Only parameters without a completion of their own get one, and only
    while completing (the root group calls this for a command it loads
    then), so a command's own ``autocompletion=`` always wins.
    """
    for param in getattr(command, "params", ()):
        completer = _ELSEWHERE.get(path, {}).get(param.name)
        if completer is not None and getattr(param, "_custom_shell_complete", None) is None:
            param._custom_shell_complete = _click_completer(param, completer)
    for name, sub in getattr(command, "commands", {}).items():
        attach(sub, (*path, name))


def _click_completer(param: Any, completer: Completer) -> Callable[[Any, Any, str], list[Any]]:
    """``completer`` in the form Click calls, with the ``CompletionItem`` of the Click ``param`` is from."""
    base = next(c for c in type(param).__mro__ if c.__name__ == "Parameter")
    package = base.__module__.rpartition(".")[0]  # click or typer._click, whichever Typer uses
    item = importlib.import_module(f"{package}.shell_completion").CompletionItem

    def complete(ctx: Any, param: Any, incomplete: str) -> list[Any]:
        return [item(value) for value in completer(incomplete)]

    return complete


# -- scripts -----------------------------------------------------------------


def detect_shell() -> str:
    """The shell ``ae`` runs in (its parent processes), else the login shell ``$SHELL`` names."""
    name = _running_shell() or Path(os.environ.get("SHELL", "")).name
    if not name:
        raise ConfigError(
            "cannot tell which shell this is, and SHELL is not set; run the command from the shell "
            "to complete in, or set SHELL (e.g. SHELL=/bin/zsh)."
        )
    return _check_shell(name.lower())


def completion_script(shell: str) -> str:
    """The script that makes ``shell`` complete ``ae`` (what ``ae --show-completion`` prints)."""
    from typer.completion import get_completion_script

    return get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=_check_shell(shell))


def install(shell: str) -> Path:
    """Install the script where ``shell`` loads it from (under ``$HOME``); returns the script's path.

    bash: ``~/.bash_completions/ae.sh``, sourced from ``~/.bashrc``; zsh:
    ``~/.zfunc/_ae``, with ``~/.zfunc`` added to ``fpath`` in ``~/.zshrc``;
    fish: ``~/.config/fish/completions/ae.fish``. Running it again rewrites
    the script and adds nothing twice to the rc files.
    """
    from typer.completion import install as typer_install

    _, path = typer_install(shell=_check_shell(shell), prog_name=PROG_NAME, complete_var=COMPLETE_VAR)
    return Path(path)


def _running_shell() -> str | None:
    try:
        import shellingham
    except ImportError:
        return None
    try:
        name, _ = shellingham.detect_shell()
    except (shellingham.ShellDetectionFailure, RuntimeError, OSError):
        return None
    return str(name) or None


def _check_shell(name: str) -> str:
    if name not in SHELLS:
        raise ConfigError(f"ae completes in {', '.join(SHELLS[:-1])} and {SHELLS[-1]}, not in '{name}'.")
    return name
