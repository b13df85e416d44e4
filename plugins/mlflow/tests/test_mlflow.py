"""The MLflow hook plugin against a real local store (sqlite), read back with ``MlflowClient``."""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

import aecore
from aecore import registry
from aecore.errors import ConfigError, DataError, HookWarning, ShapeError
from aecore.hooks import hookimpl
from aecore_mlflow import (
    ENABLE_ENV,
    MODEL_ENV,
    MODEL_TAG,
    RUN_FILE,
    MlflowLogger,
    enabled,
    flat_config,
    requirements,
)
from aecore_mlflow.pyfunc import predict_frame

TINY = {"encoder": {"hidden": [16, 8]}, "trainer": {"batch_size": 16}}
SETTINGS = (ENABLE_ENV, MODEL_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite tracking store for the module: making its tables takes seconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{path}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path.parent)  # the Default experiment's ./mlruns lands here, not in the repository
        MlflowClient(uri).search_experiments()  # creates the tables now
    return uri


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No setting of the shell leaks in, MLflow sends no telemetry, and nothing lands in the repository."""
    for name in (*SETTINGS, "AECORE_STRICT_HOOKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)


def _experiment(client: MlflowClient, artifacts: Path) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    client.create_experiment(name, artifact_location=artifacts.as_uri())
    return name


@pytest.fixture
def tracked(store, monkeypatch, tmp_path) -> MlflowClient:
    """MLFLOW_TRACKING_URI at the store and a fresh experiment (with its artifacts in tmp_path)."""
    client = MlflowClient(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", _experiment(client, tmp_path / "artifacts"))
    return client


def _train(data, out, epochs=3, **fields):
    return aecore.train(
        "mlp", data=data, out=out, epochs=epochs, latent_dim=4, params=TINY, progress=False, **fields
    )


def _runs(client: MlflowClient, name: str):
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text())


def _hook_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, HookWarning)]


class Plotter:
    """Leaves a plot in the run directory before training ends, as a plotting hook would."""

    @hookimpl
    def ae_checkpoint_saved(self, run, path):
        (run.out_dir / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n not a real picture")


@pytest.fixture(scope="module")
def logged(store, tmp_path_factory, ae_tiny_dataset):
    """One tracked training run (with its pyfunc model), shared by the tests that read it back."""
    root = tmp_path_factory.mktemp("logged")
    client = MlflowClient(store)
    with pytest.MonkeyPatch.context() as mp:
        for name in (*SETTINGS, "AECORE_STRICT_HOOKS"):
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MLFLOW_TRACKING_URI", store)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", _experiment(client, root / "artifacts"))
        mp.chdir(root)
        result = _train(ae_tiny_dataset, root / "run", hooks=[Plotter()])
    record = _record(result.run_dir)
    return SimpleNamespace(
        result=result, client=client, run_id=record["run_id"], record=record, root=root, store=store
    )


@pytest.fixture
def reading(logged, monkeypatch):
    """The shared run, with MLflow pointed at its store (``models:/`` URIs resolve there)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.store)
    return logged


# -- a tracked run, read back ------------------------------------------------------------------


def test_entry_point_is_installed():
    registry.refresh()
    hooks = registry.list_components("hook", "mlflow")
    assert [(e.dist, e.load()) for e in hooks] == [("aecore-mlflow", MlflowLogger)]


def test_params_come_from_the_run_configuration(logged):
    run = logged.client.get_run(logged.run_id)
    params = run.data.params
    assert params["encoder"] == "mlp" and params["encoder.hidden"] == "16,8"
    assert params["decoder.hidden"] == "16,8"  # the effective value: the decoder mirrors the encoder
    assert params["trainer.epochs"] == "3" and params["trainer.batch_size"] == "16"
    assert params["latent_dim"] == "4" and params["loss"] == "mse" and params["input_shape"] == "1,8,8"
    assert params["trainer.grad_clip"] == "None"
    assert run.info.status == "FINISHED" and run.info.run_name == logged.result.run_dir.name
    assert run.data.tags["aecore.run_dir"] == str(logged.result.run_dir.resolve())
    assert logged.record["tracking_uri"] == logged.store


