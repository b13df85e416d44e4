"""aecore.sklearn: the autoencoder as a scikit-learn transformer and as a PyOD-style outlier detector."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import aecore
import aecore.sklearn as aesk
from aecore import checkpoint
from aecore.errors import AecoreError, CheckpointError, ConfigError, ShapeError
from aecore.sklearn import AutoencoderOutlierDetector, AutoencoderTransformer

#: Small networks: every fit below takes well under a second on one core.
SMALL = {"epochs": 30, "batch_size": 32, "latent_dim": 3, "params": {"encoder": {"hidden": (16,)}}}


def low_rank_table(n: int = 400, features: int = 8, rank: int = 3, seed: int = 0) -> np.ndarray:
    """Rows near a ``rank``-dimensional subspace: an autoencoder with a code of that size fits them."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(rank, features))
    return rng.normal(size=(n, rank)) @ mixing + 0.05 * rng.normal(size=(n, features))


def planted_outliers(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """380 rows near a subspace plus 20 rows off it; labels 1 for the planted ones."""
    inliers = low_rank_table(380, seed=seed)
    rng = np.random.default_rng(seed + 1)
    outliers = rng.normal(scale=3.0, size=(20, inliers.shape[1]))
    X = np.vstack([inliers, outliers])
    y = np.r_[np.zeros(len(inliers), int), np.ones(len(outliers), int)]
    order = rng.permutation(len(X))
    return X[order], y[order]


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return low_rank_table()


@pytest.fixture(scope="module")
def fitted(table) -> AutoencoderTransformer:
    return AutoencoderTransformer(**SMALL).fit(table)


@pytest.fixture(scope="module")
def detection() -> tuple[AutoencoderOutlierDetector, np.ndarray, np.ndarray]:
    X, y = planted_outliers()
    return AutoencoderOutlierDetector(contamination=0.05, **SMALL).fit(X), X, y


def reconstruction_error(estimator: AutoencoderTransformer, X: np.ndarray) -> float:
    return float(((estimator.inverse_transform(estimator.transform(X)) - X) ** 2).mean())


# -- the transformer ---------------------------------------------------------------------------


def test_transform_gives_one_code_per_row_and_inverse_transform_gives_rows_back(fitted, table):
    codes = fitted.transform(table)
    assert codes.shape == (len(table), 3) and codes.dtype == np.float64
    assert fitted.inverse_transform(codes).shape == table.shape
    assert fitted.n_features_in_ == table.shape[1]
    assert list(fitted.get_feature_names_out()) == [f"autoencodertransformer{i}" for i in range(3)]
    assert np.array_equal(fitted.fit_transform(table), codes)  # the same seed: the same model


def test_float32_stays_float32_and_integers_become_float64(table):
    est = AutoencoderTransformer(epochs=1, latent_dim=2)
    assert est.fit_transform(table.astype(np.float32)).dtype == np.float32
    assert est.fit(np.arange(40).reshape(10, 4)).transform(np.ones((2, 4), int)).dtype == np.float64


def test_auto_latent_dim_is_half_the_features_at_most_eight():
    for features, expected in [(1, 1), (5, 2), (12, 6), (40, 8)]:
        X = np.random.default_rng(0).normal(size=(20, features))
        assert AutoencoderTransformer(epochs=1).fit(X).transform(X).shape == (20, expected)


def test_training_improves_the_round_trip_and_score_is_minus_its_error(table):
    once = AutoencoderTransformer(**{**SMALL, "epochs": 1}).fit(table)
    trained = AutoencoderTransformer(**SMALL).fit(table)
    assert reconstruction_error(trained, table) < 0.5 * reconstruction_error(once, table)
    assert trained.score(table) == pytest.approx(-reconstruction_error(trained, table), rel=1e-5)
    assert trained.score(table) > once.score(table)  # higher is better, as GridSearchCV assumes
    assert [h["epoch"] for h in trained.history_] == list(range(1, 31))


def test_tables_get_a_linear_output_so_values_outside_0_1_are_reproduced(fitted, table):
    assert fitted.model_.spec.decoder.params["output_activation"] == "none"
    assert fitted.inverse_transform(fitted.transform(table)).min() < -1
    chosen = AutoencoderTransformer(epochs=1, params={"decoder": {"output_activation": "sigmoid"}})
    assert chosen.fit(table).model_.spec.decoder.params["output_activation"] == "sigmoid"


def test_the_same_seed_gives_the_same_model_and_another_seed_another(table):
    first = AutoencoderTransformer(**SMALL, random_state=3).fit(table).transform(table)
    again = AutoencoderTransformer(**SMALL, random_state=3).fit(table).transform(table)
    other = AutoencoderTransformer(**SMALL, random_state=4).fit(table).transform(table)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
    drawn = AutoencoderTransformer(epochs=1, random_state=np.random.RandomState(0)).fit(table)
    assert drawn.seed_ == np.random.RandomState(0).randint(0, np.iinfo(np.int32).max)


def test_fit_leaves_torch_threads_and_random_state_as_they_were(table, monkeypatch):
    seen = []
    real_train = aesk.train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(aesk, "train", spy)
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    AutoencoderTransformer(epochs=1, n_jobs=threads + 1).fit(table)
    AutoencoderTransformer(epochs=1).fit(table)
    assert seen == [threads + 1, threads]  # n_jobs=None leaves torch's own setting
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_runs_go_to_a_temporary_folder_unless_a_runs_root_is_given(table, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    est = AutoencoderTransformer(epochs=1).fit(table)
    assert est.run_dir_ is None and list(scratch.iterdir()) == []
    kept = AutoencoderTransformer(epochs=1, runs_root=tmp_path / "runs")
    first = kept.fit(table).run_dir_
    second = kept.fit(table).run_dir_  # a refit never reuses a run directory
    assert first != second
    assert (first / "model.safetensors").is_file() and (second / "model.safetensors").is_file()
    assert (first / "metrics.json").is_file()  # the run is an ordinary aecore run


def test_input_shape_reshapes_rows_for_a_conv_encoder():
    images = np.random.default_rng(0).uniform(size=(32, 64))  # 32 flat 1x8x8 images
    est = AutoencoderTransformer(
        "conv", input_shape=(1, 8, 8), latent_dim=4, epochs=1, params={"encoder": {"channels": (4,)}}
    )
    assert est.fit(images).transform(images).shape == (32, 4)
    assert est.model_.input_shape == (1, 8, 8)
    assert est.inverse_transform(est.transform(images)).shape == (32, 64)
    with pytest.raises(ShapeError, match="input_shape"):
        AutoencoderTransformer(input_shape=(1, 8, 7), epochs=1).fit(images)


def test_dataframes_keep_their_column_names(table):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(table, columns=[f"f{i}" for i in range(table.shape[1])])
    est = AutoencoderTransformer(epochs=1, latent_dim=2).fit(frame)
    assert list(est.feature_names_in_) == list(frame.columns)
    out = est.set_output(transform="pandas").transform(frame)
    assert list(out.columns) == ["autoencodertransformer0", "autoencodertransformer1"]
    with pytest.raises(ValueError):
        est.transform(frame.rename(columns={"f0": "other"}))


# -- parameters --------------------------------------------------------------------------------


def test_component_parameters_are_reachable_flat_and_set_params_copies(table):
    given = {"encoder": {"hidden": (16,)}}
    est = AutoencoderTransformer(params=given)
    assert est.get_params()["encoder__hidden"] == (16,)
    assert "encoder__hidden" not in est.get_params(deep=False)
    est.set_params(encoder__hidden=(8,), decoder__hidden=(4,), epochs=1)
    assert est.params == {"encoder": {"hidden": (8,)}, "decoder": {"hidden": (4,)}}
    assert given == {"encoder": {"hidden": (16,)}}  # the caller's dict is never changed in place
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    copy.set_params(**est.get_params())  # deep parameters round-trip
    assert copy.params == est.params
    est.fit(table)
    assert est.model_.spec.encoder.params["hidden"] == [8]
    assert est.model_.spec.decoder.params["hidden"] == [4]


def test_regularizer_parameters_by_name_or_as_reg(table):
    est = AutoencoderTransformer(regularizers="sparse", epochs=1).set_params(sparse__weight=0.25)
    assert est.fit(table).model_.spec.regularizers[0].params["weight"] == 0.25
    est.set_params(reg__weight=0.5)
    assert est.params["reg"] == {"weight": 0.5}
    assert est.fit(table).model_.spec.regularizers[0].params["weight"] == 0.5


def test_set_params_refuses_a_target_that_is_not_part_of_the_model():
    with pytest.raises(ValueError, match="sparse__weight"):
        AutoencoderTransformer().set_params(sparse__weight=1.0)
    with pytest.raises(ValueError):
        AutoencoderTransformer().set_params(nonsense=1)


def test_grid_search_over_a_component_parameter(table):
    base = AutoencoderTransformer(**SMALL)
    search = GridSearchCV(base, {"encoder__hidden": [(1,), (32,)]}, cv=2).fit(table)
    assert len(search.cv_results_["params"]) == 2
    # A one-unit hidden layer cannot carry a three-dimensional code: the wider one wins.
    assert search.best_params_ == {"encoder__hidden": (32,)}
    assert search.best_estimator_.model_.spec.encoder.params["hidden"] == [32]
    assert base.params == SMALL["params"]


def test_a_pipeline_with_a_scaler_handles_features_of_any_scale(table):
    scaled = table * np.array([1e3, 1e-3, 1, 1, 1, 1, 50, 1])
    pipe = make_pipeline(StandardScaler(), AutoencoderTransformer(**SMALL)).fit(scaled)
    manual = AutoencoderTransformer(**SMALL).fit(StandardScaler().fit_transform(scaled))
    assert np.array_equal(pipe.transform(scaled), manual.transform(StandardScaler().fit_transform(scaled)))
    pipe.set_params(autoencodertransformer__encoder__hidden=(4,))
    assert pipe[-1].params["encoder"] == {"hidden": (4,)}


# -- the detector ------------------------------------------------------------------------------


def test_threshold_is_the_contamination_quantile_of_the_training_scores(detection):
    det, X, _ = detection
    assert det.decision_scores_.shape == (len(X),) and det.decision_scores_.dtype == np.float64
    assert det.threshold_ == np.quantile(det.decision_scores_, 0.95)
    assert np.array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    assert det.labels_.mean() == pytest.approx(0.05, abs=1 / len(X))
    assert np.array_equal(det.decision_function(X), det.decision_scores_)


def test_predict_is_0_for_inliers_and_1_above_the_threshold(detection):
    det, X, _ = detection
    scores = det.decision_function(X)
    labels = det.predict(X)
    assert set(np.unique(labels)) == {0, 1}
    assert np.array_equal(labels, (scores > det.threshold_).astype(int))
    assert np.array_equal(labels, det.labels_)
    rows = torch.tensor(X, dtype=torch.float32)
    with torch.no_grad():
        by_hand = ((det.model_(rows) - rows) ** 2).mean(dim=1).double().numpy()
    assert np.allclose(scores, by_hand, rtol=1e-6)  # the score is the per-row mean squared error


@pytest.mark.parametrize("method", ["linear", "unify"])
def test_predict_proba_rows_are_probabilities_that_rise_with_the_score(detection, method):
    det, X, _ = detection
    proba = det.predict_proba(X, method=method)
    assert proba.shape == (len(X), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    assert np.allclose(proba.sum(axis=1), 1.0)
    order = np.argsort(det.decision_function(X))
    assert np.all(np.diff(proba[order, 1]) >= 0)
    assert proba[:, 1].max() > 0.9 and proba[:, 1].min() < 0.1


def test_predict_proba_refuses_an_unknown_method(detection):
    det, X, _ = detection
    with pytest.raises(ConfigError, match="method"):
        det.predict_proba(X, method="softmax")


def test_planted_outliers_score_higher(detection):
    det, X, y = detection
    assert roc_auc_score(y, det.decision_function(X)) > 0.9


def test_fit_predict_gives_the_training_labels():
    X, _ = planted_outliers()
    det = AutoencoderOutlierDetector(contamination=0.05, **SMALL)
    assert np.array_equal(det.fit_predict(X), det.labels_)


@pytest.mark.parametrize("contamination", [0.0, 0.6, -0.1, "0.1", math.nan])
def test_contamination_must_be_a_share_up_to_a_half(contamination, table):
    with pytest.raises(ConfigError, match="contamination"):
        AutoencoderOutlierDetector(contamination=contamination, epochs=1).fit(table)


def test_the_detector_works_after_a_scaler_in_a_pipeline():
    X, y = planted_outliers()
    X = X * np.array([1e3, 1e-3, 1, 1, 1, 1, 50, 1])
    pipe = make_pipeline(StandardScaler(), AutoencoderOutlierDetector(contamination=0.05, **SMALL)).fit(X)
    assert roc_auc_score(y, pipe.decision_function(X)) > 0.9
    assert set(np.unique(pipe.predict(X))) == {0, 1}


# -- saving ------------------------------------------------------------------------------------


def test_save_and_load_give_identical_outputs(fitted, detection, table, tmp_path):
    path = fitted.save(tmp_path / "transformer.safetensors")
    loaded = AutoencoderTransformer.load(path)
    assert np.array_equal(loaded.transform(table), fitted.transform(table))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.n_features_in_ == fitted.n_features_in_ and loaded.history_ == fitted.history_

    det, X, _ = detection
    det_loaded = AutoencoderOutlierDetector.load(det.save(tmp_path / "detector.safetensors"))
    assert np.array_equal(det_loaded.decision_function(X), det.decision_function(X))
    assert det_loaded.threshold_ == det.threshold_
    assert np.array_equal(det_loaded.decision_scores_, det.decision_scores_)
    assert np.array_equal(det_loaded.labels_, det.labels_)
    assert np.array_equal(det_loaded.predict_proba(X), det.predict_proba(X))


def test_a_saved_estimator_is_an_ordinary_aecore_checkpoint(fitted, tmp_path):
    path = fitted.save(tmp_path / "model.safetensors")
    model = aecore.load(path)
    assert model.latent_dim == 3
    record = model.metadata["training"]["sklearn"]
    assert record["estimator"] == "AutoencoderTransformer"
    assert record["params"]["params"] == {"encoder": {"hidden": [16]}}
    assert AutoencoderTransformer.load(tmp_path).n_features_in_ == 8  # a run directory works too


def test_feature_names_survive_save_and_load(table, tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(table, columns=[f"f{i}" for i in range(table.shape[1])])
    est = AutoencoderTransformer(epochs=1).fit(frame)
    loaded = AutoencoderTransformer.load(est.save(tmp_path / "m.safetensors"))
    assert list(loaded.feature_names_in_) == list(frame.columns)
    assert np.array_equal(loaded.transform(frame), est.transform(frame))


def test_a_random_state_object_is_saved_as_the_seed_it_gave(table, tmp_path):
    est = AutoencoderTransformer(epochs=1, random_state=np.random.RandomState(5)).fit(table)
    loaded = AutoencoderTransformer.load(est.save(tmp_path / "m.safetensors"))
    assert loaded.random_state == est.seed_
    refit = clone(loaded).fit(table)
    assert np.array_equal(refit.transform(table), est.transform(table))


def test_pickle_round_trips_a_fitted_estimator(fitted, detection, table):
    again = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(again.transform(table), fitted.transform(table))
    det, X, _ = detection
    det_again = pickle.loads(pickle.dumps(det))
    assert np.array_equal(det_again.predict(X), det.predict(X))


def test_loading_a_plain_checkpoint_is_a_one_line_error(fitted, tmp_path):
    path = checkpoint.save(fitted.model_, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError) as caught:
        AutoencoderTransformer.load(path)
    assert "\n" not in str(caught.value) and "aecore.load" in str(caught.value)


def test_loading_with_the_wrong_class_names_the_right_one(fitted, tmp_path):
    path = fitted.save(tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match=r"AutoencoderTransformer\.load"):
        AutoencoderOutlierDetector.load(path)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r.update(format="other"), "not an aecore.sklearn"),
        (lambda r: r.update(format_version=99), "upgrade aecore"),
        (lambda r: r["params"].update(width=3), "no parameter 'width'"),
        (lambda r: r["fitted"].update(n_features_in_=-1), "n_features_in_"),
        (lambda r: r["fitted"].update(n_features_in_=5), "does not fit"),
        (lambda r: r["fitted"].update(feature_names_in_=["a"]), "feature_names_in_"),
        (lambda r: r["fitted"].update(history_=[{"epoch": "one"}]), "history_"),
        (lambda r: r["fitted"].update(threshold_=None), "threshold_"),
        (lambda r: r["fitted"].update(decision_scores_=[]), "decision_scores_"),
    ],
)
def test_a_damaged_record_is_a_one_line_error(detection, tmp_path, change, fragment):
    det = detection[0]
    meta = aecore.read_metadata(det.save(tmp_path / "good.safetensors"))
    record = meta["training"]["sklearn"]
    change(record)
    path = checkpoint.save(
        det.model_, tmp_path / "bad.safetensors", data=meta["data"], training=meta["training"]
    )
    with pytest.raises(CheckpointError) as caught:
        AutoencoderOutlierDetector.load(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_parameter_json_cannot_hold_is_refused_at_save(table, tmp_path):
    est = AutoencoderTransformer(epochs=1).fit(table)
    est.set_params(params={"encoder": {"hidden": (16,)}, "trainer": {"weight_decay": object()}})
    with pytest.raises(ConfigError, match=r"params\.trainer\.weight_decay"):
        est.save(tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AutoencoderTransformer, AutoencoderOutlierDetector])
def test_an_unfitted_estimator_says_so(cls, table, tmp_path):
    est = cls()
    methods = ["transform", "inverse_transform"] if cls is AutoencoderTransformer else []
    methods += ["decision_function", "predict", "predict_proba"] if cls is AutoencoderOutlierDetector else []
    for name in ["score", *methods]:
        with pytest.raises(NotFittedError):
            getattr(est, name)(table)
    with pytest.raises(NotFittedError):
        est.save(tmp_path / "m.safetensors")


def test_a_wrong_number_of_features_is_a_value_error(fitted, detection, table):
    with pytest.raises(ValueError, match="features"):
        fitted.transform(table[:, :5])
    with pytest.raises(ValueError, match="code size"):
        fitted.inverse_transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="features"):
        detection[0].decision_function(table[:, :5])


