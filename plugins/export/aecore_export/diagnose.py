"""Why an export failed, in a few words, from the exporter's exception.

torch's exporter raises long, multi-line errors whose wording changes between
releases. :func:`reason` reads the whole exception chain and looks for the
few things a user can act on (an operator without an ONNX translation, a
branch on tensor values, a fixed batch size); whatever it cannot recognise
becomes the innermost exception's type and first line. Nothing here relies
on a message matching exactly: a pattern that is not found only makes the
reason less specific.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["chain", "operator_name", "reason", "source_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: ``<OpOverload(op='aten._linalg_eigh', overload='default')>``, as the dispatcher names an ATen operator.
_OVERLOAD = re.compile(r"OpOverload\(op='([\w.:]+)',\s*overload='(\w+)'\)")
#: ``target=torch.ops.aten._linalg_eigh.default``, as an FX node names its operator.
_TARGET = re.compile(r"target=torch\.ops\.([\w.]+)")
#: ``File "/path/enc.py", line 13, in forward`` and the source line under it.
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)[ \t]*\n[ \t|]*(\S[^\n]*)')
_MAX_DETAIL = 160


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__``, else ``__context__``), outermost first."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _text(exc: BaseException) -> str:
    try:
        return _ANSI.sub("", str(exc))
    except Exception:  # an exception whose __str__ fails still has a type
        return ""


def operator_name(exc: BaseException) -> str | None:
    """The operator the exporter could not translate (``aten._linalg_eigh.default``), or None."""
    for link in chain(exc):
        text = _text(link)
        found = _OVERLOAD.search(text)
        if found:
            return f"{found.group(1)}.{found.group(2)}"
        found = _TARGET.search(text)
        if found:
            return found.group(1)
    return None


def source_line(exc: BaseException, skip: Iterable[str] = ()) -> str | None:
    """``"if x.sum() > 0:" (enc.py:13)``: the first frame the messages quote outside the ``skip`` folders."""
    folders = tuple(os.path.normcase(os.path.abspath(s)) for s in skip)
    for link in chain(exc):
        for path, line, _function, code in _FRAME.findall(_text(link)):
            where = os.path.normcase(os.path.abspath(path))
            if folders and where.startswith(folders):
                continue
            return f"`{code.strip()}` ({os.path.basename(path)}:{line})"
    return None


def _names(exc: BaseException) -> list[str]:
    return [type(link).__name__ for link in chain(exc)]


def reason(exc: BaseException, skip: Iterable[str] = ()) -> str:
    """What stopped the export, as a clause: "operator X has no ONNX translation", and so on.

    ``skip``: folders (torch's own) whose frames are not the user's code.
    """
    texts = " ".join(_text(link) for link in chain(exc))
    names = " ".join(_names(exc))
    op = None if "DataDependent" in names else operator_name(exc)
    if op is not None:
        return f"operator {op} has no ONNX translation"
    if "DataDependent" in names or "data-dependent" in texts.lower():
        where = source_line(exc, skip)
        return "its forward branches on tensor values (data-dependent control flow" + (
            f", at {where})" if where else ")"
        )
    if "ConstraintViolation" in names or "Constraints violated" in texts:
        return "its forward fixes the batch size, so the batch axis cannot stay variable"
    inner = chain(exc)[-1]
    first = next((line.strip() for line in _text(inner).splitlines() if line.strip()), "")
    if len(first) > _MAX_DETAIL:
        first = first[: _MAX_DETAIL - 3] + "..."
    return f"the exporter failed with {type(inner).__name__}" + (f" ({first})" if first else "")
