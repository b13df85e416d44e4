"""Run files: the whole :class:`~aecore.RunRequest` as TOML, for ``ae train --config``.

The schema is the run request itself: every key is one of its fields
(``epochs = 5``, ``regularizers = ["sparse"]``) and ``params`` is a table
of tables (``[params.encoder]``, ``hidden = [64, 32]``). Nothing here
declares a field again: keys, types, defaults and help all come from
``params_of(RunRequest)``, so a new field is a new key the day it is added.

:func:`read_run_file` checks a file as the command line is checked (unknown
keys with a suggestion, ill-typed values), each error one line naming the
file and the key. :func:`merge_values` lays the options given on the command
line over it; :func:`request_toml` writes a request back (``--print-config``,
``ae inspect --config``) with a small writer for the values a request holds,
so no TOML library is needed to write.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from aecore.config import ParamSpec, convert_value, params_of
from aecore.errors import CheckpointError, ConfigError, suggest
from aecore.request import SHORTCUTS, RunRequest

__all__ = [
    "WHERE_FIELDS",
    "merge_values",
    "read_run_file",
    "reproducing_toml",
    "request_toml",
    "schema_table",
]

#: Fields that say where a run is written rather than what it is: a config that reproduces a
#: recorded run leaves them out, so the rerun gets a fresh directory instead of colliding.
WHERE_FIELDS = ("out", "overwrite")
#: A run file is a few hundred bytes; anything far larger is the wrong file (a dataset, say).
MAX_BYTES = 1 << 20


def read_run_file(path: str | Path) -> dict[str, Any]:
    """The run-request values a TOML file holds, each checked against :class:`~aecore.RunRequest`.

    The result holds only the keys the file sets (typed values, ready for
    :func:`merge_values` and ``RunRequest.from_values``). Every problem is a
    one-line :class:`~aecore.errors.ConfigError` naming the file: a missing or
    unreadable file, invalid TOML, an unknown key (with the likely one), a
    value of the wrong type or out of range.
    """
    path = Path(path)
    raw = _parse(path, _read_text(path))
    specs = {s.name: s for s in params_of(RunRequest)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        spec = specs.get(key)
        if spec is None:
            raise ConfigError(f"unknown key '{key}' in {path}.{_likely_key(key, specs)} {_SEE}")
        try:
            values[key] = convert_value(spec, value, name=key)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if values[key] is None and spec.default is not None:  # "" or "none": unset, which only Python can be
            fix = 'name a data source, e.g. data = "embedded"' if key == "data" else "give it a value"
            raise ConfigError(f"{path}: {key} is empty; {fix}.")
    try:
        RunRequest.from_values(values)  # the request's own checks (ranges across fields), named by file
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return values


def merge_values(file_values: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The file's values with the command line's laid over them, field by field.

    A field the command line gives replaces the file's whole value (``--reg``
    replaces the file's ``regularizers``); ``params`` merges per key, so
    ``--set encoder.hidden=64`` replaces only ``[params.encoder] hidden``. A
    trainer setting given on the command line in either spelling
    (``--epochs 3`` or ``--set trainer.epochs=3``) replaces the file's in
    either spelling too, rather than clashing with it.
    """
    merged = {k: v for k, v in file_values.items() if k != "params"}
    params = {str(t): dict(v) for t, v in file_values.get("params", {}).items()}
    given_params = {str(t): dict(v) for t, v in given.get("params", {}).items()}
    trainer = params.get("trainer", {})
    for name in SHORTCUTS:
        if given.get(name) is not None:
            trainer.pop(name, None)
        if name in given_params.get("trainer", {}):
            merged.pop(name, None)
    for target, items in given_params.items():
        params[target] = {**params.get(target, {}), **items}
    merged.update({k: v for k, v in given.items() if k != "params"})
    if params or "params" in file_values or "params" in given:
        merged["params"] = params
    return merged