@pytest.mark.parametrize(
    ("params", "error", "fragment"),
    [
        ({"latent_dim": 0}, ConfigError, "latent_dim"),
        ({"latent_dim": "big"}, ConfigError, "latent_dim"),
        ({"params": {"encoder": 3}}, ConfigError, "params must map"),
        ({"params": {"encoder": {"nope": 1}}}, ConfigError, "encoder.nope"),
        ({"input_shape": "1x8"}, ShapeError, "input_shape"),
        ({"n_jobs": 0}, ConfigError, "n_jobs"),
        ({"encoder": "no-such-encoder"}, AecoreError, "no-such-encoder"),
        ({"epochs": 0}, ConfigError, "epochs"),
        ({"val_fraction": 1.0}, ConfigError, "val_fraction"),
        ({"random_state": -1}, ConfigError, "random_state"),
        ({"params": {"encodr": {"hidden": (3,)}}}, ConfigError, "Did you mean: encoder"),
    ],
)
def test_bad_parameters_fail_at_fit_in_one_line(table, params, error, fragment):
    with pytest.raises(error) as caught:
        AutoencoderTransformer(**{"epochs": 1, **params}).fit(table)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_values_beyond_float32_are_refused(table):
    big = table.copy()
    big[0, 0] = 1e300
    with pytest.raises(ValueError, match="float32"):
        AutoencoderTransformer(epochs=1).fit(big)


# -- scikit-learn stays optional ---------------------------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_aecore_and_ae_help_do_not_import_sklearn():
    code = (
        "import sys\n"
        "import aecore\n"
        "from aecore.cli import main\n"
        "sys.argv = ['ae', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('sklearn' in sys.modules)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_without_sklearn_the_module_says_how_to_install_it():
    done = _run("import sys\nsys.modules['sklearn'] = None\nimport aecore.sklearn\n")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "pip install scikit-learn" in last
