"""Typed parameters, declared once.

A component, a data source or a run request declares its parameters as a
frozen dataclass whose fields use :func:`param`. Everything else derives
from that one declaration: ``--set`` parsing and generated CLI options,
``ae plugins show``, validation, and the JSON stored in checkpoints. This
module imports nothing heavy, so the CLI can describe parameters without
importing torch.

Supported field types: ``int``, ``float``, ``bool``, ``str``,
``typing.Literal[...]``, ``tuple[int | float | str, ...]``,
``dict[str, ...]`` (JSON tables) and ``X | None`` of any of those.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from aecore.errors import ConfigError, suggest

__all__ = ["ParamSpec", "config_from_dict", "config_to_dict", "param", "params_of", "parse_value"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def param(
    default: Any,
    help: str,  # noqa: A002 - "help" is the natural name
    *,
    flags: tuple[str, ...] = (),
    repeat: bool = False,
) -> Any:
    """A config field with a default and a one-line help text.

    ``flags`` and ``repeat`` only matter where a command line is generated
    from the dataclass (``ae train`` from the run request): the option names
    (default ``--field-name``), and whether the option may be given several
    times (a tuple field), instead of once with comma-separated items.
    """
    metadata = {"help": help, "flags": flags, "repeat": repeat}
    if isinstance(default, dict | list | set):  # a fresh copy for every instance
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: what ``ae plugins show`` prints and the CLI generates."""

    name: str
    type: Any
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    repeat: bool = False

    @property
    def type_name(self) -> str:
        return _type_name(self.type)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        base, _ = _unwrap_optional(self.type)
        return get_args(base) if get_origin(base) is Literal else None

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def params_of(config_cls: type) -> list[ParamSpec]:
    """The declared parameters of a config dataclass, in declaration order."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    hints = typing.get_type_hints(config_cls)
    specs = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        specs.append(
            ParamSpec(
                f.name,
                hints[f.name],
                default,
                f.metadata.get("help", ""),
                tuple(f.metadata.get("flags", ())),
                bool(f.metadata.get("repeat", False)),
            )
        )
    return specs


def parse_value(spec: ParamSpec, text: str) -> Any:
    """Parse a command-line string (``"32,64"``, ``"relu"``, ``"1e-3"``) for ``spec``."""
    return _parse(spec.type, text.strip(), spec.name)


def config_from_dict(config_cls: type, values: Mapping[str, Any], *, owner: str = "") -> Any:
    """Build and validate a config from JSON-like values or command-line strings.

    Unknown keys and ill-typed values raise :class:`ConfigError` naming the
    parameter, the expected type and the fix. A ``ValueError`` raised by the
    config's own ``__post_init__`` becomes a ``ConfigError`` too.
    """
    specs = {s.name: s for s in params_of(config_cls)}
    where = f"{owner}." if owner else ""
    kwargs = {}
    for key, value in values.items():
        if key not in specs:
            known = ", ".join(specs) or "none"
            raise ConfigError(
                f"unknown parameter '{where}{key}'.{suggest(str(key), specs)} Known parameters: {known}."
            )
        spec = specs[key]
        if isinstance(value, str) and spec.type is not str:
            kwargs[key] = _parse(spec.type, value.strip(), where + key)
        else:
            kwargs[key] = _coerce(spec.type, value, where + key)
    missing = [n for n, s in specs.items() if s.required and n not in kwargs]
    if missing:
        raise ConfigError(f"missing required parameter(s): {', '.join(where + m for m in missing)}.")
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid {owner or config_cls.__name__} parameters: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON values (tuples become lists)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


# -- internals ---------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    origin = get_origin(base)
    if origin is Literal:
        name = "|".join(str(a) for a in get_args(base))
    elif origin is tuple:
        name = f"{_type_name(get_args(base)[0])} list"
    elif origin is dict:
        name = "table"
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or none" if optional else name


def _bad(name: str, tp: Any, value: Any, detail: str = "") -> ConfigError:
    extra = f" ({detail})" if detail else ""
    return ConfigError(f"bad value {value!r} for '{name}': expected {_type_name(tp)}{extra}.")


def _number(base: type, value: Any, name: str) -> Any:
    if base is float and not math.isfinite(value):
        raise _bad(name, base, value, "a finite number")
    return value


def _parse(tp: Any, text: str, name: str) -> Any:
    base, optional = _unwrap_optional(tp)
    if optional and text.lower() in {"none", "null", ""}:
        return None
    origin = get_origin(base)
    if origin is tuple:
        item_type = get_args(base)[0]
        parts = [p for p in text.replace(" ", "").strip("()[]").split(",") if p]
        try:
            return tuple(_parse(item_type, p, name) for p in parts)
        except ConfigError:
            raise _bad(name, base, text, "comma-separated, e.g. 32,64") from None
    if origin is Literal:
        for choice in get_args(base):
            if str(choice) == text:
                return choice
        raise _bad(name, base, text, f"choose one of {', '.join(map(str, get_args(base)))}")
    if base is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _bad(name, base, text, "use true or false")
    if base in (int, float):
        try:
            return _number(base, base(text), name)
        except (ValueError, OverflowError):
            raise _bad(name, base, text) from None
    if base is str:
        return text
    raise ConfigError(f"parameter '{name}' cannot be given as text; set it from Python or a config file.")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise _bad(name, tp, value)
    origin = get_origin(base)
    if origin is tuple:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise _bad(name, tp, value)
        item_type = get_args(base)[0]
        return tuple(_coerce(item_type, v, name) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _bad(name, tp, value, "a table with text keys")
        item_type = get_args(base)[1]
        return {k: v if item_type is Any else _coerce(item_type, v, f"{name}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value in get_args(base):
            return value
        raise _bad(name, base, value, f"choose one of {', '.join(map(str, get_args(base)))}")
    if base is Any:
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _bad(name, base, value)
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(name, base, value)
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _number(float, float(value), name)
        raise _bad(name, base, value)
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a path given from Python, for a path option
            return os.fspath(value)
        raise _bad(name, base, value)
    raise ConfigError(f"parameter '{name}' has an unsupported type {tp!r}.")
