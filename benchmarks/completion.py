"""Shell completion: how long one <TAB> on ``ae`` takes, against ``import torch``.

A completion runs ``ae`` afresh with Typer's completion variables set, as
the installed bash, zsh and fish scripts do. Names come from entry-point
metadata, so it must never pay for torch or any plugin (a test checks it
imports neither); the target is a tenth of an ``import torch``. Each case
runs as a subprocess of the installed console script, alternating with
``python -c "import torch"``, after one untimed warm-up of each.

    python -m benchmarks.completion [--repeats N]

:func:`run_completion` returns a record shaped like the start-up section's
(``seconds``, ``ratio_to_import_torch``, ``targets``...), so it can be
reported the same way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.startup import REFERENCE, ae_command
from benchmarks.stats import median, ratio, target

__all__ = ["CASES", "main", "run_completion"]

TARGET_RATIO = 0.1
#: (name, shell, the command line typed so far); the last word is the one being completed.
CASES: tuple[tuple[str, str, str], ...] = (
    ("bash: ae tr<TAB>", "bash", "ae tr"),
    ("bash: ae train --encoder <TAB>", "bash", "ae train --encoder "),
    ("bash: ae train --preset conv<TAB>", "bash", "ae train --preset conv"),
    ("bash: ae plugins show m<TAB>", "bash", "ae plugins show m"),
    ("zsh: ae train --data <TAB>", "zsh", "ae train --data "),
    ("fish: ae train --reg <TAB>", "fish", "ae train --reg "),
)


def completion_env(shell: str, line: str) -> dict[str, str]:
    """The environment the shell's completion script gives ``ae`` for ``line``."""
    env = dict(os.environ, _AE_COMPLETE=f"complete_{shell}")
    if shell == "bash":
        words = line.split()
        cword = len(words) if line.endswith(" ") else len(words) - 1
        env.update(COMP_WORDS=line, COMP_CWORD=str(cword))
    else:
        env.update(_TYPER_COMPLETE_ARGS=line, _TYPER_COMPLETE_FISH_ACTION="get-args")
    return env


def _time(argv: list[str], env: dict[str, str] | None) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc.returncode, proc.stdout


def run_completion(*, repeats: int = 5) -> dict[str, Any]:
    """Median wall time of each completion over ``repeats`` alternating rounds, and its ratio to torch's."""
    ae = ae_command()
    runs: dict[str, tuple[list[str], dict[str, str] | None]] = {
        name: (ae, completion_env(shell, line)) for name, shell, line in CASES
    }
    runs[REFERENCE] = ([sys.executable, "-c", "import torch"], None)
    candidates = {name: _time(argv, env)[2].split() for name, (argv, env) in runs.items()}  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in runs}
    codes: dict[str, list[int]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (argv, env) in runs.items():
            seconds, code, _ = _time(argv, env)
            samples[name].append(seconds)
            codes[name].append(code)
    seconds = {name: median(values) for name, values in samples.items()}
    ratios = {name: ratio(seconds[name], seconds[REFERENCE]) for name, _, _ in CASES}
    return {
        "commands": {name: line for name, _, line in CASES}
        | {REFERENCE: f"{sys.executable} -c 'import torch'"},
        "reference": REFERENCE,
        "repeats": repeats,
        "samples": samples,
        "exit_codes": codes,
        "candidates": {name: candidates[name] for name, _, _ in CASES},
        "seconds": seconds,
        "ratio_to_import_torch": ratios,
        "targets": [
            target(
                f"{name} / import torch",
                ratios[name],
                TARGET_RATIO,
                note="" if set(codes[name]) == {0} and candidates[name] else "failed or offered nothing",
            )
            for name, _, _ in CASES
        ],
    }


def main(argv: list[str] | None = None) -> None:
    """Print each completion's median time, the ``import torch`` yardstick, and their ratio."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.completion", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    record = run_completion(repeats=args.repeats)
    reference = record["seconds"][REFERENCE]
    print(f"median wall time of {args.repeats} alternating rounds; {REFERENCE}: {reference:.3f} s")
    width = max(len(name) for name, _, _ in CASES)
    for goal, (name, _, _) in zip(record["targets"], CASES, strict=True):
        verdict = "PASS" if goal["passed"] else "FAIL"
        shown = " ".join(record["candidates"][name][:4])
        print(
            f"{name:<{width}}  {record['seconds'][name]:.3f} s  ÷ torch {goal['value']:.3f}  "
            f"(target ≤ {TARGET_RATIO})  {verdict}  {goal['note'] or shown}"
        )


if __name__ == "__main__":
    main()