def request_toml(
    values: Mapping[str, Any],
    *,
    header: str = "",
    reproduce: bool = False,
    notes: Mapping[str, str] | None = None,
) -> str:
    """A run request (``RunRequest.to_dict()`` values) as the TOML ``ae train --config`` reads.

    Every field is written, defaults included, in declaration order, so the
    file says everything the run was given; a field that is not set (None:
    TOML has no null) is a comment. ``reproduce=True`` comments out
    :data:`WHERE_FIELDS` too: the file then trains the same run again in a
    new directory. ``header`` lines become comments at the top, ``notes``
    a comment above their key.
    """
    lines = _comments(header)
    params: Mapping[str, Any] = {}
    for spec in params_of(RunRequest):
        value = values.get(spec.name, spec.default)
        lines += _comments((notes or {}).get(spec.name, ""))
        if spec.name == "params":
            params = value or {}
            continue
        if reproduce and spec.name in WHERE_FIELDS and value is not None:
            shown = _value(value, spec.name)
            lines.append(
                f"# {spec.name} = {shown}  (the recorded run's; a rerun gets a directory of its own)"
            )
        elif value is None:
            if spec.default is not None:
                raise ConfigError(f"'{spec.name}' is not set, and a run file cannot say so; give it a value.")
            lines.append(f"# {spec.name}: not set")
        else:
            lines.append(f"{_key(spec.name)} = {_value(value, spec.name)}")
    for target, items in params.items():
        if not isinstance(items, Mapping):
            raise ConfigError(f"params.{target} is not a table of parameters, so it has no TOML form.")
        lines += ["", f"[params.{_key(str(target))}]"]
        lines += [f"{_key(str(k))} = {_value(v, f'params.{target}.{k}')}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


def reproducing_toml(path: str | Path, meta: Mapping[str, Any]) -> tuple[str, str | None]:
    """The TOML that trains a checkpoint's run again, from its metadata; and a notice, or None.

    It is the recorded request (``training.request``) less :data:`WHERE_FIELDS`
    (commented out), with ``data`` as the run recorded it: the name that
    reloads exactly that data (an absolute path, not the one given relative
    to where the run started). A run on data held in memory has no name to
    reload: ``data`` is left empty, which ``ae train --config`` refuses until
    it is filled in, and the notice says so.
    """
    training = meta.get("training")
    recorded = training.get("request") if isinstance(training, Mapping) else None
    if not isinstance(recorded, Mapping):
        raise CheckpointError(
            f"{path} records no run request (it was saved by aecore.checkpoint.save, not by a training "
            "run), so no config can reproduce it."
        )
    try:
        request = RunRequest.from_values(recorded)
    except ConfigError as exc:
        raise CheckpointError(
            f"{path} records a run request this aecore cannot read ({str(exc).rstrip('.')}); "
            "was it trained with a newer aecore?"
        ) from None
    values = request.to_dict()
    data = meta.get("data") if isinstance(meta.get("data"), Mapping) else {}
    notes: dict[str, str] = {}
    notice = None
    if request.data is None:
        values["data"] = ""
        shape = data.get("sample_shape")
        shown = f" of shape {tuple(shape)}" if isinstance(shape, list) else ""
        notes["data"] = (
            f"The run trained on data held in memory (samples{shown}), which no name reloads:\n"
            'name a data source with the same kind of samples, e.g. data = "npy:samples.npy".'
        )
        notice = f"{path} was trained on data held in memory; fill in 'data' in the config before using it."
    elif isinstance(data.get("name"), str) and data["name"] and data["name"] != request.data:
        notes["data"] = f"given as {_value(request.data, 'data')}; the name below reloads exactly that data"
        values["data"] = data["name"]
    versions = meta.get("versions") if isinstance(meta.get("versions"), Mapping) else {}
    shown_versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    header = (
        f"The run request recorded in {path}.\n"
        "'ae train --config THIS_FILE' trains the same run again, in a new run directory"
        + (f"\n(bit for bit on CPU with the same versions: {shown_versions})." if shown_versions else ".")
    )
    return request_toml(values, header=header, reproduce=True, notes=notes), notice


def schema_table() -> str:
    """The run file's keys as a Markdown table (docs/config-files.md embeds it; a test compares)."""
    rows = ["| key | TOML type | default | meaning |", "|---|---|---|---|"]
    for spec in params_of(RunRequest):
        default = "(not set)" if spec.default is None else _value(spec.default, spec.name)
        if spec.name == "params":
            default = "(none)"
        cells = (f"`{spec.name}`", _toml_type(spec), f"`{default}`", spec.help)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


# -- reading -----------------------------------------------------------------

_SEE = "The keys are the run request's fields (see docs/config-files.md)."


def _read_text(path: Path) -> str:
    try:
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; --config takes a TOML file.")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path} holds {size:,} bytes, far more than a run file; is it the right file?")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no config file {path}; check the path given to --config.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or type(exc).__name__}).") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); a run file is TOML.") from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading a config file needs Python 3.11 or later, or the tomli package (pip install tomli)."
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "malformed"
        raise ConfigError(f"{path} is not valid TOML: {detail}.") from None
    except RecursionError:
        raise ConfigError(f"{path} nests arrays or tables too deeply to be a run file.") from None


