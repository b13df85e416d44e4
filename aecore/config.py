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

Numbers are checked wherever they come from (text, JSON, Python): a float
must be finite, an integer must fit a signed 64-bit integer (what torch
takes), and either must lie within the field's ``minimum`` / ``maximum``
when :func:`param` declares them (for a tuple, each item). An ``int`` field
named ``seed`` or ending in ``_seed`` is a random seed: unless it declares
bounds of its own, it must lie in ``[0, 2**63)``, which every random
generator torch and numpy have accepts.
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

__all__ = [
    "ParamSpec",
    "config_from_dict",
    "config_to_dict",
    "convert_value",
    "param",
    "params_of",
    "parse_value",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: The integers a config may hold: a signed 64-bit integer, as torch stores them.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def param(
    default: Any,
    help: str,  # noqa: A002 - "help" is the natural name
    *,
    flags: tuple[str, ...] = (),
    repeat: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    recorded: bool = True,
) -> Any:
    """A config field with a default and a one-line help text.

    ``flags`` and ``repeat`` only matter where a command line is generated
    from the dataclass (``ae train`` from the run request): the option names
    (default ``--field-name``), and whether the option may be given several
    times (a tuple field), instead of once with comma-separated items.
    ``minimum`` and ``maximum`` bound a number field (inclusive; for a tuple
    of numbers, every item), however the value is given. ``recorded=False``
    marks an option that says how to do something rather than what (a data
    source's ``download``): it is left out of the name a dataset is recorded
    and cached under.
    """
    metadata = {
        "help": help,
        "flags": flags,
        "repeat": repeat,
        "minimum": minimum,
        "maximum": maximum,
        "recorded": recorded,
    }
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
    minimum: float | None = None
    maximum: float | None = None
    recorded: bool = True

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """(lowest, highest) allowed number, either None for no bound of its own (see the module doc)."""
        if self.minimum is None and self.maximum is None and _is_seed(self.name, self.type):
            return 0, INT_MAX
        return self.minimum, self.maximum

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
                f.metadata.get("minimum"),
                f.metadata.get("maximum"),
                bool(f.metadata.get("recorded", True)),
            )
        )
    return specs


def parse_value(spec: ParamSpec, text: str) -> Any:
    """Parse a command-line string (``"32,64"``, ``"relu"``, ``"1e-3"``) for ``spec``."""
    return _parse(spec.type, text.strip(), spec.name, spec.bounds)


def convert_value(spec: ParamSpec, value: Any, *, name: str | None = None) -> Any:
    """``value`` for ``spec``: a string parsed as on the command line, else a JSON value checked.

    Raises :class:`ConfigError` naming ``name`` (default: the parameter's own).
    """
    where = spec.name if name is None else name
    if isinstance(value, str) and spec.type is not str:
        return _parse(spec.type, value.strip(), where, spec.bounds)
    return _coerce(spec.type, value, where, spec.bounds)


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
        kwargs[key] = convert_value(specs[key], value, name=where + key)
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


Bounds = tuple[float | None, float | None]
_NO_BOUNDS: Bounds = (None, None)


def _is_seed(name: str, tp: Any) -> bool:
    return (name == "seed" or name.endswith("_seed")) and _unwrap_optional(tp)[0] is int


def _bad(name: str, tp: Any, value: Any, detail: str = "") -> ConfigError:
    extra = f" ({detail})" if detail else ""
    shown = repr(value)
    if len(shown) > 40:  # a number of a thousand digits is not worth repeating whole
        shown = f"{shown[:20]}...{shown[-8:]}"
    return ConfigError(f"bad value {shown} for '{name}': expected {_type_name(tp)}{extra}.")


def _number(base: type, value: Any, name: str, bounds: Bounds) -> Any:
    """``value`` (already of type ``base``) once it is finite, fits int64 and lies within ``bounds``."""
    if base is float and not math.isfinite(value):
        raise _bad(name, base, value, "a finite number")
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        raise _bad(name, base, value, _range(low, high))
    if base is int and not INT_MIN <= value <= INT_MAX:
        raise _bad(name, base, value, f"{_range(INT_MIN, INT_MAX)}, a 64-bit integer")
    return value


def _range(low: float | None, high: float | None) -> str:
    def show(v: float) -> str:
        return "2**63-1" if v == INT_MAX else "-2**63" if v == INT_MIN else f"{v:g}"

    if low is not None and high is not None:
        return f"from {show(low)} to {show(high)}"
    return f"at least {show(low)}" if low is not None else f"at most {show(high)}"  # type: ignore[arg-type]


def _parse(tp: Any, text: str, name: str, bounds: Bounds = _NO_BOUNDS) -> Any:
    base, optional = _unwrap_optional(tp)
    if optional and text.lower() in {"none", "null", ""}:
        return None
    origin = get_origin(base)
    if origin is tuple:
        item_type = get_args(base)[0]
        parts = [p for p in text.replace(" ", "").strip("()[]").split(",") if p]
        try:
            items = tuple(_parse(item_type, p, name) for p in parts)
        except ConfigError:
            raise _bad(name, base, text, "comma-separated, e.g. 32,64") from None
        if item_type in (int, float):  # well formed; a number out of bounds is named on its own
            return tuple(_number(item_type, v, name, bounds) for v in items)
        return items
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
            number = base(text)
        except (ValueError, OverflowError):
            raise _bad(name, base, text) from None
        return _number(base, number, name, bounds)
    if base is str:
        return text
    raise ConfigError(f"parameter '{name}' cannot be given as text; set it from Python or a config file.")


def _coerce(tp: Any, value: Any, name: str, bounds: Bounds = _NO_BOUNDS) -> Any:
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
        return tuple(_coerce(item_type, v, name, bounds) for v in value)
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
            return _number(int, int(value), name, bounds)
        if isinstance(value, float) and value.is_integer():
            return _number(int, int(value), name, bounds)
        raise _bad(name, base, value)
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond any float
                raise _bad(name, base, value, "a finite number") from None
            return _number(float, number, name, bounds)
        raise _bad(name, base, value)
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a path given from Python, for a path option
            return os.fspath(value)
        raise _bad(name, base, value)
    raise ConfigError(f"parameter '{name}' has an unsupported type {tp!r}.")
