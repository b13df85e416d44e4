"""Every reference model is a preset, and each builds with exactly the published parameter count."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from aecore import registry
from aecore.cli import app
from aecore.composition import compose_preset
from aecore.errors import ConfigError, UnknownComponentError
from aecore.presets import Preset
from aecore.request import RunRequest, resolve


def get_preset(name: str) -> Preset:
    return registry.get("preset", name)


#: Parameter counts from the reference table (seed-models.md), on 1×28×28 inputs.
REFERENCE = {
    "fc-400-20": 644_804,
    "simple": 484_944,
    "flexible": 435_536,
    "deep": 1_144_880,
    "very-deep": 1_485_472,
    "tanh-12": 219_804,
    "basic-32": 1_083_696,
    "symmetric": 4_675_934,
    "conv-simple": 225,
    "conv-deep": 83_905,
    "conv-strided": 840_577,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_model_is_a_preset_with_the_table_count(name: str) -> None:
    preset = get_preset(name)
    assert isinstance(preset, Preset)
    assert preset.reference_params == REFERENCE[name]
    assert compose_preset(preset).num_parameters() == REFERENCE[name]


def test_every_installed_preset_matches_its_own_reference_count() -> None:
    for entry in registry.list_components("preset"):
        preset = entry.load()
        if preset.reference_params is not None:
            assert compose_preset(preset).num_parameters() == preset.reference_params, entry.name


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(UnknownComponentError) as info:
        get_preset("deap")
    assert "deep" in str(info.value)


def test_explicit_choices_override_the_preset_and_regularizers_add_up() -> None:
    request = RunRequest(
        preset="deep",
        regularizers=("sparse",),
        latent_dim=8,
        params={"encoder": {"dropout": "0.1"}},
        epochs=3,
    )
    plan = resolve(request)
    own = "aecore-mlp:mlp"  # a preset means its own distribution's components
    assert (plan.encoder, plan.decoder, plan.regularizers, plan.latent_dim) == (own, own, ("sparse",), 8)
    assert plan.components["encoder"]["dropout"] == "0.1"
    assert plan.components["encoder"]["hidden"] == (512, 256, 128)  # the rest of the preset stays
    assert "trainer" not in plan.components
    # the preset's trainer recipe applies where the trainer has the field; explicit values win
    assert plan.trainer_params["epochs"] == 3
    assert plan.trainer_params["grad_clip"] == get_preset("deep").params["trainer"]["grad_clip"]


def test_a_preset_refuses_a_conflicting_encoder() -> None:
    with pytest.raises(ConfigError, match="preset already chooses --encoder mlp"):
        resolve(RunRequest(preset="simple", encoder="conv"))


def test_ae_presets_lists_counts_and_compression() -> None:
    result = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1,144,880" in result.output and "24.5×" in result.output  # deep: 784 / 32
    assert "39.2×" in result.output  # fc-400-20: 784 / 20


def test_train_with_a_preset_records_it_and_its_training_recipe(tmp_path, tiny_data) -> None:
    from aecore.checkpoint import read_metadata
    from aecore.training import train

    result = train(
        preset="deep",
        data=tiny_data,
        params={"trainer": {"epochs": 1, "plateau_patience": 5}},
        out=tmp_path / "run",
        progress=False,
    )
    meta = read_metadata(result.checkpoint)
    assert meta["training"]["preset"] == "deep"
    trainer = meta["training"]["trainer"]["params"]
    assert trainer["grad_clip"] == 1.0  # from the preset
    assert trainer["plateau_patience"] == 5  # explicit beats preset
    assert meta["model"]["latent_dim"] == 32
    assert result.model.num_parameters() == REFERENCE["deep"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [*sorted(REFERENCE), "record-30"])
def test_every_preset_trains_one_epoch_from_the_cli_and_reloads_with_eval(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--preset", name, "--epochs", "1", "-q", "--out", "run"])
    assert trained.exit_code == 0, trained.stderr
    evaluated = runner.invoke(app, ["eval", "run", "--no-pca"])
    assert evaluated.exit_code == 0, evaluated.stderr
    test_line = next(line for line in trained.stdout.splitlines() if line.startswith("test:"))
    assert test_line in evaluated.stdout  # the reloaded model gives the figures training printed
    from aecore.checkpoint import load

    assert load(tmp_path / "run").num_parameters() == get_preset(name).reference_params


def test_every_preset_has_a_recipe_page():
    from pathlib import Path

    pages = Path(__file__).resolve().parents[1] / "docs" / "recipes"
    for entry in registry.list_components("preset"):
        assert (pages / f"{entry.name}.md").exists(), "python -m aecore.bench.recipes --write docs/recipes"
