"""``ae train``: compose plugins by name and train them.

Its options are generated from :class:`aecore.RunRequest`, so they are
declared once, there; this module adds what only the command line has
(``--quiet``, ``--resume``, ``--nproc``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aecore.cli.completion import RUN_REQUEST
from aecore.cli.options import options_from
from aecore.cli.output import console
from aecore.errors import ConfigError
from aecore.request import RunRequest

if TYPE_CHECKING:
    from aecore.training import TrainResult

__all__ = ["report", "train_command"]

EPILOG = """
Examples:

  ae train --encoder conv --reg sparse

  ae train --preset deep --epochs 15

  ae train -e mlp --set encoder.hidden=400 --latent-dim 20 --epochs 5

  ae train -e conv -d mlp --reg sparse --set sparse.kind=kl --data mnist --data-dir ./data

  ae train --config run.toml --epochs 3

  ae train -e mlp --epochs 5 --print-config > run.toml

Every component parameter can be set with --set TARGET.PARAM=VALUE, where
TARGET is encoder, decoder, trainer, loss or a regularizer name. 'ae plugins
show NAME' lists a component's parameters, types and defaults.

--config FILE reads the whole request from a TOML file whose keys are the
options' fields (docs/config-files.md); options given on the command line
override it, --set per parameter.
"""


@options_from(RunRequest, complete=RUN_REQUEST)
def train_command(
    ctx: typer.Context,
    values: dict[str, Any],
    config: Annotated[
        Path | None,
        typer.Option(
            help="Read the run request from this TOML file (docs/config-files.md); options override it."
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the request (file and options merged) as TOML for --config; exit without training.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue an interrupted run directory exactly where it stopped.")
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="Train in N processes on this machine, as torchrun would (DDP: gloo on CPU, NCCL on CUDA)."
        ),
    ] = None,
) -> None:
    """Train an autoencoder composed from plugins and save it as safetensors.

    Ctrl-C saves the run's state and prints how to continue it with --resume.
    """
    if resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in values]
        given += [flag for flag, used in (("--config", config), ("--print-config", print_config)) if used]
        if given:
            raise ConfigError(
                f"--resume continues {resume} with the options it was started with; drop {', '.join(given)}."
            )
    if config is not None:
        from aecore.runfile import merge_values, read_run_file

        values = merge_values(read_run_file(config), values)
    if print_config:
        from aecore.runfile import request_toml

        request = RunRequest.from_values(values)
        typer.echo(request_toml(request.to_dict(), header=PRINTED), nl=False)
        return
    if nproc is not None:
        if nproc < 1:
            raise ConfigError(f"--nproc must be at least 1, got {nproc}.")
        if resume is not None:
            raise ConfigError("--resume continues a run in one process; drop --nproc.")
        RunRequest.from_values(values)  # a bad option is one line here, not one per process
        from aecore.distributed import launch

        sys.exit(launch(nproc, _without_nproc(sys.argv[1:])))  # the launcher has said all there is to say
    if resume is not None:
        from aecore.training import resume as resume_run

        report(resume_run(resume, progress=not quiet))
        return
    request = RunRequest.from_values(values)  # one-line errors before torch is imported

    from aecore.training import train  # imports torch: only once we really train

    report(train(request, progress=not quiet))


train_command.epilog = EPILOG  # type: ignore[attr-defined]

#: The comment --print-config starts its TOML with.
PRINTED = """The run request of an 'ae train' command line; 'ae train --config THIS_FILE' runs it.
Keys are the fields of aecore.RunRequest (docs/config-files.md); a key left out takes its default."""


def _without_nproc(argv: list[str]) -> list[str]:
    """This very command line, less ``--nproc N``: what each launched process runs."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return args


def report(result: TrainResult) -> None:
    """The two lines ``ae train`` ends with: the test figures and where they were written."""
    from aecore.cli.evaluate import format_test_error
    from aecore.distributed import from_environment

    if not from_environment().is_main:
        return  # rank 0 speaks for the job
    console.print(f"test: {format_test_error(result.metrics, prefix='test_')}")
    console.print(f"saved {result.checkpoint} and {result.run_dir / 'metrics.json'}")
