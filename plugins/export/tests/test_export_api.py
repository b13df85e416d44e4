"""The Python API: metadata, opsets, the self-check, preprocessing, and components that cannot export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from export_helpers import ATOL, BranchEncoder, EigenEncoder, SvdCode, reference, run, session
from torch import nn

import aecore
from aecore import registry
from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore_export import (
    METADATA_KEYS,
    UnexportableError,
    denormalise,
    export_onnx,
    normalise,
    read_onnx_metadata,
)
from aecore_export import onnx_export as impl
from aecore_export.diagnose import operator_name, reason, source_line


def _small(regs: tuple[str, ...] = ()) -> aecore.Autoencoder:
    torch.manual_seed(0)
    params = {"encoder": {"hidden": (8,)}, **({"topk": {"k": 2}} if "topk" in regs else {})}
    return aecore.compose("mlp", regularizers=regs, input_shape=(1, 6, 6), latent_dim=4, params=params)


# -- metadata -------------------------------------------------------------------------------------


def test_metadata_describes_the_checkpoint(trained_run, tmp_path):
    net = aecore.load(trained_run)
    path = export_onnx(trained_run, tmp_path / "enc.onnx", part="encoder")  # a run directory works too
    meta = read_onnx_metadata(path)
    assert set(meta) == set(METADATA_KEYS)
    checkpoint = aecore.read_metadata(trained_run)
    assert meta["aecore.part"] == "encoder"
    assert meta["aecore.input_shape"] == [1, 28, 28]
    assert meta["aecore.latent_dim"] == 6 and meta["aecore.code_shape"] == [6]
    assert (
        meta["aecore.normalisation"]
        == checkpoint["data"]["normalisation"]
        == {"kind": "scale", "divisor": 255.0}
    )
    components = meta["aecore.components"]
    for kind in ("encoder", "decoder"):
        assert components[kind] == checkpoint["model"][kind]
    assert components["regularizers"] == []
    assert meta["aecore.versions"] == checkpoint["versions"]
    assert meta["aecore.version"] == aecore.__version__
    assert meta["aecore.exporter"].startswith("aecore-export ")
    proto = onnx.load(str(path))
    assert proto.producer_name == "aecore-export"
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "code")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.rand(3, 1, 28, 28)
    np.testing.assert_allclose(run(session(path), x), reference(net, "encoder", x), rtol=0, atol=ATOL)


def test_a_model_never_trained_has_no_normalisation_record(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")  # replaced whole, atomically
    export_onnx(_small(("topk",)), path, part="decoder")
    meta = read_onnx_metadata(path)
    assert meta["aecore.normalisation"] is None and meta["aecore.versions"] == {}
    assert [r["name"] for r in meta["aecore.components"]["regularizers"]] == ["topk"]
    assert meta["aecore.part"] == "decoder"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_reading_metadata_of_foreign_or_damaged_files_is_one_line(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(DataError, match=r"junk\.onnx"):
        read_onnx_metadata(junk)
    foreign = tmp_path / "foreign.onnx"
    graph = onnx.helper.make_graph([], "empty", [], [])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(DataError, match="no aecore metadata"):
        read_onnx_metadata(foreign)


# -- modes, options, the self-check -----------------------------------------------------------------


def test_export_leaves_the_model_as_it_found_it(tmp_path):
    net = _small(("variational",)).train()
    net.encoder.eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_onnx(net, tmp_path / "m.onnx")
    assert net.training and not net.encoder.training and net.decoder.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_part_and_opset_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown part 'coder'"):
        export_onnx(_small(), tmp_path / "m.onnx", part="coder")  # type: ignore[arg-type]
    for opset in (3, 10_000, True):
        with pytest.raises(ConfigError, match="out of range"):
            export_onnx(_small(), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


def test_another_opset_is_written_as_asked(tmp_path):
    net = _small()
    path = export_onnx(net, tmp_path / "m.onnx", opset=20)
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 20
    x = torch.rand(4, 1, 6, 6)
    np.testing.assert_allclose(run(session(path), x), reference(net, "autoencoder", x), rtol=0, atol=ATOL)


def test_an_opset_the_exporter_cannot_reach_is_refused_not_silently_changed(tmp_path, monkeypatch):
    real = impl.to_onnx
    monkeypatch.setattr(
        impl, "to_onnx", lambda module, example, opset, names: real(module, example, 18, names)
    )
    with pytest.raises(ConfigError, match=r"opset 17 .*stays at 18"):
        export_onnx(_small(), tmp_path / "m.onnx", opset=17)
    assert not (tmp_path / "m.onnx").exists()


def test_a_graph_that_computes_something_else_is_not_written(tmp_path, monkeypatch):
    other = _small()
    torch.manual_seed(1)
    nn.init.normal_(other.encoder.net[-2].weight)  # the same shapes, other weights
    wrong = impl.to_onnx(
        impl.part_module(other, "encoder").eval(), torch.rand(2, 1, 6, 6), 18, ("input", "code")
    )
    monkeypatch.setattr(impl, "to_onnx", lambda *args: wrong)
    with pytest.raises(UnexportableError, match="does not compute what the model computes"):
        export_onnx(_small(), tmp_path / "m.onnx", part="encoder")
    assert not (tmp_path / "m.onnx").exists()


def test_a_graph_with_a_fixed_batch_size_is_not_written(tmp_path, monkeypatch):
    net = _small()
    fixed = torch.onnx.export(  # no dynamic_shapes: traced for batches of 2 only
        net.decoder.eval(),
        (torch.randn(2, 4),),
        dynamo=True,
        verbose=False,
        opset_version=18,
        input_names=["code"],
        output_names=["reconstruction"],
    ).model_proto
    monkeypatch.setattr(impl, "to_onnx", lambda *args: fixed)
    with pytest.raises(UnexportableError, match="batch of 1") as info:
        export_onnx(net, tmp_path / "m.onnx", part="decoder")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


# -- preprocessing is the caller's: normalise / denormalise -------------------------------------------


def test_normalise_is_what_aecore_feeds_the_model():
    images = aecore.load_dataset("embedded").test
    raw = images.x[:8]
    np.testing.assert_array_equal(
        normalise(raw.numpy(), images.normalisation), images.batch(torch.arange(8)).numpy()
    )
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(20, 5, generator=g) * 3 + 1
    record = {"kind": "standardise", "mean": rows.mean(0).tolist(), "std": rows.std(0).tolist()}
    table = TensorData(rows, None, record)
    np.testing.assert_allclose(
        normalise(rows.numpy(), record), table.batch(torch.arange(20)).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(denormalise(normalise(rows.numpy(), record), record), rows.numpy(), atol=1e-5)
    assert normalise(np.arange(3, dtype=np.uint8), None).dtype == np.float32


# -- components that cannot be exported --------------------------------------------------------------


@pytest.fixture
def unexportable(ae_registry):
    """Registered in-process as installed plugins: encoders eigen and branch, regularizer svdcode."""
    with (
        registry.registered("encoder", "eigen", EigenEncoder, dist="aefake-eigen", version="0.3"),
        registry.registered("encoder", "branch", BranchEncoder),
        registry.registered("regularizer", "svdcode", SvdCode),
    ):
        yield


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and error.value.__cause__ is None and error.value.__suppress_context__
    return text


@pytest.mark.parametrize("part", ["encoder", "autoencoder"])
def test_an_unexportable_encoder_is_named_in_one_line(unexportable, tmp_path, part):
    net = aecore.compose("eigen", "mlp", input_shape=(1, 5, 5), latent_dim=3)
    with pytest.raises(UnexportableError) as error:
        export_onnx(net, tmp_path / "m.onnx", part=part)
    line = _one_line(error)
    assert line.startswith("the encoder 'eigen' (aefake-eigen 0.3) cannot be exported to ONNX: ")
    assert not (tmp_path / "m.onnx").exists()  # (the decoder alone still exports: see the CLI tests)


def test_an_unexportable_code_transform_names_the_regularizer(unexportable, tmp_path):
    net = aecore.compose(
        "mlp",
        regularizers=["svdcode"],
        input_shape=(1, 5, 5),
        latent_dim=3,
        params={"encoder": {"hidden": (6,)}},
    )
    with pytest.raises(UnexportableError) as error:
        export_onnx(net, tmp_path / "m.onnx", part="encoder")
    assert _one_line(error).startswith("the regularizer 'svdcode' (local 0) cannot be exported")


def test_data_dependent_control_flow_names_the_encoder(unexportable, tmp_path):
    net = aecore.compose("branch", "mlp", input_shape=(1, 5, 5), latent_dim=3)
    with pytest.raises(UnexportableError) as error:
        export_onnx(net, tmp_path / "m.onnx", part="encoder")
    assert _one_line(error).startswith("the encoder 'branch' (local 0) cannot be exported")


# -- reading the exporter's errors (made-up messages: only the parsing is tested here) --------------


def _chained(*messages: str) -> Exception:
    """An exception whose cause chain carries ``messages``, outermost first."""
    error: Exception | None = None
    for text in reversed(messages):
        outer = RuntimeError(text)
        outer.__cause__ = error
        error = outer
    assert error is not None
    return error


def test_the_operator_is_found_anywhere_in_the_chain():
    exc = _chained(
        "\x1b[96mstep 3\x1b[0m failed", "No function for <OpOverload(op='aten.foo_bar', overload='out')>"
    )
    assert operator_name(exc) == "aten.foo_bar.out"
    assert reason(exc) == "operator aten.foo_bar.out has no ONNX translation"
    assert (
        operator_name(_chained("node %x = call_function[target=torch.ops.aten.baz.default]"))
        == "aten.baz.default"
    )


def test_the_users_line_is_quoted_and_the_library_frames_skipped(tmp_path):
    library = tmp_path / "lib"
    text = (
        f'  File "{library}/inner.py", line 3, in helper\n    raise_it()\n'
        f'  File "{tmp_path}/my_encoder.py", line 13, in forward\n    if h.sum() > 0:\n'
    )
    exc = _chained("could not guard on a data-dependent expression", text)
    assert source_line(exc, skip=[str(library)]) == "`if h.sum() > 0:` (my_encoder.py:13)"
    assert reason(exc, skip=[str(library)]).endswith(
        "(data-dependent control flow, at `if h.sum() > 0:` (my_encoder.py:13))"
    )


def test_an_unknown_failure_keeps_its_type_and_first_line():
    class OddError(Exception):
        pass

    inner = OddError("\n  something new  \nmore detail")
    outer = RuntimeError("wrapper")
    outer.__cause__ = inner
    assert reason(outer) == "the exporter failed with OddError (something new)"
    assert json.dumps(reason(OddError("x" * 500)))  # long messages are cut, still a string
    assert len(reason(OddError("x" * 500))) < 220
