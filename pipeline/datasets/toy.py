"""The paper's 2-D toy problem: three Gaussian classes (Section 4, Table 1).

Coordinates are kept raw (no standardisation): the paper's attack budget (L-inf eps = 1.5) is
stated in these units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapter import (
    DatasetAdapter,
    FetchRequest,
    Inventory,
    no_options,
    read_classes_json,
    read_npz,
    write_npz,
)
from .common import (
    SPLIT_NAMES,
    ArrayDataset,
    ClassificationData,
    DatasetError,
    check_indices,
)

# Class order follows the rows of Table 2 (the cost matrix), so cost[green, blue] = 1 indexes it.
TOY_CLASSES: tuple[str, ...] = ("red", "green", "blue")
TOY_MEANS: Mapping[str, tuple[float, float]] = {
    "red": (0.0, 8.0), "green": (7.0, -6.0), "blue": (-7.0, -6.0),
}
TOY_COVARIANCE: tuple[tuple[float, float], tuple[float, float]] = ((2.0, 0.5), (0.5, 2.0))


def load_toy(*, seed: int = 0, means: Mapping[str, Sequence[float]] | None = None,
             covariance: Sequence[Sequence[float]] | None = None, train_per_class: int = 50,
             test_per_class: int = 500, val_per_class: int = 0) -> ClassificationData:
    """Sample the toy dataset: ``train_per_class``/``test_per_class`` points per class, float32.

    ``means`` overrides some or all class means by name (e.g. ``{"green": (4, -6), "blue": (-4,
    -6)}`` for a harder variant); ``covariance`` replaces the shared 2x2 covariance. Splits are
    drawn in the order train, test, val from one ``np.random.default_rng(seed)``, so adding a
    validation split leaves train and test unchanged. With ``val_per_class == 0`` (the paper's
    setting) the result has no "val" key. Points are ordered by class within each split.
    """
    unknown = sorted(set(means or {}) - set(TOY_CLASSES))
    if unknown:
        raise DatasetError(f"unknown toy class(es) {unknown} in means; known: {', '.join(TOY_CLASSES)}")
    merged = {**TOY_MEANS, **(means or {})}
    mu = np.array([merged[c] for c in TOY_CLASSES], dtype=np.float64)
    if mu.shape != (len(TOY_CLASSES), 2) or not np.isfinite(mu).all():
        raise DatasetError(f"every toy mean must be 2 finite numbers; got {dict(merged)}")
    chol = _cholesky(TOY_COVARIANCE if covariance is None else covariance)
    counts = {"train": train_per_class, "test": test_per_class, "val": val_per_class}
    for key, n in counts.items():
        minimum = 0 if key == "val" else 1
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < minimum:
            raise DatasetError(f"{key}_per_class must be an int >= {minimum}; got {n!r}")

    rng = np.random.default_rng(seed)
    splits = {}
    for key in ("train", "test", "val"):
        n = int(counts[key])
        if n == 0:
            continue
        y = np.repeat(np.arange(len(TOY_CLASSES)), n)
        x = mu[y] + rng.standard_normal((y.shape[0], 2)) @ chol.T
        splits[key] = ArrayDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y))
    ordered = {k: splits[k] for k in ("train", "val", "test") if k in splits}
    return ClassificationData(
        name="toy", classes=list(TOY_CLASSES), splits=ordered, input_shape=(2,),
        metadata={"seed": seed, "means": {c: tuple(map(float, m)) for c, m in zip(TOY_CLASSES, mu)},
                  "covariance": (chol @ chol.T).tolist()})


def _cholesky(covariance: Sequence[Sequence[float]]) -> np.ndarray:
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (2, 2) or not np.isfinite(cov).all() or not np.allclose(cov, cov.T):
        raise DatasetError(f"covariance must be a finite symmetric 2x2 matrix; got {cov.tolist()}")
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise DatasetError(f"covariance must be positive definite; got {cov.tolist()}") from None


# Validation points per class added to Table 1's data, so that model selection has a validation
# set (train and test stay exactly the paper's; see load_toy's draw order).
TOY_VAL_PER_CLASS = 50


class ToyAdapter(DatasetAdapter):
    """``toy.npz`` (``x_<split>``, ``y_<split>`` for train, val, test) and ``classes.json``."""

    name = "toy"
    uses_source = False
    loader = staticmethod(load_toy)

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        data = load_toy(seed=request.seed, val_per_class=TOY_VAL_PER_CLASS)
        arrays = {}
        for split, dataset in data.splits.items():
            arrays[f"x_{split}"], arrays[f"y_{split}"] = dataset.x.numpy(), dataset.y.numpy()
        write_npz(work / "toy.npz", arrays)
        (work / "classes.json").write_text(json.dumps(data.classes) + "\n")
        return {"seed": request.seed, "val_per_class": TOY_VAL_PER_CLASS}

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        arrays = read_npz(raw_dir / "toy.npz")
        sizes = [arrays[f"y_{k}"].shape[0] for k in SPLIT_NAMES]
        bounds = np.cumsum([0] + sizes)
        return Inventory(read_classes_json(raw_dir),
                         np.concatenate([arrays[f"y_{k}"] for k in SPLIT_NAMES]).astype(np.int64),
                         given={k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(SPLIT_NAMES)})

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, **options: Any) -> ClassificationData:
        no_options(self.name, options)
        arrays = read_npz(raw_dir / "toy.npz")
        x = torch.from_numpy(np.concatenate([arrays[f"x_{k}"] for k in SPLIT_NAMES]))
        y = torch.from_numpy(np.concatenate([arrays[f"y_{k}"] for k in SPLIT_NAMES]).astype(np.int64))
        parts = check_indices(parts, y.shape[0], "toy.npz")
        return ClassificationData(name="toy", classes=read_classes_json(raw_dir),
                                  splits={k: ArrayDataset(x[v], y[v]) for k, v in parts.items()},
                                  input_shape=(2,))
