"""Command-line options generated from a typed dataclass, the way ``--set`` comes from a ``Config``.

:func:`options_from` decorates a command function so that it takes one
option per field of the dataclass (``ae train``'s from
:class:`aecore.RunRequest`), with the field's help and default, and receives
only the values the user actually gave: defaults live in the dataclass
alone. Field types map to options as:

- ``int``, ``float``, ``str``, ``bool`` (a ``--x/--no-x`` switch): as they are;
- ``Literal[...]``: text, checked against the choices by the dataclass;
- a tuple: comma-separated text, or a repeatable option where the field
  says ``repeat=True``;
- a ``dict[str, dict]`` table: repeatable ``TARGET.KEY=VALUE`` items.

A ``Literal`` field completes its choices in the shell; other fields take a
completer through ``options_from(..., complete=...)``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

from aecore.config import ParamSpec, params_of
from aecore.errors import ConfigError

__all__ = ["given_values", "options_from", "parse_set_items"]


def options_from(
    config_cls: type,
    *,
    exclude: Iterable[str] = (),
    complete: Mapping[str, Callable[[str], list[Any]]] | None = None,
) -> Callable[[Callable[..., Any]], Any]:
    """Give ``fn(ctx, values, **own)`` one option per field of ``config_cls`` besides its own.

    ``values`` maps field names to what the command line gave (strings and
    numbers, ready for ``config_from_dict``); fields not given are absent.
    ``complete`` maps a field to its shell completer (``incomplete ->
    candidates``, see :mod:`aecore.cli.completion`); a ``Literal`` field
    completes its choices without one.
    """
    specs = [s for s in params_of(config_cls) if s.name not in set(exclude)]
    completers = dict(complete or {})

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(fn).parameters.values())[2:]  # after (ctx, values)

        @functools.wraps(fn)
        def command(ctx: typer.Context, **kwargs: Any) -> Any:
            values = given_values(ctx, specs, kwargs)
            return fn(ctx, values, **{p.name: kwargs[p.name] for p in own})

        generated = [_option(s, completers.get(s.name)) for s in specs]
        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        own_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        hints = _own_hints(fn, own)
        own_params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own_params]
        parameters = [context, *generated, *own_params]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        del command.__wrapped__  # type: ignore[attr-defined]  # the signature above is the one that counts
        return command

    return decorate


def given_values(ctx: Any, specs: Iterable[ParamSpec], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The values of ``specs`` that the command line set, converted for ``config_from_dict``."""
    values: dict[str, Any] = {}
    for spec in specs:
        source = ctx.get_parameter_source(spec.name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = kwargs[spec.name]
        base = _base(spec.type)
        if get_origin(base) is dict:
            value = parse_set_items(value or [], (spec.flags or (f"--{spec.name}",))[0])
        elif spec.repeat:
            value = tuple(value or ())
        values[spec.name] = value
    return values


def _option(spec: ParamSpec, completer: Callable[[str], list[Any]] | None = None) -> inspect.Parameter:
    base = _base(spec.type)
    origin = get_origin(base)
    dashed = spec.name.replace("_", "-")
    flags = spec.flags or ((f"--{dashed}/--no-{dashed}",) if base is bool else (f"--{dashed}",))
    help_text = spec.help
    default: Any = spec.default
    show: Any = True
    if origin is dict or spec.repeat:
        annotation: Any = list[str] | None
        default, show = None, False
    elif origin is tuple:
        annotation = str | None
        show = ",".join(map(str, default)) if default else False
        default = None
    elif origin is Literal:
        annotation = str
        help_text = f"{help_text} One of: {', '.join(map(str, get_args(base)))}."
        completer = completer or _choices(tuple(map(str, get_args(base))))
    elif base in (bool, int, float, str):
        annotation = base if spec.type is base else base | None
    else:
        raise TypeError(f"field '{spec.name}' of type {spec.type!r} has no command-line form")
    option = typer.Option(*flags, help=help_text, show_default=show, autocompletion=completer)
    return inspect.Parameter(
        spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, option]
    )


def _choices(values: tuple[str, ...]) -> Callable[[str], list[Any]]:
    def complete(incomplete: str) -> list[Any]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _base(tp: Any) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) is not None and len(args) == 1 and len(get_args(tp)) == 2 else tp


def parse_set_items(items: list[str], flag: str = "--set") -> dict[str, dict[str, str]]:
    """``["encoder.channels=32,64", ...]`` as ``{"encoder": {"channels": "32,64"}}`` (values stay text).

    ``flag`` names the option in the error for a malformed item.
    """
    table: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        target, dot, name = key.strip().partition(".")
        if not sep or not dot or not target or not name:
            raise ConfigError(
                f"{flag} expects TARGET.PARAM=VALUE (for example encoder.channels=32,64), got '{item}'."
            )
        table.setdefault(target, {})[name] = value
    return table


def _own_hints(fn: Callable[..., Any], own: list[inspect.Parameter]) -> dict[str, Any]:
    """The command's own parameters' annotations, evaluated (they may be strings)."""
    import typing

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:
        return {}
    return {p.name: hints[p.name] for p in own if p.name in hints}
