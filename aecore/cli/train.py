"""``ae train``: compose plugins by name and train them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aecore.cli.output import console
from aecore.cli.overrides import parse_sets
from aecore.errors import ConfigError

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


def train_command(
    encoder: Annotated[
        str | None, typer.Option("--encoder", "-e", help="Encoder plugin name (see 'ae plugins list').")
    ] = None,
    decoder: Annotated[
        str | None,
        typer.Option("--decoder", "-d", help="Decoder plugin name [default: the encoder's counterpart]."),
    ] = None,
    reg: Annotated[
        list[str] | None,
        typer.Option("--reg", "-r", help="Regularizer plugin name; repeat to stack several."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Start from a named recipe (see 'ae presets'); options override it.")
    ] = None,
    trainer: Annotated[str, typer.Option(help="Trainer plugin name.")] = "default",
    latent_dim: Annotated[
        int | None, typer.Option(help="Size of the code [default: the preset's, or 32].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs [default: the trainer's].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size [default: the trainer's].")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: the trainer's].")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for weights, split and shuffling.")] = 0,
    loss: Annotated[str, typer.Option(help="Reconstruction loss: mse, bce or l1.")] = "mse",
    data: Annotated[
        str | None, typer.Option(help="Dataset: embedded (default, ships with aecore) or mnist.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Local copy of the dataset (torchvision layout); no download.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Run directory [default: runs/<components>, never reused].")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of training data held out for validation.")
    ] = 0.1,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            "--normal-class",
            help="Train only on these labels, e.g. 0 or 3,5 (one-class training for anomaly detection).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Set a component parameter: TARGET.PARAM=VALUE, e.g. encoder.channels=32,64."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Allow writing into a run directory that holds files.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Train an autoencoder composed from plugins and save it as safetensors."""
    regs = list(reg or [])
    params: dict[str, dict[str, str | int | float]] = dict(parse_sets(set_ or [], regs))
    trainer_params = params.setdefault("trainer", {})
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            trainer_params[name] = value

    class_list = None
    if classes is not None:
        try:
            class_list = [int(c) for c in classes.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--classes expects comma-separated integer labels, got '{classes}'.") from None

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
    from aecore.cli.evaluate import format_test_error

    console.print(f"test: {format_test_error(result.metrics, prefix='test_')}")
    console.print(f"saved {result.checkpoint} and {result.run_dir / 'metrics.json'}")
