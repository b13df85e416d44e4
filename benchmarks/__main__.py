"""``python -m benchmarks``: the performance benchmarks (throughput, inference, start-up, memory).

Run from the repository root, or through ``nox -s bench``. The benchmarks
are not part of any wheel: they measure aecore, they are not aecore.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aecore.cli.output import fail_line
from aecore.errors import AecoreError, ConfigError

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command()
def bench(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="AECORE_MNIST_DIR",
            help="Full MNIST in torchvision layout (a folder holding MNIST/raw/; or $AECORE_MNIST_DIR).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs per timed run.")] = 2,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N training images (quick runs).")
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(help="Alternating repetitions (default: 5; 3 for the memory probes and cache timings)."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this section: throughput, inference, startup, completion, memory, data, sae, "
            "matrix, mainjob or anomaly; "
            "repeat for several."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch intra-op threads (default: torch's default).")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(help="Where to write the JSON record (default: bench-results/bench-<timestamp>.json)."),
    ] = None,
    amp: Annotated[
        bool,
        typer.Option(
            help="Also time (a') with the opt-in bfloat16 autocast (slow on CPUs without bf16 units)."
        ),
    ] = False,
) -> None:
    """Measure training throughput, start-up time and memory; print tables and write a JSON record.

    Every comparison is made within this one run, alternating the
    competitors. Targets print PASS or FAIL but never change the exit status.
    """
    from benchmarks.runner import SECTIONS  # stdlib and Rich only: still no torch here

    chosen = tuple(only or SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' for --only; choose from {', '.join(SECTIONS)}.")
    for name, value in (
        ("--epochs", epochs),
        ("--limit", limit),
        ("--repeats", repeats),
        ("--threads", threads),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}.")
    needs_data = {"throughput", "inference", "memory", "data"} & set(chosen)
    if needs_data and data_dir is None:
        raise ConfigError(
            f"{' and '.join(sorted(needs_data))} need MNIST: pass --data-dir (a folder holding MNIST/raw/) "
            "or set AECORE_MNIST_DIR."
        )
    if data_dir is not None and not (data_dir / "MNIST" / "raw").is_dir():
        raise ConfigError(f"--data-dir {data_dir} holds no MNIST/raw/ folder (torchvision layout).")

    from aecore.cli.output import console
    from benchmarks import BenchSettings, run_bench

    run_bench(
        BenchSettings(
            data_dir=data_dir,
            epochs=epochs,
            limit=limit,
            repeats=repeats,
            only=tuple(s for s in SECTIONS if s in chosen),
            json_out=json_out,
            threads=threads,
            amp=amp,
        ),
        console,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks``: a bad option or missing data is one line and exit code 2."""
    try:
        app(argv, standalone_mode=False)
    except AecoreError as exc:
        fail_line(str(exc))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
