"""Ctrl-C in the ``ae`` command: at any moment, one line and exit code 130; never a traceback, never exit 0.

Python turns SIGINT into KeyboardInterrupt wherever the main thread is: in
an import (a traceback), in a finaliser (swallowed: the command exits 0), or,
once the interpreter has stopped handling signals on its way out, not at
all (the process dies silently, exit code −2). In the ``ae`` process itself
(its console script, or ``python -m aecore``) SIGINT is handled in three
phases instead:

- **start-up** (imports, before :func:`aecore.cli.main` runs): nothing is
  under way, so ``interrupted.`` is printed and the process exits 130 at once;
- **the command**: KeyboardInterrupt as usual (the trainer's own handler
  saves the run's state first), and remembered, so that a command which
  swallowed it still ends with 130;
- **exit** (the command is over): the process ends through
  :func:`exit_process`, which joins threads, runs the exit handlers and
  flushes open files itself, then leaves with ``os._exit`` rather than
  through the interpreter's teardown (a second or more with torch loaded,
  during which SIGINT would kill it silently). A Ctrl-C meanwhile prints
  ``interrupted.`` and exits 130.

A program that imports aecore, or calls ``main()`` itself, keeps Python's
own handling, apart from the remembering while ``main()`` runs.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from aecore.paths import report_failure

__all__ = ["begin_command", "command_over", "console_process", "end_command", "exit_process", "fail_text"]

_NAMES = {"ae", "ae.exe", "ae-script.py", "ae-script.pyw"}


class _State:
    phase = "start"  # start | command | exit
    seen = False  # a SIGINT came while the command ran
    installed = False
    previous: Any = None


def _started_as_ae() -> bool:
    """Whether Python is running the ``ae`` script (or ``aecore/__main__.py``) as its main program."""
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not file:
        return False  # python -c, an interactive session
    path = Path(file)
    if path.name == "__main__.py":  # python -m aecore; ae.exe's embedded script on Windows
        return path.parent.name == "aecore" or path.parent.name in _NAMES
    return path.name in _NAMES


#: Decided when the command line is first imported, from the main program Python runs (a script
#: that sets sys.argv to ["ae", ...] and calls main() itself is not the ae process).
_CONSOLE = _started_as_ae()


def console_process() -> bool:
    """Whether this process is the ``ae`` command itself, not a program that imports aecore."""
    return _CONSOLE


def fail_text(message: str) -> str:
    """The one line an error leaves on stderr."""
    return f"error: {' '.join(str(message).split())}\n"


def _leave(code: int) -> NoReturn:
    text = fail_text("interrupted.")
    if not report_failure(text, code):
        with contextlib.suppress(Exception):
            sys.stderr.write(text)
    _flush_std()
    os._exit(code)


def _on_sigint(signum: int, frame: Any) -> None:
    if _State.phase == "command":
        _State.seen = True
        raise KeyboardInterrupt
    _leave(130)


def _install() -> None:
    if _State.installed or threading.current_thread() is not threading.main_thread():
        return
    _State.previous = signal.signal(signal.SIGINT, _on_sigint)
    _State.installed = True


def begin_command() -> None:
    """``main()`` starts the command: Ctrl-C raises KeyboardInterrupt from here on, and is remembered."""
    _State.phase, _State.seen = "command", False
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _install()


def command_over() -> None:
    """The command has returned or raised: from here on, Ctrl-C ends the process at once."""
    _State.phase = "exit"


def end_command(code: int) -> int:
    """The exit code the command ends with, once it is over.

    A command that swallowed a Ctrl-C and would exit 0 says ``interrupted.``
    and exits 130 instead. In a program that called ``main()`` itself, the
    SIGINT handler it had is put back.
    """
    _State.phase = "exit"
    if _State.seen and code == 0:
        text = fail_text("interrupted.")
        if not report_failure(text, 130):
            sys.stderr.write(text)
        code = 130
    if not console_process() and _State.installed:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGINT, _State.previous or signal.default_int_handler)
        _State.installed, _State.phase = False, "start"
    return code


def exit_process(code: int) -> NoReturn:
    """End the ``ae`` process: threads joined, exit handlers run, open files flushed, then ``os._exit``."""
    _State.phase = "exit"
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon and thread.is_alive():
            thread.join()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # not CPython: leave the ordinary way
        raise SystemExit(code)
    run_exit_handlers()
    for obj in gc.get_objects():  # what the teardown would flush, closing the files left open
        if issubclass(type(obj), io.IOBase):  # type(): some objects warn when asked for __class__
            with contextlib.suppress(Exception):
                if not obj.closed and obj.writable():
                    obj.flush()
    _flush_std()
    os._exit(code)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


# In the ``ae`` process, from the moment the command line is imported: Ctrl-C during start-up is one line.
if _CONSOLE and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    _install()
