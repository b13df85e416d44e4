"""Small helpers of the aecore-export tests (import as ``from export_helpers import ...``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from aecore.components import ImageComponent, RegularizerBase
from aecore.config import param
from aecore.model import Autoencoder

#: How close onnxruntime's outputs must be to torch's.
ATOL = 1e-5


def session(path: Path | str | bytes) -> ort.InferenceSession:
    """An onnxruntime session on one thread (the machine is shared), CPU only."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray | Tensor) -> np.ndarray:
    """The session's one output for ``x``, fed to its one input."""
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    (inp,) = sess.get_inputs()
    return sess.run(None, {inp.name: np.ascontiguousarray(array, dtype=np.float32)})[0]


def reference(model: Autoencoder, part: str, x: Tensor) -> np.ndarray:
    """What torch gives for ``part`` in eval mode: ``model.encode``, ``model.decode`` or ``model(x)``."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = {"encoder": model.encode, "decoder": model.decode, "autoencoder": model}[part](x)
    finally:
        model.train(was)
    return out.numpy()


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm running statistics and an affine map far from the defaults, and move the
    variational head off its identity start: eval-mode behaviour then shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
        for name, param in model.named_parameters():
            if ".variational.head." in f".{name}":
                param.add_(0.3 * torch.randn(param.shape, generator=g))
    return model


def one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Assert a CLI failure printed exactly one 'error: ...' line on stderr, no traceback; returns it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception  # an exit, not a crash
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- components that cannot be exported (registered in-process by the tests) --------------------------


@dataclass(frozen=True)
class NoConfig:
    width: int = param(4, "Unused.")


class EigenEncoder(ImageComponent):
    """The eigenvalues of a learned symmetric matrix per sample: an operator ONNX has no translation for."""

    Config = NoConfig

    def __init__(self, config, *, input_shape, latent_dim):
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        self.proj = nn.Linear(math.prod(self.input_shape), latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x.flatten(1))
        return torch.linalg.eigh(h[:, :, None] * h[:, None, :])[0]


class BranchEncoder(EigenEncoder):
    """A forward that takes a branch by the batch's values: a graph cannot hold it."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x.flatten(1))
        if h.sum() > 0:
            return h
        return -h


class SvdCode(RegularizerBase):
    """A code transform through singular values: unexportable, in a regularizer this time."""

    Config = NoConfig

    def transform_code(self, z: Tensor) -> Tensor:
        return z * torch.linalg.svdvals(z[:, :, None] * z[:, None, :])