def test_metrics_are_logged_per_epoch(logged):
    record = json.loads((logged.result.run_dir / "metrics.json").read_text())
    history, final = record["history"], record["final"]
    names = {k for epoch in history for k in epoch} - {"epoch"}
    for name in names:
        logged_history = [(m.step, m.value) for m in logged.client.get_metric_history(logged.run_id, name)]
        assert logged_history == [(h["epoch"], h[name]) for h in history if name in h], name
    for name in ("test_mse_per_pixel", "test_sse_per_image"):
        assert [(m.step, m.value) for m in logged.client.get_metric_history(logged.run_id, name)] == [
            (3, final[name])
        ]


def test_artifacts_are_the_checkpoint_the_metrics_and_the_plots(logged):
    paths = sorted(a.path for a in logged.client.list_artifacts(logged.run_id))
    assert paths == ["loss.png", "metrics.json", "model.safetensors"]
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=logged.run_id,
            artifact_path="model.safetensors",
            dst_path=str(logged.root / "download"),
            tracking_uri=logged.record["tracking_uri"],
        )
    )
    assert local.read_bytes() == logged.result.checkpoint.read_bytes()


def test_the_pyfunc_model_predicts_codes_and_scores(reading, ae_tiny_dataset):
    uri = reading.client.get_run(reading.run_id).data.tags[MODEL_TAG]
    assert uri == reading.record["model_uri"]
    model = reading.result.model.eval()
    test = ae_tiny_dataset.test
    raw = test.x.numpy().reshape(len(test), -1)  # uint8 pixels, as stored: the model normalises them
    frame = pd.DataFrame(raw, index=[f"s{i}" for i in range(len(raw))])
    x = test.batch(slice(None))
    with torch.no_grad():
        codes = model.encode(x).numpy()
        scores = (model(x).double() - x.double()).pow(2).flatten(1).mean(dim=1).numpy()

    loaded = mlflow.pyfunc.load_model(uri)
    got = loaded.predict(frame)
    assert list(got.columns) == ["code_0", "code_1", "code_2", "code_3"]
    assert list(got.index) == list(frame.index)
    np.testing.assert_allclose(got.to_numpy(), codes, rtol=1e-5, atol=1e-6)
    by_call = loaded.predict(frame, params={"output": "scores"})
    np.testing.assert_allclose(by_call["score"].to_numpy(), scores, rtol=1e-10)

    by_config = mlflow.pyfunc.load_model(uri, model_config={"output": "scores"}).predict(frame)
    np.testing.assert_allclose(by_config["score"].to_numpy(), scores, rtol=1e-10)
    analysis = pytest.importorskip("aecore_analysis.anomaly")
    np.testing.assert_allclose(scores, analysis.reconstruction_scores(model, test).numpy(), rtol=1e-10)


def test_the_logged_model_holds_no_pickle(reading):
    uri = reading.record["model_uri"]
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(reading.root / "model")))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert [p.read_bytes() for p in weights] == [reading.result.checkpoint.read_bytes()]
    assert "aecore==" in (folder / "requirements.txt").read_text()


def test_a_bad_output_is_refused(reading):
    loaded = mlflow.pyfunc.load_model(reading.record["model_uri"])
    with pytest.raises(ConfigError, match="'codez'"):
        loaded.predict(pd.DataFrame(np.zeros((1, 64))), params={"output": "codez"})


# -- predict_frame on its own --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(logged):
    return logged.result.model


def test_predict_refuses_the_wrong_number_of_columns(model):
    with pytest.raises(ShapeError, match=r"63 columns.*64 values"):
        predict_frame(model, {"kind": "identity"}, pd.DataFrame(np.zeros((2, 63))))


