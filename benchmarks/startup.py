"""Start-up time: how long ``ae`` commands take before doing anything, against ``import torch``.

``ae --help`` and ``ae plugins list`` should never pay for importing torch
(a test checks they do not import it); ``ae train --help`` should not
either. Wall time of a fresh process is what a user feels, so each command
runs as a subprocess of the installed console script, alternating with
``python -c "import torch"`` as the yardstick, after one untimed warm-up
of each so every contender finds the files in the page cache.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.stats import median, ratio, target

__all__ = ["REFERENCE", "ae_command", "run_startup"]

REFERENCE = "import torch"
TARGET_RATIO = 0.1
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ae --help", ("--help",)),
    ("ae plugins list", ("plugins", "list")),
    ("ae train --help", ("train", "--help")),
)


def ae_command() -> list[str]:
    """The installed ``ae`` script next to this interpreter, else ``python -m aecore``."""
    script = Path(sys.executable).with_name("ae")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "aecore"]


def _time(argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, proc.returncode


def run_startup(*, repeats: int = 5) -> dict[str, Any]:
    """Median wall time of each command over ``repeats`` alternating rounds, and its ratio to torch's."""
    ae = ae_command()
    argvs = {name: [*ae, *args] for name, args in COMMANDS}
    argvs[REFERENCE] = [sys.executable, "-c", "import torch"]
    for argv in argvs.values():  # warm-up, untimed
        _time(argv)
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    codes: dict[str, list[int]] = {name: [] for name in argvs}
    for _ in range(repeats):
        for name, argv in argvs.items():
            seconds, code = _time(argv)
            samples[name].append(seconds)
            codes[name].append(code)
    seconds = {name: median(values) for name, values in samples.items()}
    ratios = {name: ratio(seconds[name], seconds[REFERENCE]) for name, _ in COMMANDS}
    return {
        "commands": {name: " ".join(argv) for name, argv in argvs.items()},
        "reference": REFERENCE,
        "repeats": repeats,
        "samples": samples,
        "exit_codes": codes,
        "seconds": seconds,
        "ratio_to_import_torch": ratios,
        "targets": [
            target(
                f"{name} / import torch",
                ratios[name],
                TARGET_RATIO,
                note="" if set(codes[name]) == {0} else "failed",
            )
            for name, _ in COMMANDS
        ],
    }
