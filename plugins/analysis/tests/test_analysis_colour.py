"""The visual commands on colour and non-square images, and their refusal of tables.

Two small models are trained once per session on the synthetic MVTec-like
data of conftest.py: an MLP on 3×32×32 and a conv net on 3×40×24. Every
visual command runs through the CLI on both; the tests read the PNG back
with Pillow and check it is a valid image of the expected size, in colour,
and (for the pixel-exact grids) that its tiles are the model's own inputs
and outputs, channel by channel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import ok, one_line_error
from PIL import Image
from safetensors.torch import load_file

from aecore import checkpoint
from aecore.cli import app
from aecore.data import TensorData
from aecore.sources import load_dataset
from aecore_analysis import latent
from aecore_analysis.plots import image_array, save_grid

#: Model name → (data it was trained on, its image height and width).
COLOUR = {"rgb": ("synthetic", 32, 32), "rgb_conv": ("synthetic?height=40&width=24", 40, 24)}


@pytest.fixture(scope="module")
def runs(trained):
    class Runs(dict):
        def __missing__(self, name):
            self[name] = trained(name)
            return self[name]

    return Runs()


def rgb(path) -> np.ndarray:
    """The PNG as an (H, W, 3) uint8 array, after checking Pillow reads it as a complete image."""
    with Image.open(path) as img:
        img.verify()  # a truncated or corrupt PNG fails here
    with Image.open(path) as img:
        img.load()
        return np.asarray(img.convert("RGB"))


def assert_colour(image: np.ndarray) -> None:
    """Not a grey picture: somewhere the three channels differ."""
    assert not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def tile(image: np.ndarray, row: int, col: int, h: int, w: int, pad: int = 2) -> np.ndarray:
    y, x = pad + row * (h + pad), pad + col * (w + pad)
    return image[y : y + h, x : x + w]


def assert_tile(image: np.ndarray, row: int, col: int, expected: torch.Tensor) -> None:
    """Tile (row, col) holds ``expected`` (C, H, W) in [0, 1] as torchvision writes it, channel by channel."""
    h, w = expected.shape[1:]
    pixels = expected.clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    diff = np.abs(tile(image, row, col, h, w).astype(int) - pixels.astype(int))
    assert diff.max() <= 1, diff.max()  # float rounding may move a level


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_reconstruct_in_colour_at_any_size(runner, runs, name, tmp_path):
    source, h, w = COLOUR[name]
    out = tmp_path / "rec.png"
    ok(runner.invoke(app, ["reconstruct", str(runs[name]), "--n", "5", "--out", str(out)]))
    image = rgb(out)
    assert image.shape == (2 * (h + 2) + 2, 5 * (w + 2) + 2, 3)
    assert_colour(image)
    model = checkpoint.load(runs[name])
    x = load_dataset(source).test.batch(slice(0, 5))
    with torch.no_grad():
        recon = model(x)
    for i in range(5):
        assert_tile(image, 0, i, x[i])
        assert_tile(image, 1, i, recon[i])
    assert_colour(tile(image, 1, 0, h, w))  # the reconstruction itself is in colour, not only the input


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_interpolate_arithmetic_and_sample_in_colour(runner, runs, name, tmp_path):
    source, h, w = COLOUR[name]
    model = checkpoint.load(runs[name])
    test = load_dataset(source).test

    ok(runner.invoke(app, ["interpolate", str(runs[name]), "--steps", "4", "--out", str(tmp_path / "i.png")]))
    image = rgb(tmp_path / "i.png")
    assert image.shape == (h + 4, 4 * (w + 2) + 2, 3)
    z = latent.encode(model, test.batch([0, 1]))
    with torch.no_grad():
        assert_tile(image, 0, 3, model.decode(z[1:])[0])
    assert_colour(image)

    ok(runner.invoke(app, ["arithmetic", str(runs[name]), "--out", str(tmp_path / "a.png")]))
    image = rgb(tmp_path / "a.png")
    assert image.shape == (h + 4, 4 * (w + 2) + 2, 3)
    assert_tile(image, 0, 2, test.batch([2])[0])
    assert_colour(image)

    ok(
        runner.invoke(
            app, ["sample", str(runs[name]), "--n", "6", "--nrow", "3", "--out", str(tmp_path / "s.png")]
        )
    )
    image = rgb(tmp_path / "s.png")
    assert image.shape == (2 * (h + 2) + 2, 3 * (w + 2) + 2, 3)
    assert_colour(image)


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_denoise_in_colour(runner, runs, name, tmp_path):
    _, h, w = COLOUR[name]
    out = tmp_path / "d.png"
    args = ["denoise", str(runs[name]), "--corruption", "denoising", "--count", "3", "--out", str(out)]
    stdout = ok(runner.invoke(app, args))
    assert "PSNR noisy" in stdout
    image = rgb(out)
    assert image.shape == (3 * (h + 2) + 2, 3 * (w + 2) + 2, 3)  # rows noisy, denoised, clean
    assert_colour(tile(image, 2, 0, h, w))  # a clean colour image


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_features_in_colour(runner, runs, name, tmp_path):
    source = COLOUR[name][0]
    out = tmp_path / "f.png"
    ok(runner.invoke(app, ["features", str(runs[name]), "--index", "3", "--out", str(out)]))
    assert_colour(rgb(out))
    tensors = load_file(tmp_path / "f.safetensors")
    assert torch.equal(tensors["input"], load_dataset(source).test.batch([3]))
    if name == "rgb_conv":  # two stride-2 stages: 40×24 → 20×12 → 10×6
        maps = sorted({tuple(v.shape) for k, v in tensors.items() if v.dim() == 4 and k != "input"})
        assert maps == [(1, 4, 20, 12), (1, 8, 10, 6)]
        rgb(tmp_path / "f-maps.png")


def test_features_draws_a_colour_input_as_a_colour_picture():
    image = torch.rand(3, 5, 7)
    array = image_array(image)
    assert array.shape == (5, 7, 3) and np.allclose(array, image.permute(1, 2, 0).numpy())
    assert image_array(torch.rand(1, 5, 7)).shape == (5, 7)  # grey stays (H, W), drawn with the gray map
    with pytest.raises(ValueError):
        image_array(torch.rand(12))
    with pytest.raises(ValueError):
        save_grid(torch.rand(4, 784), "unused.png", nrow=2)  # flat rows are never guessed to be 28×28


def test_to_display_undoes_per_channel_standardisation():
    raw = torch.rand(4, 3, 6, 5)
    norm = {"kind": "standardise", "mean": [[[0.1]], [[0.5]], [[0.9]]], "std": [[[0.2]], [[0.3]], [[0.4]]]}
    data = TensorData(raw, normalisation=norm)
    model_space = data.batch(slice(None))
    assert not torch.allclose(model_space, raw)
    assert torch.allclose(latent.to_display(model_space, norm), raw, atol=1e-6)
    assert torch.allclose(latent.to_display(model_space[0], norm), raw[0], atol=1e-6)  # one image too


# -- tables are refused, each command in one line ------------------------------------------------

REFUSING = ["reconstruct", "interpolate", "arithmetic", "sample", "denoise"]


@pytest.mark.parametrize("command", REFUSING)
def test_visual_commands_refuse_tables(runner, runs, command, tmp_path):
    out = tmp_path / "x.png"
    extra = ["--corruption", "denoising"] if command == "denoise" else []
    result = runner.invoke(app, [command, str(runs["rows"]), *extra, "--out", str(out)])
    one_line_error(result, f"ae {command} draws images", "data 'rows'", "shape (10,)", "not C×H×W")
    assert not out.exists()


def test_features_of_a_table_row_draws_the_input_as_a_row(runner, runs, tmp_path):
    out = tmp_path / "f.png"
    ok(runner.invoke(app, ["features", str(runs["rows"]), "--out", str(out)]))
    assert rgb(out).shape[1] == 800
    assert torch.equal(load_file(tmp_path / "f.safetensors")["input"], load_dataset("rows").test.batch([0]))
