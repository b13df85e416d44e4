"""Every shipped architecture and forward-changing regularizer: the ONNX file computes what torch does.

Each model is composed small, given non-trivial batch-norm statistics and
variational head, and left in *training* mode: the export must use eval-mode
behaviour (running statistics, the mean code, no dropout) and hand the model
back in the mode it was in. Each part is exported once and run by
onnxruntime on random inputs at batch sizes 1, 7 and 64 and on real images
(the embedded MNIST sample, or colour images made from it), within 1e-5 of
torch.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import ATOL, randomise, reference, run, session

import aecore
from aecore import registry
from aecore.composition import compose_preset
from aecore.model import Autoencoder
from aecore_export import export_onnx

MNIST = (1, 28, 28)
COLOUR = (3, 32, 32)

#: name -> (encoder, regularizers, input shape, latent size, params), or the name of a preset.
#: Between them: mlp with batch norm, dropout and skips; conv with stride-2 and max-pool stages, a
#: collapsing stage, flat and spatial codes, batch norm, even kernels, transposed and bilinear
#: up-stages, a conv head; colour and grey images; and the regularizers that change the forward pass.
CASES: dict[str, tuple | str] = {
    "mlp-bn-dropout-residual": (
        "mlp",
        (),
        MNIST,
        8,
        {"encoder": {"hidden": (16, 12), "batch_norm": True, "dropout": 0.3, "residual": True}},
    ),
    "conv-collapse-bn-upsample": (
        "conv",
        (),
        MNIST,
        6,
        {
            "encoder": {"channels": (4, 6), "collapse": True, "batch_norm": True, "latent": "spatial"},
            "decoder": {"upsample": "upsample", "head": "conv"},
        },
    ),
    "conv-colour-bn": (
        "conv",
        (),
        COLOUR,
        10,
        {"encoder": {"channels": (4, 8, 8), "batch_norm": True, "kernel_size": 4}},
    ),
    "conv-simple": "conv-simple",
    "conv-deep": "conv-deep",
    "conv-strided": "conv-strided",
    "record-30": "record-30",
    "variational": ("mlp", ("variational",), MNIST, 5, {"encoder": {"hidden": (16,)}}),
    "topk": ("conv", ("topk",), COLOUR, 12, {"encoder": {"channels": (4, 8)}, "topk": {"k": 3}}),
    "denoising-contractive": (
        "mlp",
        ("denoising", "contractive"),
        MNIST,
        6,
        {"encoder": {"hidden": (16,)}, "denoising": {"kind": "mask"}},
    ),
}
if "sae" in {c.name for c in registry.list_components("encoder")}:  # aecore-sae, where installed
    CASES.update(
        {
            "sae-batchtopk-trained": ("sae", ("auxk", "batchtopk"), MNIST, 64, {"batchtopk": {"k": 4}}),
            "sae-batchtopk-untrained": ("sae", ("batchtopk",), MNIST, 64, {"batchtopk": {"k": 4}}),
            "sae-jumprelu": ("sae", ("jumprelu",), MNIST, 64, {"encoder": {"activation": "none"}}),
        }
    )
PARTS = ("encoder", "decoder", "autoencoder")


@functools.cache
def model(case: str) -> Autoencoder:
    """The case's model, built once per session, with the same random weights every time."""
    torch.manual_seed(sorted(CASES).index(case))
    recipe = CASES[case]
    if isinstance(recipe, str):
        net = compose_preset(registry.get("preset", recipe))
    else:
        encoder, regs, shape, latent, params = recipe
        net = aecore.compose(encoder, regularizers=regs, input_shape=shape, latent_dim=latent, params=params)
    randomise(net, seed=len(case))
    if case == "sae-batchtopk-trained":  # an evaluation threshold, as training leaves one
        reg = net.regularizers["batchtopk"]
        reg.threshold_batches.fill_(50)
        reg.threshold_average.fill_(0.2 * (1 - 0.99**50))
    return net.train()


@functools.cache
def exported(case: str, part: str, folder: Path) -> Path:
    return export_onnx(model(case), folder / f"{case}-{part}.onnx", part=part)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def _inputs(net: Autoencoder, part: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if part == "decoder":
        return torch.randn(n, net.latent_dim, generator=g)
    return torch.rand(n, *net.input_shape, generator=g)


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_torch_on_random_inputs_at_any_batch_size(case, part, folder):
    net = model(case)
    sess = session(exported(case, part, folder))
    assert net.training  # the export handed the model back in training mode
    for n in (1, 7, 64):
        x = _inputs(net, part, n, seed=n)
        got, want = run(sess, x), reference(net, part, x)
        assert (
            got.shape == want.shape == ((n, net.latent_dim) if part == "encoder" else (n, *net.input_shape))
        )
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_torch_on_real_images(case, part, folder, mnist, colour):
    net = model(case)
    images = mnist if net.input_shape == MNIST else colour
    assert images.shape[1:] == net.input_shape
    x = reference(net, "encoder", images) if part == "decoder" else images  # the decoder gets real codes
    x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    got, want = run(session(exported(case, part, folder)), x), reference(net, part, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_eval_mode_changes_these_models_so_the_parity_tests_can_tell():
    """Batch norm, dropout and the variational code differ between modes: a training-mode export fails."""
    for case in ("mlp-bn-dropout-residual", "conv-deep", "variational"):
        net = copy.deepcopy(model(case))  # a training-mode pass moves the running statistics
        x = _inputs(net, "encoder", 8, seed=1)
        torch.manual_seed(0)
        with torch.no_grad():
            training = net.encode(x).numpy()
        assert np.abs(training - reference(net, "encoder", x)).max() > 1e-3, case


def test_topk_code_is_k_sparse_in_the_file(folder):
    net = model("topk")
    codes = run(session(exported("topk", "encoder", folder)), _inputs(net, "encoder", 32, seed=2))
    assert ((codes != 0).sum(axis=1) == 3).all()


def test_spatial_code_is_flat_in_the_graph_and_shaped_in_the_metadata(folder):
    from aecore_export import read_onnx_metadata

    path = exported("conv-simple", "encoder", folder)  # pool, spatial code 16×14×14
    meta = read_onnx_metadata(path)
    assert meta["aecore.code_shape"] == [16, 14, 14]
    assert meta["aecore.latent_dim"] == 16 * 14 * 14
    (out,) = session(path).get_outputs()
    assert out.name == "code" and out.shape[1:] == [16 * 14 * 14]