def test_predict_refuses_text_and_missing_values(model):
    text = pd.DataFrame(np.zeros((2, 64))).astype(object)
    text.iloc[0, 3] = "dark"
    with pytest.raises(DataError, match="not numeric"):
        predict_frame(model, {"kind": "identity"}, text)
    holes = np.zeros((3, 64))
    holes[1, 5] = np.nan
    with pytest.raises(DataError, match="1 input rows"):
        predict_frame(model, {"kind": "identity"}, pd.DataFrame(holes))


def test_predict_takes_arrays_and_empty_frames(model):
    assert predict_frame(model, {"kind": "identity"}, np.zeros((3, 64)), "scores").shape == (3, 1)
    empty = predict_frame(model, {"kind": "identity"}, pd.DataFrame(np.zeros((0, 64))))
    assert empty.shape == (0, 4)


# -- when it is on, and what it does when the store fails ------------------------------------------


def test_off_unless_asked(ae_tiny_dataset, tmp_path):
    assert not enabled()
    result = _train(ae_tiny_dataset, tmp_path / "run", epochs=1)
    assert not (result.run_dir / RUN_FILE).exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_zero_keeps_it_off_even_with_a_tracking_uri(ae_tiny_dataset, tracked, monkeypatch, tmp_path):
    monkeypatch.setenv(ENABLE_ENV, "0")
    result = _train(ae_tiny_dataset, tmp_path / "run", epochs=1)
    assert not (result.run_dir / RUN_FILE).exists()
    assert _runs(tracked, os.environ["MLFLOW_EXPERIMENT_NAME"]) == []


