"""A user's own table (CSV or Parquet) as a classification dataset.

Rows are samples; ``label_column`` holds the class; the features are numeric columns (by default
every column except the label and the split column). Class names are the distinct labels as
strings, sorted numerically when every label is an integer (so "2" comes before "10") and as
strings otherwise; a label's class index is its position in that order. A ``split`` column with
values train/val/test fixes the splits; without one, rows are split 6:2:2 per class with a seed.
Features are standardised with the training rows' mean and population std (a constant feature
gets std 1).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapter import DatasetAdapter, FetchRequest, Inventory, no_options
from .common import (
    SPLIT_NAMES,
    ArrayDataset,
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    Normalization,
    check_indices,
    check_split_fractions_named,
    stratified_split,
    train_mean_std,
)

TABLE_READERS = {".csv": "read_csv", ".parquet": "read_parquet", ".pq": "read_parquet"}


def load_table(path: str | os.PathLike[str], label_column: str,
               feature_columns: Sequence[str] | None = None, *, seed: int = 0,
               fractions: Mapping[str, float] | None = None, split_column: str = "split",
               name: str | None = None,
               indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """Load ``path`` (``.csv``, ``.parquet`` or ``.pq``) as (F,) float32 inputs (see module doc).

    ``indices`` (split -> row numbers, e.g. from a manifest) fixes the splits instead of the
    split column or the seeded split.
    """
    frame = read_table(path)
    classes, y = table_labels(frame, label_column, path)
    features = _feature_columns(frame, label_column, feature_columns, split_column, path)
    x_raw = _numeric_features(frame, features, path)
    if indices is not None:
        parts = check_indices(indices, len(frame), f"table {path}")
    else:
        parts = table_splits(frame, y, classes, seed=seed, fractions=fractions,
                             split_column=split_column)
    mean, std = train_mean_std(x_raw[parts["train"]], axis=0)
    x = torch.from_numpy(((x_raw - mean) / std).astype(np.float32))
    y_t = torch.from_numpy(y)
    splits = {k: ArrayDataset(x[idx], y_t[idx]) for k, idx in parts.items()}
    return ClassificationData(
        name=name or Path(path).stem, classes=classes, splits=splits, input_shape=(len(features),),
        normalization=Normalization(mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                                    raw_range=None),
        metadata={"path": os.fspath(path), "features": features, "label_column": label_column,
                  "seed": seed, "split_column": split_column if split_column in frame.columns else None})


def table_labels(frame: Any, label_column: str, path: Any) -> tuple[list[str], np.ndarray]:
    """Class names of ``frame[label_column]`` (see module doc) and each row's class index."""
    if label_column not in frame.columns:
        raise DatasetError(f"label column {label_column!r} not in {path}; "
                           f"columns: {[str(c) for c in frame.columns]}")
    return _encode_labels(frame[label_column], label_column)


def table_splits(frame: Any, y: np.ndarray, classes: Sequence[str], *, seed: int = 0,
                 fractions: Mapping[str, float] | None = None,
                 split_column: str = "split") -> dict[str, np.ndarray]:
    """Row numbers per split: the table's own ``split_column`` if it has one, else 6:2:2 seeded."""
    if split_column in frame.columns:
        return _given_splits(frame[split_column], split_column)
    return stratified_split(y, check_split_fractions_named(fractions), seed, classes)


