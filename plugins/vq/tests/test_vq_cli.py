"""Integer codes through the CLI: ``ae encode`` writes codebook indices, ``ae decode`` reads them back."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import aecore
from aecore.cli import app
from aecore.data import Dataset
from aecore.testing import tiny_dataset

CONV = {
    "encoder": {"channels": (8, 16), "latent": "spatial"},
    "vq": {"codebook_size": 16, "dim": 16, "layout": "spatial", "restart_after": 4, "buffer_size": 64},
    "trainer": {"epochs": 1, "batch_size": 32},
}


@dataclass(frozen=True)
class TinyConfig:
    pass


class TinyImages:
    """A named source of tiny 1×8×8 images, so that the commands can reload a model's data by name."""

    Config = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        self.config = config

    def load(self, location, *, data_dir, normalisation) -> Dataset:
        return tiny_dataset(n_train=96, n_test=20, shape=(1, 8, 8))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from aecore import registry

    out = tmp_path_factory.mktemp("vq") / "run"
    with registry.registered("dataset", "vqtiny", TinyImages):
        aecore.train(  # a model without a quantiser, for the refusals
            encoder="mlp", data="vqtiny", latent_dim=4, out=str(out.parent / "mlp-run"), progress=False,
            params={"encoder": {"hidden": (8,)}, "trainer": {"epochs": 1}},
        )  # fmt: skip
        aecore.train(
            encoder="conv", regularizers=["vq"], data="vqtiny", latent_dim=64, out=str(out), params=CONV,
            progress=False,
        )  # fmt: skip
        yield out


@pytest.fixture
def cli(run_dir):
    runner = CliRunner()  # the source stays registered while the module's run directory is in use
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


def _expected(run_dir) -> tuple[torch.Tensor, torch.Tensor]:
    model = aecore.load(run_dir / "model.safetensors").eval()
    x = TinyImages(TinyConfig()).load(None, data_dir=None, normalisation=None).test.batch(slice(0, 20))
    with torch.no_grad():
        vq = model.regularizers["vq"]
        return vq.code_indices(model.encoder(x)), model(x)


@pytest.mark.parametrize("suffix", ["safetensors", "npy", "csv"])
def test_encode_writes_indices_and_decode_reads_them_back(cli, run_dir, tmp_path, suffix):
    index, recon = _expected(run_dir)
    codes = tmp_path / f"codes.{suffix}"
    result = cli("encode", run_dir, "--out", codes)
    assert result.exit_code == 0, result.stderr
    assert "code positions" in result.stdout
    if suffix == "safetensors":
        stored = load_file(str(codes))
        assert stored["indices"].dtype == torch.int64 and torch.equal(stored["indices"], index)
        assert "codes" not in stored and stored["labels"].shape == (20,)
    elif suffix == "npy":
        stored = np.load(codes, allow_pickle=False)
        assert stored.dtype == np.int64 and (stored == index.numpy()).all()
    else:
        with codes.open(newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["i0", "i1", "i2", "i3", "label"]
        assert [[int(v) for v in row[:4]] for row in rows[1:]] == index.tolist()

    decoded = tmp_path / "decoded.safetensors"
    result = cli("decode", run_dir, codes, "--out", decoded)
    assert result.exit_code == 0, result.stderr
    assert "20 rows of indices of size 4" in result.stdout
    assert torch.allclose(load_file(str(decoded))["outputs"], recon, atol=1e-6)


def test_float_codes_on_request_and_indices_only_where_a_quantiser_offers_them(cli, run_dir, tmp_path):
    floats = tmp_path / "floats.safetensors"
    assert cli("encode", run_dir, "--no-indices", "--out", floats).exit_code == 0
    codes = load_file(str(floats))["codes"]
    assert codes.dtype == torch.float32 and codes.shape == (20, 64)
    result = cli("decode", run_dir, floats, "--out", tmp_path / "from-floats.safetensors")
    assert result.exit_code == 0, result.stderr
    _, recon = _expected(run_dir)
    assert torch.allclose(load_file(str(tmp_path / "from-floats.safetensors"))["outputs"], recon, atol=1e-6)

    plain = run_dir.parent / "mlp-run"
    one_line_error(cli("encode", plain, "--indices", "--out", tmp_path / "x.safetensors"), "code_indices")
    assert cli("encode", plain, "--out", tmp_path / "plain.safetensors").exit_code == 0
    assert "codes" in load_file(str(tmp_path / "plain.safetensors"))  # no quantiser: float codes as before


def test_out_of_range_or_misshapen_indices_are_one_line_errors(cli, run_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"indices": torch.tensor([[0, 1, 2, 16]])}, str(bad))
    one_line_error(
        cli("decode", run_dir, bad, "--out", tmp_path / "o1.safetensors"), "index 16 is out of range"
    )
    save_file({"indices": torch.tensor([[0, 1, 2]])}, str(bad))
    one_line_error(cli("decode", run_dir, bad, "--out", tmp_path / "o2.safetensors"), "4 indices per row")
    negative = tmp_path / "negative.csv"
    negative.write_text("i0,i1,i2,i3\n0,1,-2,3\n")
    one_line_error(cli("decode", run_dir, negative, "--out", tmp_path / "o3.safetensors"), "negative index")
    words = tmp_path / "words.csv"
    words.write_text("i0,i1,i2,i3\n0,1,two,3\n")
    one_line_error(
        cli("decode", run_dir, words, "--out", tmp_path / "o4.safetensors"), "not all whole numbers"
    )
    one_line_error(cli("decode", run_dir.parent / "mlp-run", tmp_path / "words.csv"), "no code columns")


def test_eval_reports_bits_per_image_and_the_test_codebook_use(cli, run_dir):
    result = cli("eval", run_dir, "--no-pca")
    assert result.exit_code == 0, result.stderr
    assert "vq_bits_per_image" in result.stdout and "16" in result.stdout  # 4 positions × log2 16
    assert "vq_test_perplexity" in result.stdout and "vq_test_used_fraction" in result.stdout


def test_integer_codes_are_found_by_the_methods_not_by_the_name(ae_registry):
    from aecore.composition import compose
    from aecore_analysis.codes import code_indexer, decode_indices, encode_indices
    from aecore_vq import VectorQuantiser

    ae_registry.register("regularizer", "grid", VectorQuantiser)  # the quantiser under another name
    model = compose(
        "mlp", regularizers=("grid", "topk"), input_shape=(1, 8, 8), latent_dim=8,
        params={"encoder": {"hidden": (8,)}, "grid": {"dim": 2, "codebook_size": 4}, "topk": {"k": 3}},
    )  # fmt: skip
    place, found = code_indexer(model)
    assert (place, found) == (0, model.regularizers["grid"])
    data = tiny_dataset(n_train=8, n_test=12, shape=(1, 8, 8)).test
    index = encode_indices(model, data, batch_size=5)
    assert index.shape == (12, 4) and index.dtype == torch.int64
    x = data.batch(slice(0, 12))
    with torch.no_grad():  # the codes pass through the regularizer after the quantiser (topk) as in encode
        assert torch.allclose(decode_indices(model, index, batch_size=5), model.eval()(x), atol=1e-6)