def test_one_logs_to_mlflows_default_store(ae_tiny_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv(ENABLE_ENV, "1")
    monkeypatch.setenv(MODEL_ENV, "0")
    result = _train(ae_tiny_dataset, tmp_path / "run", epochs=1)
    record = _record(result.run_dir)
    assert record["tracking_uri"].startswith("sqlite:") and (tmp_path / "mlflow.db").is_file()
    run = MlflowClient(record["tracking_uri"]).get_run(record["run_id"])
    assert run.info.status == "FINISHED" and MODEL_TAG not in run.data.tags and record["model_uri"] is None
    assert MlflowClient(record["tracking_uri"]).get_experiment(run.info.experiment_id).name == "aecore"


def test_inside_an_active_run_it_logs_a_child_run(ae_tiny_dataset, store, monkeypatch, tmp_path):
    client = MlflowClient(store)
    monkeypatch.setenv(MODEL_ENV, "0")
    parent_experiment = client.create_experiment(
        f"parent-{uuid.uuid4().hex[:8]}", artifact_location=(tmp_path / "a").as_uri()
    )
    mlflow.set_tracking_uri(store)
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")  # set_tracking_uri set it: only the active run remains
        with mlflow.start_run(experiment_id=parent_experiment) as parent:
            assert enabled()
            result = _train(ae_tiny_dataset, tmp_path / "run", epochs=1)
    finally:
        mlflow.set_tracking_uri(None)
    child = client.get_run(_record(result.run_dir)["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == parent_experiment and child.info.status == "FINISHED"


def test_a_bad_setting_is_one_warning_and_the_run_goes_on(ae_tiny_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv(ENABLE_ENV, "perhaps")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(ae_tiny_dataset, tmp_path / "run", epochs=1)
    said = _hook_warnings(caught)
    assert len(said) == 1 and "'mlflow'" in said[0] and ENABLE_ENV in said[0]
    assert result.checkpoint.is_file()


def test_an_unusable_store_is_one_warning_and_the_checkpoint_is_kept(ae_tiny_dataset, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(ae_tiny_dataset, tmp_path / "run", epochs=2)
    said = _hook_warnings(caught)
    assert len(said) == 1 and "'mlflow'" in said[0] and "ae_train_start" in said[0]
    assert result.checkpoint.is_file() and len(result.history) == 2
    assert [f["plugin"] for f in result.hook_failures] == ["'mlflow' from aecore-mlflow 0.1.0"]
    assert json.loads((result.run_dir / "metrics.json").read_text())["hook_failures"] == result.hook_failures
    assert not (result.run_dir / RUN_FILE).exists()


def test_unwritable_artifacts_fail_the_mlflow_run_not_the_training(
    ae_tiny_dataset, store, monkeypatch, tmp_path
):
    client = MlflowClient(store)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    name = _experiment(client, blocker / "artifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(ae_tiny_dataset, tmp_path / "run", epochs=2)
    said = _hook_warnings(caught)
    assert len(said) == 1 and "'mlflow'" in said[0] and "ae_train_end" in said[0]
    assert result.checkpoint.is_file()
    run = client.get_run(_record(result.run_dir)["run_id"])
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]


# -- the logger on its own, with a stand-in run ------------------------------------------------


def _fake_run(out_dir: Path, history=None):
    resume = None if history is None else SimpleNamespace(history=history)
    info = {"resumed": history is not None, "encoder": "mlp", "data": "fake"}
    return SimpleNamespace(out_dir=out_dir, info=info, resume=resume)


def test_a_resumed_run_continues_its_mlflow_run(tracked, tmp_path):
    first = MlflowLogger()
    first.ae_train_start(run=_fake_run(tmp_path))
    for epoch in (1, 2):
        first.ae_epoch_end(metrics={"epoch": epoch, "train_loss": 1.0 / epoch})
    run_id = _record(tmp_path)["run_id"]  # then the process is killed

    second = MlflowLogger()
    second.ae_train_start(run=_fake_run(tmp_path, history=[{"epoch": 1}, {"epoch": 2}]))
    assert second.run_id == run_id and tracked.get_run(run_id).info.status == "RUNNING"
    second.ae_epoch_end(metrics={"epoch": 3, "train_loss": 0.25})
    second.ae_train_end(metrics={})
    history = [(m.step, m.value) for m in tracked.get_metric_history(run_id, "train_loss")]
    assert history == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert tracked.get_run(run_id).info.status == "FAILED"


def test_a_resumed_run_from_another_store_starts_a_new_mlflow_run(tracked, tmp_path):
    (tmp_path / RUN_FILE).write_text(json.dumps({"tracking_uri": "sqlite:///elsewhere.db", "run_id": "abc"}))
    logger = MlflowLogger()
    logger.ae_train_start(run=_fake_run(tmp_path, history=[{"epoch": 1}]))
    assert logger.run_id != "abc" and _record(tmp_path)["run_id"] == logger.run_id
    logger.ae_train_end(metrics={})


def test_a_run_that_fails_before_any_epoch_leaves_no_file(tracked, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = MlflowLogger()
    logger.ae_train_start(run=_fake_run(run_dir))
    run_id = logger.run_id
    logger.ae_train_end(metrics={})
    assert list(run_dir.iterdir()) == []
    assert tracked.get_run(run_id).info.status == "FAILED"


def test_requirements_pin_what_pip_can_install():
    pins = requirements({"versions": {"aecore": "0.1.0", "torch": "2.14.1+cu130", "local": "0"}})
    assert "aecore==0.1.0" in pins and "torch==2.14.1" in pins and "pandas" in pins
    assert any(p.startswith("aecore-mlflow==") for p in pins)
    assert not any(p.startswith("local") for p in pins)


def test_flat_config_flattens_parameters():
    meta = {
        "model": {
            "encoder": {"name": "conv", "params": {"channels": [8, 16], "norm": {"kind": "batch"}}},
            "regularizers": [{"name": "sparse", "params": {"weight": 0.1}}],
        },
        "training": {
            "trainer": {"name": "default", "params": {"grad_clip": None}},
            "request": {"data": "mnist"},
        },
    }
    flat = flat_config(meta)
    assert flat["encoder.channels"] == "8,16" and flat["encoder.norm.kind"] == "batch"
    assert flat["regularizers"] == "sparse" and flat["sparse.weight"] == 0.1
    assert flat["data"] == "mnist" and flat["trainer.grad_clip"] is None
