"""Model selection: k-fold cross-validation of one run request, and grids over any of its settings.

Both train through :func:`aecore.training.train`, the same path as
``ae train``, handing it a :class:`~aecore.RunRequest` and an explicit
:class:`~aecore.data.Dataset`; so every trainer, regularizer and option
behaves exactly as in a single run.

A grid axis names a run setting (``latent_dim``, ``lr``, ``loss``, ...: a
field of :class:`~aecore.RunRequest`) or a component parameter
(``encoder.hidden``, ``sparse.weight``, ``trainer.epochs``: what ``--set``
takes), and lists its values as text. The values are parsed by the
declaration that owns them, as if they had been typed after ``--latent-dim``
or ``--set``, so this module knows no plugin's parameters. Inside one value,
``:`` separates the items of a list (``encoder.hidden=256:128``), because
``,`` separates the values of the axis.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin

import torch

from aecore import registry
from aecore.config import ParamSpec, params_of
from aecore.data import Dataset, TensorData
from aecore.errors import AecoreError, ConfigError, suggest
from aecore.evaluate import EVAL_BATCH
from aecore.losses import build_loss
from aecore.model import Autoencoder, LossFn
from aecore.request import FIXED_TARGETS, ResolvedRun, RunRequest, resolve
from aecore.training.run import check_request

__all__ = [
    "RUN_KEYS",
    "CVResult",
    "FoldResult",
    "GridAxis",
    "SweepPoint",
    "SweepResult",
    "cross_validate",
    "fold_indices",
    "grid_key",
    "grid_points",
    "parse_grid",
    "point_request",
    "sweep",
]

#: The run settings a grid may sweep: every field of the run request but the ``--set`` table
#: (swept as ``TARGET.PARAM``) and where the runs go (the sweep chooses that).
RUN_KEYS: tuple[str, ...] = tuple(
    s.name for s in params_of(RunRequest) if s.name not in ("params", "out", "runs_root", "overwrite")
)
#: Separates the items of a list inside one grid value (``,`` separates the values).
ITEM_SEPARATOR = ":"

_GRID_HELP = "--grid expects KEY=V1,V2,... (for example latent_dim=8,32 or encoder.hidden=256:128,512:256)"


# -- cross-validation --------------------------------------------------------------------------


def fold_indices(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, validation) index pairs of a seeded k-fold split; fold sizes differ by at most one."""
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}.")
    if n < folds:
        raise ConfigError(f"cannot split {n} samples into {folds} folds.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, folds)
    return [(torch.cat([p for j, p in enumerate(parts) if j != i]), parts[i]) for i in range(folds)]


@torch.no_grad()
def _mean_loss(model: Autoencoder, data: TensorData, loss_fn: LossFn, device: torch.device | str) -> float:
    """The training loss on ``data``, averaged over samples like the trainer's validation."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for xb in data.batches(EVAL_BATCH):
            xb = xb.to(device)
            total += float(loss_fn(model(xb), xb).double()) * xb.shape[0]
    finally:
        model.train(was_training)
    return total / len(data)


@dataclass
class FoldResult:
    """One fold: sizes, the loss and reconstruction error on its held-out part."""

    fold: int
    n_train: int
    n_val: int
    val_loss: float
    val_mse_per_pixel: float
    val_sse_per_image: float
    train_loss: float


@dataclass
class CVResult:
    """Per-fold results with the mean and sample standard deviation of the held-out loss."""

    folds: list[FoldResult]
    loss: str

    @property
    def mean(self) -> float:
        return statistics.fmean(f.val_loss for f in self.folds)

    @property
    def std(self) -> float:
        return statistics.stdev(f.val_loss for f in self.folds) if len(self.folds) > 1 else 0.0

    @property
    def mean_sse(self) -> float:
        return statistics.fmean(f.val_sse_per_image for f in self.folds)

    @property
    def std_sse(self) -> float:
        return statistics.stdev(f.val_sse_per_image for f in self.folds) if len(self.folds) > 1 else 0.0


def cross_validate(
    dataset: Dataset,
    request: RunRequest,
    *,
    folds: int = 5,
    keep_dir: Path | None = None,
    overwrite: bool = False,
    on_fold: Callable[[FoldResult], None] | None = None,
    progress: bool = False,
) -> CVResult:
    """Train ``request`` on k-1 folds of the training split and score the held-out fold, k times.

    The folds come from a permutation seeded by ``request.seed`` (after
    keeping ``request.classes``); each fold is ``request`` itself, trained
    on the other folds with no further validation split. Models go to
    ``keep_dir/fold-<i>`` when given, otherwise to a temporary directory
    that is removed afterwards. ``request.out`` is not used.
    """
    from aecore.training import train
    from aecore.training.run import keep_classes

    loss_fn = build_loss(request.loss, check_request(request).loss_params)
    data = dataset.train
    if request.classes is not None:
        data = keep_classes(data, request.classes, dataset.name)
    splits = fold_indices(len(data), folds, request.seed)
    results: list[FoldResult] = []
    with tempfile.TemporaryDirectory(prefix="aecore-cv-") as scratch:
        root = keep_dir if keep_dir is not None else Path(scratch)
        for i, (train_idx, val_idx) in enumerate(splits, start=1):
            part = Dataset(dataset.name, data.subset(train_idx), data.subset(val_idx), dict(dataset.spec))
            fold_request = replace(
                request, out=str(root / f"fold-{i}"), overwrite=overwrite, val_fraction=0.0
            )
            res = train(fold_request, data=part, progress=progress)
            device = next(res.model.parameters()).device
            fold = FoldResult(
                fold=i,
                n_train=len(train_idx),
                n_val=len(val_idx),
                val_loss=_mean_loss(res.model, part.test, loss_fn, device),
                val_mse_per_pixel=res.metrics["test_mse_per_pixel"],
                val_sse_per_image=res.metrics["test_sse_per_image"],
                train_loss=res.metrics.get("train_loss", math.nan),
            )
            results.append(fold)
            if on_fold is not None:
                on_fold(fold)
    return CVResult(results, request.loss)


# -- grids -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxis:
    """One swept setting and its values, as text: ``latent_dim`` = ("8", "32")."""

    key: str
    values: tuple[str, ...]


def parse_grid(items: Sequence[str]) -> list[GridAxis]:
    """``["latent_dim=8,32", "encoder.hidden=256:128,512:256"]`` as axes, checking the keys' form.

    A run setting may be spelt with dashes (``batch-size``); repeated values
    are kept once. Whether a ``TARGET.PARAM`` exists is known only once the
    run's parts are: :func:`point_request` checks that.
    """
    axes: list[GridAxis] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{_GRID_HELP}, got '{item}'.")
        key = grid_key(key)
        values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        if not values:
            raise ConfigError(f"--grid {key}= gives no values; list at least one, e.g. {key}=8,32.")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2.")
        axes.append(GridAxis(key, values))
    if not axes:
        raise ConfigError(
            "nothing to sweep: give --grid KEY=V1,V2,... (e.g. --grid latent_dim=8,32), once per setting."
        )
    return axes


def grid_key(key: str) -> str:
    """A grid key in its canonical spelling (``batch-size`` -> ``batch_size``), or a one-line error."""
    key = key.strip()
    target, dot, name = key.partition(".")
    if dot:
        if not target or not name or "." in name:
            raise ConfigError(f"{_GRID_HELP}; '{key}' is not TARGET.PARAM.")
        return key
    key = key.replace("-", "_")
    if key not in RUN_KEYS:
        hint = " Its runs go under --out-dir." if key in ("out", "runs_root", "overwrite") else ""
        if key == "params":
            hint = " Sweep one parameter as TARGET.PARAM instead, e.g. encoder.hidden."
        raise ConfigError(
            f"--grid {key}: not a run setting that a sweep can vary.{suggest(key, RUN_KEYS)}{hint} "
            f"Give a run setting ({', '.join(RUN_KEYS)}) or TARGET.PARAM (e.g. encoder.hidden, "
            "trainer.epochs, or a regularizer's, as for --set)."
        )
    return key


def grid_points(axes: Sequence[GridAxis]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    return [
        dict(zip((a.key for a in axes), combo, strict=True))
        for combo in itertools.product(*(a.values for a in axes))
    ]


def point_request(base: Mapping[str, Any], point: Mapping[str, str]) -> RunRequest:
    """The run request of one grid point: ``base`` (values as ``RunRequest.from_values`` takes them)
    with the point's settings, each parsed by the declaration that owns it.

    A key that ``base`` already sets is refused: the sweep would silently
    override it. The request is checked (:func:`aecore.training.check_request`), so a wrong
    name or value fails before anything trains.
    """
    values = {k: v for k, v in base.items() if k != "params"}
    params = {str(t): dict(v) for t, v in (base.get("params") or {}).items()}
    run_specs = {s.name: s for s in params_of(RunRequest)}
    for key in point:
        target, dot, name = key.partition(".")
        if dot and name in params.get(target, {}):
            raise ConfigError(f"{key} is set by --set and swept by --grid; give it once.")
        if not dot and key in values:
            flag = (run_specs[key].flags or (f"--{key.replace('_', '-')}",))[0]
            raise ConfigError(f"{key} is given by {flag} and swept by --grid; give it once.")
    try:
        for key, text in point.items():
            if "." not in key:
                values[key] = _items(text) if _is_list(run_specs[key]) else text
        plan = resolve(RunRequest.from_values({**values, "params": params}))  # the parts, preset merged
        for key, text in point.items():
            target, dot, name = key.partition(".")
            if not dot:
                continue
            owner = _config_of(plan, values, target)
            spec = next((s for s in params_of(owner) if s.name == name), None) if owner is not None else None
            params.setdefault(target, {})[name] = (
                _items(text) if spec is not None and _is_list(spec) else text
            )
        request = RunRequest.from_values({**values, "params": params})
        check_request(request)
    except AecoreError as exc:  # say which point: the same message could come from any of them
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        raise type(exc)(f"--grid {label}: {exc}") from None
    return request


def _config_of(plan: ResolvedRun, values: Mapping[str, Any], target: str) -> type | None:
    """The ``Config`` that owns ``TARGET.*`` parameters in this run, or None where there is none."""
    short = {r.rpartition(":")[2]: r for r in plan.regularizers}
    if target == "reg" and len(short) == 1:
        target = next(iter(short))
    if target not in {*FIXED_TARGETS, *short}:
        names = [*FIXED_TARGETS, *short]
        raise ConfigError(
            f"'{target}' is not part of this run.{suggest(target, names)} Parameters belong to encoder., "
            f"decoder., trainer., loss. or a regularizer of the run ({', '.join(short) or 'none'})."
        )
    try:
        if target == "encoder":
            obj = registry.get("encoder", plan.encoder)
        elif target == "decoder":
            obj = registry.get("decoder", plan.decoder or plan.encoder)
        elif target == "trainer":
            obj = registry.get("trainer", str(values.get("trainer") or "default"))
        elif target == "loss":
            obj = registry.get("loss", str(values.get("loss") or "mse"))
        else:
            obj = registry.get("regularizer", short[target])
    except AecoreError:
        return None  # a name that does not exist: training says so in its own words
    config = getattr(obj, "Config", None) if isinstance(obj, type) else None
    return config


def _is_list(spec: ParamSpec) -> bool:
    """Whether the parameter holds a list (a tuple type, possibly optional)."""
    tp = spec.type
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is not None and get_origin(tp) is not tuple and len(args) == 1:
        tp = args[0]
    return get_origin(tp) is tuple


def _items(text: str) -> str:
    """A grid value's list items in the form the declarations parse: ``256:128`` -> ``256,128``."""
    return text.replace(ITEM_SEPARATOR, ",")


@dataclass
class SweepPoint:
    """One trained grid point: its settings as given, its size and its figures."""

    values: dict[str, str]
    data: str
    latent_dim: int
    parameters: int
    compression_ratio: float
    test_sse_per_image: float
    test_mse_per_pixel: float
    test_psnr: float
    train_loss: float
    val_recon: float
    seconds: float

    @property
    def label(self) -> str:
        """``latent_dim=8, encoder.hidden=256:128``."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items())

    def as_row(self) -> dict[str, Any]:
        """The CSV row: the swept settings, then the figures."""
        return {
            **self.values,
            "parameters": self.parameters,
            "compression_ratio": self.compression_ratio,
            "test_sse_per_image": self.test_sse_per_image,
            "test_mse_per_pixel": self.test_mse_per_pixel,
            "test_psnr": self.test_psnr,
            "train_loss": self.train_loss,
            "val_recon": self.val_recon,
            "seconds": self.seconds,
        }


@dataclass
class SweepResult:
    """All grid points in training order, and the swept keys."""

    points: list[SweepPoint]
    keys: list[str]


DataArg = Dataset | Callable[[RunRequest], Dataset] | None


def sweep(
    base: Mapping[str, Any],
    grid: Sequence[GridAxis] | Mapping[str, Sequence[str]],
    *,
    data: DataArg = None,
    keep_dir: Path | None = None,
    overwrite: bool = False,
    on_point: Callable[[SweepPoint], None] | None = None,
    progress: bool = False,
) -> SweepResult:
    """Train every combination of the grid's values on top of ``base``, with the same seed and budget.

    ``base`` holds the run settings that every point shares, as
    ``RunRequest.from_values`` takes them (``{"encoder": "mlp", "epochs": 2}``);
    ``grid`` maps keys to values as text
    (``{"latent_dim": ["8", "32"], "encoder.hidden": ["256:128"]}``). Every
    point's request is built and checked before the first one trains.
    ``data`` is one dataset for every point, a function from a point's
    request to its dataset, or None to load each request's ``data``
    (once per source). Models go to ``keep_dir/<point>`` when given,
    otherwise to a temporary directory.
    """
    from aecore.training import train

    axes = (
        [GridAxis(grid_key(k), tuple(dict.fromkeys(map(str, v)))) for k, v in grid.items()]
        if isinstance(grid, Mapping)
        else list(grid)
    )
    if not axes or any(not a.values for a in axes):
        raise ConfigError("the sweep grid is empty; give at least one value per key.")
    points = grid_points(axes)
    requests = [point_request(base, p) for p in points]  # every mistake before the first run
    loaded: dict[tuple[str | None, str | None], Dataset] = {}

    def dataset_for(request: RunRequest) -> Dataset:
        if isinstance(data, Dataset):
            return data
        if callable(data):
            return data(request)
        key = (request.data, request.data_dir)
        if key not in loaded:
            from aecore.sources import load_dataset

            loaded[key] = load_dataset(request.data, request.data_dir)
        return loaded[key]

    names = _run_names(points)
    results: list[SweepPoint] = []
    with tempfile.TemporaryDirectory(prefix="aecore-sweep-") as scratch:
        root = keep_dir if keep_dir is not None else Path(scratch)
        for point, request, name in zip(points, requests, names, strict=True):
            run_request = replace(request, out=str(root / name), overwrite=overwrite)
            dataset = dataset_for(request)
            start = time.perf_counter()
            res = train(run_request, data=dataset, progress=progress)
            m = res.metrics
            result = SweepPoint(
                values=dict(point),
                data=dataset.name,
                latent_dim=res.model.latent_dim,
                parameters=res.model.num_parameters(),
                compression_ratio=res.model.compression_ratio,
                test_sse_per_image=m["test_sse_per_image"],
                test_mse_per_pixel=m["test_mse_per_pixel"],
                test_psnr=m.get("test_psnr", math.nan),
                train_loss=m.get("train_loss", math.nan),
                val_recon=m.get("val_recon", math.nan),
                seconds=time.perf_counter() - start,
            )
            results.append(result)
            if on_point is not None:
                on_point(result)
    return SweepResult(results, [a.key for a in axes])


def _run_names(points: Sequence[Mapping[str, str]]) -> list[str]:
    """A folder name per point, ``latent_dim=8_encoder.hidden=256-128``, each used once."""
    names: list[str] = []
    for point in points:
        label = "_".join(f"{k}={v}" for k, v in point.items())
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", label).strip("-.") or "point"
        candidate, n = name, 1
        while candidate in names:
            n += 1
            candidate = f"{name}-{n}"
        names.append(candidate)
    return names
