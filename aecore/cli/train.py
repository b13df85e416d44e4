"""``ae train``: compose plugins by name and train them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aecore.cli.output import console
from aecore.cli.overrides import parse_sets
from aecore.errors import ConfigError

if TYPE_CHECKING:
    from aecore.training import TrainResult

EPILOG = """
Examples:

  ae train --encoder conv --reg sparse

  ae train --preset deep --epochs 15

  ae train -e mlp --set encoder.hidden=400 --latent-dim 20 --epochs 5

  ae train -e conv -d mlp --reg sparse --set sparse.kind=kl --data mnist --data-dir ./data

Every component parameter can be set with --set TARGET.PARAM=VALUE, where
TARGET is encoder, decoder, trainer or a regularizer name. 'ae plugins show
NAME' lists a component's parameters, types and defaults.
"""


# Option declarations shared by every command that trains (``ae train``, ``ae cv``, ``ae sweep``).
EncoderOpt = Annotated[
    str | None, typer.Option("--encoder", "-e", help="Encoder plugin name (see 'ae plugins list').")
]
DecoderOpt = Annotated[
    str | None,
    typer.Option("--decoder", "-d", help="Decoder plugin name (default: the encoder's counterpart)."),
]
RegOpt = Annotated[
    list[str] | None,
    typer.Option("--reg", "-r", help="Regularizer plugin name; repeat to stack several."),
]
PresetOpt = Annotated[
    str | None, typer.Option(help="Start from a named recipe (see 'ae presets'); options override it.")
]
TrainerOpt = Annotated[str, typer.Option(help="Trainer plugin name.")]
LatentDimOpt = Annotated[int | None, typer.Option(help="Size of the code (default: the preset's, or 32).")]
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs (default: the trainer's).")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Batch size (default: the trainer's).")]
LrOpt = Annotated[float | None, typer.Option(help="Learning rate (default: the trainer's).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed for weights, split and shuffling.")]
LossOpt = Annotated[str, typer.Option(help="Reconstruction loss: mse, bce or l1.")]
TrainDataOpt = Annotated[
    str | None, typer.Option(help="Dataset: embedded (default, ships with aecore) or mnist.")
]
TrainDataDirOpt = Annotated[
    Path | None, typer.Option(help="Local copy of the dataset (torchvision layout); no download.")
]
TrainDeviceOpt = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes",
        "--normal-class",
        help="Train only on these labels, e.g. 0 or 3,5 (one-class training for anomaly detection).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Set a component parameter: TARGET.PARAM=VALUE, e.g. encoder.channels=32,64."
    ),
]


def component_params(
    regs: list[str],
    set_: list[str] | None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> dict[str, dict[str, str | int | float]]:
    """``train()``'s ``params`` from ``--set`` items and the trainer shortcuts."""
    params: dict[str, dict[str, str | int | float]] = dict(parse_sets(set_ or [], regs))
    trainer_params = params.setdefault("trainer", {})
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            trainer_params[name] = value
    return params


def parse_classes(classes: str | None) -> list[int] | None:
    """``--classes 3,5`` as a list of integer labels (None when not given)."""
    if classes is None:
        return None
    try:
        return [int(c) for c in classes.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--classes expects comma-separated integer labels, got '{classes}'.") from None


def train_command(
    encoder: EncoderOpt = None,
    decoder: DecoderOpt = None,
    reg: RegOpt = None,
    preset: PresetOpt = None,
    trainer: TrainerOpt = "default",
    latent_dim: LatentDimOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    loss: LossOpt = "mse",
    data: TrainDataOpt = None,
    data_dir: TrainDataDirOpt = None,
    device: TrainDeviceOpt = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/<components>, never reused).")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of training data held out for validation.")
    ] = 0.1,
    classes: ClassesOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[
        bool, typer.Option(help="Allow writing into a run directory that holds files.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run directory exactly where it stopped."),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(help="Launch N processes with torchrun (DDP: gloo on CPU, NCCL on CUDA)."),
    ] = None,
    ctx: typer.Context = None,  # type: ignore[assignment]
) -> None:
    """Train an autoencoder composed from plugins and save it as safetensors.

    Ctrl-C saves the run's state and prints how to continue it with --resume.
    """
    if nproc is not None:
        raise typer.Exit(_launch_torchrun(nproc))
    if resume is not None:
        _resume(resume, ctx, quiet)
        return
    regs = list(reg or [])
    params = component_params(regs, set_, epochs, batch_size, lr)
    class_list = parse_classes(classes)

    from aecore.training import train  # imports torch: only once we really train

    result = train(
        encoder,
        decoder,
        regs,
        preset=preset,
        trainer=trainer,
        params=params,
        latent_dim=latent_dim,
        data=data,
        data_dir=data_dir,
        loss=loss,
        seed=seed,
        device=device,
        out=out,
        val_fraction=val_fraction,
        classes=class_list,
        overwrite=overwrite,
        progress=not quiet,
    )
    _report(result)


def _resume(run_dir: Path, ctx: typer.Context, quiet: bool) -> None:
    """``--resume RUN``: the run continues with the options it was started with, and no others."""
    from typer._click.core import ParameterSource  # Typer vendors Click

    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name not in {"resume", "quiet"}
        and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    ]
    if given:
        raise ConfigError(
            f"--resume continues {run_dir} with the options it was started with; drop {', '.join(given)}."
        )
    from aecore.training import resume

    _report(resume(run_dir, progress=not quiet))


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun with ``nproc`` processes on this machine."""
    import subprocess
    import sys

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}.")
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*command, "-m", "aecore", *args])


def _report(result: TrainResult) -> None:
    from aecore.cli.evaluate import format_test_error
    from aecore.training.distributed import from_environment

    if not from_environment().is_main:
        return  # rank 0 speaks for the job

    console.print(f"test: {format_test_error(result.metrics, prefix='test_')}")
    console.print(f"saved {result.checkpoint} and {result.run_dir / 'metrics.json'}")
