"""Checkpoints: safetensors weights + JSON metadata, atomic writes, and every way a file can be wrong."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import re
import struct

import pytest
import safetensors
import safetensors.torch
import torch

import aecore
from aecore import checkpoint
from aecore.composition import compose
from aecore.errors import AecoreError, CheckpointError

MNIST = (1, 28, 28)
DATA = {"name": "embedded", "normalisation": {"kind": "scale", "divisor": 255.0}}
TRAINING = {"trainer": {"name": "default"}, "loss": "mse", "seed": 3}
METRICS = {"test_mse_per_pixel": 0.0123, "epoch": 2}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = compose(
        "conv",
        "mlp",
        ["sparse"],
        input_shape=MNIST,
        latent_dim=8,
        params={"encoder": {"channels": "4,8", "batch_norm": "true"}, "decoder": {"hidden": "16"}},
    )
    # make batch-norm running stats non-trivial so buffers are checked too
    m.train()
    m(torch.rand(16, *MNIST))
    return m.eval()


@pytest.fixture
def saved(model, tmp_path):
    return checkpoint.save(
        model, tmp_path / "model.safetensors", data=DATA, training=TRAINING, metrics=METRICS
    )


def _rewrite(path, meta=None, tensors=None, *, raw_meta=None):
    """Write a safetensors file with the given (possibly edited) metadata and tensors."""
    metadata = (
        {"aecore": raw_meta if raw_meta is not None else json.dumps(meta)} if (meta or raw_meta) else None
    )
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def _parts(path):
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["aecore"])
    return tensors, meta


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_gives_identical_outputs(model, saved):
    loaded = aecore.load(saved)
    assert not loaded.training
    x = torch.rand(5, *MNIST)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.encode(x), model.encode(x))
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert loaded.spec == model.spec


def test_metadata_describes_the_model(model, saved):
    meta = aecore.read_metadata(saved)
    assert meta["format"] == "aecore.checkpoint" and meta["format_version"] == 1
    m = meta["model"]
    assert m["input_shape"] == [1, 28, 28]
    assert m["latent_dim"] == 8
    assert (m["encoder"]["name"], m["encoder"]["dist"]) == ("conv", "aecore-conv")
    assert m["encoder"]["params"]["channels"] == [4, 8]
    assert m["encoder"]["params"]["batch_norm"] is True
    assert (m["decoder"]["name"], m["decoder"]["dist"]) == ("mlp", "aecore-mlp")
    assert m["decoder"]["params"]["hidden"] == [16]
    assert [(r["name"], r["dist"]) for r in m["regularizers"]] == [("sparse", "aecore-sparse")]
    assert m["regularizers"][0]["params"]["kind"] == "l1"
    assert meta["data"] == DATA
    assert meta["data"]["normalisation"] == {"kind": "scale", "divisor": 255.0}
    assert meta["training"] == TRAINING
    assert meta["metrics"] == METRICS
    versions = meta["versions"]
    assert versions["aecore"] == aecore.__version__
    assert versions["torch"] == torch.__version__
    for dist in ("aecore-conv", "aecore-mlp", "aecore-sparse"):
        assert versions[dist] == importlib.metadata.version(dist)
    assert m["encoder"]["version"] == importlib.metadata.version("aecore-conv")


def test_loaded_model_carries_its_metadata(saved):
    assert aecore.load(saved).metadata == aecore.read_metadata(saved)


def test_file_is_plain_safetensors(model, saved):
    with safetensors.safe_open(str(saved), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert set(f.metadata()) == {"aecore"}
        assert json.loads(f.metadata()["aecore"])["model"]["latent_dim"] == 8
        key = next(iter(f.keys()))
        assert torch.equal(f.get_tensor(key), model.state_dict()[key])


def test_loader_never_unpickles(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the checkpoint loader must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    loaded = aecore.load(saved)
    assert loaded.latent_dim == 8


def test_resolve_accepts_a_run_directory(saved, tmp_path):
    assert checkpoint.resolve(tmp_path) == saved
    assert checkpoint.resolve(str(saved)) == saved
    assert aecore.load(tmp_path).spec.latent_dim == 8
    assert aecore.read_metadata(tmp_path)["model"]["latent_dim"] == 8


def test_run_directory_without_checkpoint(tmp_path):
    with pytest.raises(
        CheckpointError, match=re.escape("model.safetensors; pass a .safetensors file or a run directory")
    ):
        checkpoint.resolve(tmp_path)


# -- atomic writes ----------------------------------------------------------------------------


def test_write_leaves_no_temporary_files(model, tmp_path):
    target = tmp_path / "deep" / "er" / "model.safetensors"
    checkpoint.save(model, target)
    checkpoint.save(model, target)  # overwriting works too
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask  # normal permissions, not mkstemp's 0600


def test_failed_write_keeps_the_existing_file(model, saved, monkeypatch):
    before = saved.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    other = compose("mlp", input_shape=(3,), latent_dim=1)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="disk full"):
            checkpoint.save(other, saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["model.safetensors"]


def test_failed_payload_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "x.safetensors"

    def boom(fd):
        raise OSError("I/O error")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", boom)
        with pytest.raises(OSError, match="I/O error"):
            checkpoint.atomic_write_bytes(target, b"payload")
    assert list(tmp_path.iterdir()) == []


# -- error paths -------------------------------------------------------------------------------


def _expect_error(path, *fragments):
    for fn in (aecore.load, aecore.read_metadata):
        with pytest.raises(CheckpointError) as excinfo:
            fn(path)
        message = str(excinfo.value)
        assert str(path) in message
        for fragment in fragments:
            assert fragment in message, message
        assert "\n" not in message
    assert isinstance(excinfo.value, AecoreError)
    return excinfo.value


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.safetensors", "no checkpoint at")


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    _expect_error(cut, "truncated")


def test_truncated_inside_the_header(saved, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(saved.read_bytes()[:50])
    _expect_error(cut, "truncated")


def test_empty_and_tiny_files(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _expect_error(empty, "not a safetensors file", "0 bytes")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    _expect_error(tiny, "not a safetensors file")


def test_random_bytes(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(range(256)) * 40)
    _expect_error(junk, "not a safetensors file")


def test_text_file(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are my notes, not a model\n" * 20)
    _expect_error(text, "not a safetensors file")


def test_small_header_that_is_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\0" * 16)
    _expect_error(path, "not a safetensors file", "unreadable header")


def test_header_that_is_not_a_table(tmp_path):
    path = tmp_path / "list.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    _expect_error(path, "header is not a table")


def test_header_declaring_a_huge_size(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b'{"__metadata__": {}}')
    _expect_error(path, "header claims 4611686018427387904 bytes")


def test_header_larger_than_the_limit_even_if_the_file_is_big(tmp_path):
    path = tmp_path / "big.safetensors"
    size = 100 * 1024 * 1024 + 1
    with path.open("wb") as f:
        f.write(struct.pack("<Q", size))
        f.truncate(8 + size + 10)  # sparse file: does not really use the disk
    _expect_error(path, "header claims")


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "F32", "shape": [1]}},  # no data_offsets
        {"w": "not an entry"},
        {"w": {"dtype": "F32", "shape": [1], "data_offsets": "x"}},
        {"__metadata__": "not a table"},
        {"__metadata__": {"aecore": 5}},
    ],
)
def test_malformed_header_entries(tmp_path, header):
    raw = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    _expect_error(path)


def test_tensor_data_beyond_the_end(saved, tmp_path):
    tensors, meta = _parts(saved)
    path = tmp_path / "short.safetensors"
    _rewrite(path, meta, tensors)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + n + 4])  # header intact, tensors cut off
    _expect_error(path, "truncated", "header needs")


def test_metadata_missing(model, tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(dict(model.state_dict()), str(path))
    _expect_error(path, "has no aecore metadata")


def test_other_metadata_only(model, tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file(dict(model.state_dict()), str(path), metadata={"format": "pt"})
    _expect_error(path, "has no aecore metadata")


def test_metadata_not_json(saved, tmp_path):
    tensors, _ = _parts(saved)
    path = tmp_path / "notjson.safetensors"
    _rewrite(path, tensors=tensors, raw_meta="{this is not json")
    _expect_error(path, "metadata that is not valid JSON")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.update(format="something.else"), "is not an aecore checkpoint description"),
        (lambda m: m.pop("model"), "lacks the model description"),
        (lambda m: m.update(format_version=99), "uses checkpoint format 99"),
        (lambda m: m.update(format_version="1"), "invalid format_version '1'"),
    ],
)
def test_metadata_with_wrong_structure(saved, tmp_path, edit, fragment):
    tensors, meta = _parts(saved)
    edit(meta)
    path = tmp_path / "edited.safetensors"
    _rewrite(path, meta, tensors)
    _expect_error(path, fragment)


def test_metadata_json_that_is_not_an_object(saved, tmp_path):
    tensors, _ = _parts(saved)
    path = tmp_path / "list.safetensors"
    _rewrite(path, tensors=tensors, raw_meta="[1, 2]")
    _expect_error(path, "is not an aecore checkpoint description")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["model"].pop("encoder"),
        lambda m: m["model"].update(latent_dim="eight"),
        lambda m: m["model"].update(input_shape=5),
        lambda m: m["model"]["decoder"].update(params="hidden=16"),
        lambda m: m["model"]["decoder"].update(params=5),
        lambda m: m["model"]["encoder"].update(name=7),
        lambda m: m["model"].update(regularizers=[{"name": "sparse"}]),
        lambda m: m["model"].update(regularizers=["sparse"]),
    ],
)
def test_malformed_model_description(saved, tmp_path, edit):
    tensors, meta = _parts(saved)
    edit(meta)
    path = tmp_path / "noenc.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError, match="malformed model description"):
        aecore.load(path)


def test_plugin_not_installed_names_the_distribution(saved, tmp_path):
    tensors, meta = _parts(saved)
    meta["model"]["encoder"]["name"] = "fancy"
    meta["model"]["encoder"]["dist"] = "aecore-fancy"
    meta["model"]["encoder"]["version"] = "3.1"
    path = tmp_path / "fancy.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError) as excinfo:
        aecore.load(path)
    message = str(excinfo.value)
    assert "needs encoder 'fancy' from 'aecore-fancy' (version 3.1)" in message
    assert "pip install aecore-fancy" in message
    # metadata alone can still be read: 'ae' can tell the user what the file holds
    assert aecore.read_metadata(path)["model"]["encoder"]["dist"] == "aecore-fancy"


def test_same_name_from_another_distribution_is_not_silently_used(saved, tmp_path):
    tensors, meta = _parts(saved)
    meta["model"]["regularizers"][0]["dist"] = "someone-elses-sparse"
    path = tmp_path / "fork.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError) as excinfo:
        aecore.load(path)
    assert "aecore-sparse provides one, which may differ" in str(excinfo.value)
    assert "pip install someone-elses-sparse" in str(excinfo.value)


def test_params_that_no_longer_validate(saved, tmp_path):
    tensors, meta = _parts(saved)
    meta["model"]["decoder"]["params"]["hidden"] = "wide"
    path = tmp_path / "badparam.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(
        CheckpointError, match=re.escape("cannot be rebuilt: bad value 'wide' for 'decoder.hidden'")
    ):
        aecore.load(path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["model"].update(latent_dim=9),
        lambda m: m["model"]["decoder"]["params"].update(hidden=[17]),
        lambda m: m["model"]["encoder"]["params"].update(batch_norm=False),  # unexpected keys in the file
    ],
)
def test_tensor_shapes_that_disagree_with_the_metadata(saved, tmp_path, edit):
    tensors, meta = _parts(saved)
    edit(meta)
    path = tmp_path / "mismatch.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError) as excinfo:
        aecore.load(path)
    message = str(excinfo.value)
    assert "weights do not match its metadata" in message
    assert "\n" not in message


def test_missing_tensor(saved, tmp_path):
    tensors, meta = _parts(saved)
    del tensors[next(k for k in tensors if k.startswith("decoder."))]
    path = tmp_path / "missing.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError, match=r"weights do not match its metadata: .*which the file lacks"):
        aecore.load(path)


# -- every field checked before anything is built (issue 15) ------------------------------------


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.update(data="embedded"), "malformed 'data' entry"),
        (lambda m: m["data"].update(name=5), "data.name 5"),
        (lambda m: m["data"].update(classes=["x"]), "data.classes"),
        (lambda m: m["data"].update(classes=[True]), "data.classes"),
        (lambda m: m["data"].update(data_dir=["a"]), "data.data_dir"),
        (lambda m: m["data"].update(normalisation=[1]), "data.normalisation"),
        (lambda m: m["data"]["normalisation"].update(divisor="x"), "divisor"),
        (lambda m: m["data"]["normalisation"].update(divisor=0), "divisor"),
        (lambda m: m["data"]["normalisation"].update(mean=["a"]), "mean"),
        (lambda m: m["data"]["normalisation"].update(mean=[0.0] * 3), "mean has shape (3,)"),
        (lambda m: m["data"]["normalisation"].update(std=[[0.0] * 28] * 28), "std"),
        (lambda m: m["training"].update(trainer="default"), "training.trainer"),
        (lambda m: m["training"].update(seed="3"), "training.seed"),
        (lambda m: m["metrics"].update(test_mse="low"), "metrics.test_mse"),
        (lambda m: m["versions"].update(torch=[2]), "versions.torch"),
        (lambda m: m["model"].update(latent_dim=4.7), "latent_dim 4.7 is not a positive integer"),
        (lambda m: m["model"].update(latent_dim=10**12), "latent_dim 1,000,000,000,000"),
        (lambda m: m["model"].update(input_shape=[10**6] * 3), "input_shape"),
    ],
)
def test_metadata_fields_are_checked_by_type_and_range(saved, tmp_path, edit, fragment):
    tensors, meta = _parts(saved)
    edit(meta)
    path = tmp_path / "edited.safetensors"
    _rewrite(path, meta, tensors)
    _expect_error(path, fragment)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m["model"]["decoder"]["params"].update(hidden=[10**5]), "check decoder.hidden [100000]"),
        (lambda m: m["model"].update(latent_dim=2**20), "check latent_dim 1048576"),
    ],
)
def test_a_huge_size_in_the_metadata_is_refused_before_allocating_naming_the_field(
    saved, tmp_path, monkeypatch, edit, fragment
):
    tensors, meta = _parts(saved)
    edit(meta)
    path = tmp_path / "huge.safetensors"
    _rewrite(path, meta, tensors)
    built, real = [], checkpoint._rebuild

    def rebuild(spec):
        built.append(torch.empty(0).device.type)  # where a build would allocate its tensors
        return real(spec)

    monkeypatch.setattr(checkpoint, "_rebuild", rebuild)
    with pytest.raises(CheckpointError, match="weights do not match its metadata") as excinfo:
        aecore.load(path)
    assert fragment in str(excinfo.value)
    assert built == ["meta"]  # only the allocation-free build ran


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda t: t.update({k: v.double() for k, v in t.items() if k.startswith("encoder.")}),
            "stored as F64",
        ),
        (
            lambda t: t.update({k: v.long() for k, v in t.items() if k.startswith("decoder.")}),
            "stored as I64",
        ),
        (lambda t: t.update(extra=torch.zeros(2)), "the file has 'extra'"),
        (
            lambda t: t.update({k: v * float("nan") for k, v in t.items() if k.endswith("bias")}),
            "NaN or infinite",
        ),
    ],
)
def test_stored_tensors_must_be_the_described_models(saved, tmp_path, change, fragment):
    tensors, meta = _parts(saved)
    change(tensors)
    path = tmp_path / "changed.safetensors"
    _rewrite(path, meta, tensors)
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        aecore.load(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]},  # offsets that hold one value, not two
        {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},  # a gap before the tensor
    ],
)
def test_header_entries_are_checked_one_by_one(tmp_path, entry):
    raw = json.dumps({"w": entry}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    _expect_error(path, "not a safetensors file")


def test_inspect_shows_metadata_text_as_text_never_as_markup(saved, tmp_path):
    from typer.testing import CliRunner

    from aecore.cli import app

    tensors, meta = _parts(saved)
    meta["model"]["encoder"]["name"] = "[/x]"
    meta["data"]["name"] = "[bold]embedded[/bold]"
    meta["metrics"]["[/y]"] = 1.0
    path = tmp_path / "markup.safetensors"
    _rewrite(path, meta, tensors)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.stdout and "[bold]embedded[/bold]" in result.stdout
