"""The MLflow pyfunc model of an aecore run: codes or anomaly scores for the rows of a DataFrame.

MLflow logs it as a model from code (``model_code.py`` beside this module,
which only builds :class:`AecoreModel`), with the run's ``model.safetensors``
as the artifact ``checkpoint``: no Python object and no weight is pickled.
Loading needs aecore, aecore-mlflow and the plugins the model is built from.

Each row of the input is one sample's values in the units of the training
data before aecore's normalisation (pixels 0-255 for uint8 image sources,
a table's raw columns), flattened in C, H, W order; the checkpoint's
normalisation record is applied as in training. ``output`` chooses what
comes back: ``codes`` (columns ``code_0`` ... ``code_{k-1}``) or ``scores``
(one column ``score``: the mean squared reconstruction error per sample,
aecore-analysis' anomaly score). It is the model config's ``output``
(``codes`` when logged; ``load_model(uri, model_config={"output": "scores"})``)
unless a call passes ``params={"output": ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError, ShapeError
from aecore.model import Autoencoder

__all__ = ["OUTPUTS", "AecoreModel", "check_output", "predict_frame"]

#: What ``predict`` can return.
OUTPUTS = ("codes", "scores")
_BATCH = 1024


class AecoreModel(mlflow.pyfunc.PythonModel):
    """An aecore checkpoint as an MLflow pyfunc model (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import aecore

        path = context.artifacts["checkpoint"]
        self.model = aecore.load(path).eval()
        data = aecore.read_metadata(path).get("data", {})
        self.normalisation = data.get("normalisation") or {"kind": "identity"}
        config = context.model_config or {}
        self.output = check_output(config.get("output", "codes"))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        output = check_output((params or {}).get("output") or self.output)
        return predict_frame(self.model, self.normalisation, model_input, output)


def check_output(output: Any) -> str:
    """``output`` if it is one of :data:`OUTPUTS`, else a one-line ConfigError."""
    if output not in OUTPUTS:
        raise ConfigError(f"output {output!r} is not known; choose 'codes' or 'scores'.")
    return output


@torch.no_grad()
def predict_frame(
    model: Autoencoder, normalisation: Mapping[str, Any], frame: Any, output: str = "codes"
) -> pd.DataFrame:
    """Codes or reconstruction scores of ``frame``'s rows, indexed as ``frame`` (see the module docstring)."""
    check_output(output)
    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(np.asarray(frame))
    shape = tuple(model.input_shape)
    width = math.prod(shape)
    if frame.shape[1] != width:
        dims = "×".join(map(str, shape))
        raise ShapeError(
            f"the input has {frame.shape[1]} columns; this model takes {width} values per row "
            f"(samples of {dims}, flattened in C, H, W order)."
        )
    try:
        values = frame.to_numpy(dtype=np.float32, copy=True)
    except (TypeError, ValueError):
        raise DataError(
            "the input has a column that is not numeric; pass each sample's values as numbers."
        ) from None
    bad = int((~np.isfinite(values)).any(axis=1).sum())
    if bad:
        raise DataError(f"{bad} input rows hold NaN or infinite values; fill or drop them first.")
    data = TensorData(
        torch.from_numpy(values).reshape(len(values), *shape), normalisation=dict(normalisation)
    )
    was_training = model.training
    model.eval()
    parts = []
    try:
        for xb in data.batches(_BATCH):
            if output == "codes":
                parts.append(model.encode(xb).flatten(1).float())
            else:
                parts.append((model(xb).double() - xb.double()).pow(2).flatten(1).mean(dim=1))
    finally:
        model.train(was_training)
    if output == "scores":
        scores = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        return pd.DataFrame({"score": scores.numpy()}, index=frame.index)
    codes = torch.cat(parts) if parts else torch.zeros(0, model.latent_dim)
    columns = [f"code_{i}" for i in range(codes.shape[1])]
    return pd.DataFrame(codes.numpy(), index=frame.index, columns=columns)