def read_table(path: str | os.PathLike[str]) -> Any:
    """The table at ``path`` as a pandas DataFrame, chosen by suffix."""
    import pandas as pd

    path = Path(path)
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"unsupported table type {path.suffix!r} for {path}; "
                           f"supported: {', '.join(TABLE_READERS)}")
    if not path.is_file():
        raise DatasetMissingError(f"table {path} does not exist")
    try:
        return getattr(pd, reader)(path)
    except (ValueError, OSError, ImportError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err


def _feature_columns(frame: Any, label_column: str, feature_columns: Sequence[str] | None,
                     split_column: str, path: Any) -> list[str]:
    if feature_columns is None:
        features = [c for c in frame.columns if c not in (label_column, split_column)]
    else:
        features = list(feature_columns)
        absent = [c for c in features if c not in frame.columns]
        if absent:
            raise DatasetError(f"feature column(s) {absent} not in {path}; "
                               f"columns: {[str(c) for c in frame.columns]}")
        if label_column in features:
            raise DatasetError(f"label column {label_column!r} cannot also be a feature")
    if not features:
        raise DatasetError(f"{path} has no feature columns besides {label_column!r}")
    return features


def _numeric_features(frame: Any, features: list[str], path: Any) -> np.ndarray:
    import pandas as pd

    non_numeric = [f"{c!r} ({frame[c].dtype})" for c in features
                   if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DatasetError(f"{path}: feature column(s) {', '.join(non_numeric)} are not numeric; encode them as numbers "
                           "or remove them from the table (every column but the label and split columns is a feature)")
    x = frame[features].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        counts = bad.sum(axis=0)
        listed = ", ".join(f"{features[i]!r} in {int(counts[i])} row(s)" for i in np.flatnonzero(counts))
        raise DatasetError(f"{path}: features contain NaN or infinite values: {listed}; "
                           f"drop or impute those rows first")
    return x


def _encode_labels(column: Any, label_column: str) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    missing = int(column.isna().sum())
    if missing:
        raise DatasetError(f"label column {label_column!r} has {missing} empty value(s)")
    values = column.to_numpy()
    if pd.api.types.is_bool_dtype(column) or not _all_integral(column):
        values = values.astype(str)
    else:
        values = values.astype(np.int64)
    uniques, y = np.unique(values, return_inverse=True)  # sorted: numeric for ints, else lexical
    return [str(u) for u in uniques], y.astype(np.int64)


def _all_integral(column: Any) -> bool:
    import pandas as pd

    if pd.api.types.is_integer_dtype(column):
        return True
    if pd.api.types.is_float_dtype(column):
        return bool(np.all(np.mod(column.to_numpy(), 1) == 0))
    return False


def _given_splits(column: Any, split_column: str) -> dict[str, np.ndarray]:
    values = column.astype(str).str.strip().str.lower().to_numpy()
    unknown = sorted(set(values) - set(SPLIT_NAMES))
    if unknown:
        raise DatasetError(f"split column {split_column!r} has value(s) {unknown}; "
                           f"valid: {', '.join(SPLIT_NAMES)}")
    parts = {k: np.flatnonzero(values == k) for k in SPLIT_NAMES if (values == k).any()}
    if "train" not in parts:
        raise DatasetError(f"split column {split_column!r} marks no row as 'train'")
    return parts


class TableAdapter(DatasetAdapter):
    """``table.csv`` / ``table.parquet`` / ``table.pq``: a copy of the user's file."""

    name = "table"
    needs_source = True
    loader = staticmethod(load_table)

    def instructions(self, raw_dir: Path) -> str:
        return (f"dataset 'table' needs your table: set `data.source` in params.yaml to a "
                f"{' / '.join(TABLE_READERS)} file with one row per sample and a label column "
                f"(data.label_column); fetch copies it to {raw_dir}/.")

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        assert request.source is not None
        suffix = request.source.suffix.lower()
        if not request.source.is_file() or suffix not in TABLE_READERS:
            raise DatasetError(f"data.source for a table must be a {', '.join(TABLE_READERS)} file; "
                               f"got {request.source}")
        shutil.copyfile(request.source, work / f"table{suffix}")
        table_labels(read_table(work / f"table{suffix}"), request.label_column, request.source)
        return {"label_column": request.label_column}

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        frame = read_table(_table_file(raw_dir))
        classes, labels = table_labels(frame, label_column, raw_dir)
        given = table_splits(frame, labels, classes) if "split" in frame.columns else None
        return Inventory(classes, labels, given=given)

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, **options: Any) -> ClassificationData:
        no_options(self.name, options)
        return load_table(_table_file(raw_dir), label_column, indices=parts, name="table")


def _table_file(raw_dir: Path) -> Path:
    found = [raw_dir / f"table{suffix}" for suffix in TABLE_READERS
             if (raw_dir / f"table{suffix}").is_file()]
    if len(found) != 1:
        raise DatasetMissingError(f"{raw_dir} must hold exactly one of "
                                  f"{', '.join('table' + s for s in TABLE_READERS)}; found "
                                  f"{[p.name for p in found]}; run the fetch stage (dvc repro fetch)")
    return found[0]