def _likely_key(key: str, specs: Mapping[str, ParamSpec]) -> str:
    """' Did you mean: regularizers?' for ``reg``, ``--set`` or ``batch-size`` as well as for typos."""
    flags: dict[str, str] = {}
    for spec in specs.values():
        for flag in (*spec.flags, f"--{spec.name.replace('_', '-')}"):
            flags[flag.lstrip("-")] = spec.name
    if key.lstrip("-") in flags:
        return f" Did you mean: {flags[key.lstrip('-')]}?"
    return suggest(key, specs)


# -- writing -----------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
#: Python ints TOML is sure to hold: a signed 64-bit integer.
_INT_RANGE = (-(2**63), 2**63 - 1)


def _comments(text: str) -> list[str]:
    """``text`` as TOML comment lines; what no comment may hold (control characters, surrogates) as ?."""
    return [
        "# " + "".join("?" if _uncommentable(c) else c for c in line).rstrip() for line in text.splitlines()
    ]


def _uncommentable(char: str) -> bool:
    code = ord(char)
    return (code < 0x20 and char != "\t") or code == 0x7F or 0xD800 <= code <= 0xDFFF


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key, "a key")


def _string(text: str, where: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as it is."""
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate (an undecodable file name): not Unicode text
            raise ConfigError(
                f"{where} holds text that is not valid Unicode, so it cannot be written as TOML."
            )
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise ConfigError(f"{where} = {value} does not fit the 64-bit integer TOML holds.")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # the shortest text that reads back as exactly this float
    if isinstance(value, str):
        return _string(value, where)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_key(str(k))} = {_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    shown = "none" if value is None else type(value).__name__
    raise ConfigError(f"{where} is {shown}, which has no TOML form; leave it out or give a value.")


def _toml_type(spec: ParamSpec) -> str:
    """What to write for a field, in TOML's words: ``integer``, ``array of strings``, ``table``..."""
    tp, optional = spec.type, False
    if get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        tp, optional = rest[0], True

    def name(t: Any) -> str:
        if get_origin(t) is Literal:
            choices = [f'"{c}"' for c in get_args(t)]
            return f"{', '.join(choices[:-1])} or {choices[-1]}"
        if get_origin(t) is tuple:
            return f"array of {name(get_args(t)[0])}s"
        if get_origin(t) is dict:
            return "table of tables" if get_origin(get_args(t)[1]) is dict else "table"
        return {int: "integer", float: "float", bool: "boolean", str: "string"}.get(t, str(t))

    return name(tp) + (" (leave out: not set)" if optional and spec.default is None else "")
