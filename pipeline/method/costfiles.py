"""Cost matrices on disk: CSV, YAML and JSON, read strictly and written atomically; and the
matrix params.yaml's ``costs`` section asks for (:func:`build_cost_matrix`).

* CSV: the first row is a corner cell (written as ``true\\predicted``, any text accepted on
  read) followed by the class names; each following row is a true-class name followed by
  that row's costs. The row names must repeat the header names in the same order, so a
  transposed file fails loudly instead of silently swapping costs; the header may list the
  classes in any order (:func:`build_cost_matrix` puts them in the data's).
* YAML / JSON: a mapping ``{classes: [names...], costs: [[row], ...]}``.
* Expert YAML (:func:`expert_from_yaml`): ``{default: 1.0, pairs:
  [{true: a, predicted: b, cost: 10}, ...]}``; the class list comes from the dataset.

The format is chosen by the file's suffix. Every error names the file and the offending cell.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.fileio import atomic_write_text
from pipeline.method.costs import _EXPERT_KEYS, CostMatrix, CostMatrixError, _check_keys, _class_name

CSV_CORNER = "true\\predicted"
_MAPPING_KEYS = ("classes", "costs")
_FORMATS = {".csv": "csv", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def load_costs(path: str | os.PathLike[str]) -> CostMatrix:
    """Read a cost matrix, choosing the format (CSV, YAML, JSON) by the file suffix."""
    reader = _READERS[_format_of(path)]
    if not Path(path).is_file():
        raise CostMatrixError(f"cost file {path} not found")
    return reader(path)


def save_costs(cost: CostMatrix, path: str | os.PathLike[str]) -> None:
    """Write a cost matrix atomically, choosing the format by the file suffix."""
    _WRITERS[_format_of(path)](cost, path)


def from_mapping(data: Any, where: str = "cost mapping") -> CostMatrix:
    _check_keys(data, required=_MAPPING_KEYS, allowed=_MAPPING_KEYS, where=where)
    return _construct_at(where, data["classes"], data["costs"])


def read_csv(path: str | os.PathLike[str]) -> CostMatrix:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle)]
    rows = [row for row in rows if any(row)]
    if not rows:
        raise CostMatrixError(f"{path}: empty CSV; expected a header row of class names")
    if len(rows[0]) == 1:
        other = next((d for d in ";\t|" if d in rows[0][0]), None)
        found = f"its header is split by {other!r}" if other else "its header has one cell"
        raise CostMatrixError(f"{path}: {found}; cost CSVs are comma-separated: a corner cell, then one "
                              "column per class")
    names = [_class_name(c, f"{path}: header column {n}") for n, c in enumerate(rows[0][1:], start=1)]
    values = np.zeros((len(rows) - 1, len(names)))
    for r, row in enumerate(rows[1:]):
        if len(row) != len(names) + 1:
            raise CostMatrixError(
                f"{path}: row {r + 1} has {len(row)} cells, expected {len(names) + 1} (row name + {len(names)} costs)"
            )
        if r >= len(names) or row[0] != names[r]:
            expected = repr(names[r]) if r < len(names) else "no further row"
            raise CostMatrixError(
                f"{path}: row {r + 1} is named {row[0]!r}, expected {expected}; "
                f"row names must equal the header names {names} in the same order"
            )
        for c, cell in enumerate(row[1:]):
            try:
                values[r, c] = float(cell)
            except ValueError:
                raise CostMatrixError(
                    f"{path}: cell c({names[r]!r}, {names[c]!r}) at [{r}, {c}] is {cell!r}, not a number"
                ) from None
    return _construct_at(path, names, values)


def write_csv(cost: CostMatrix, path: str | os.PathLike[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([CSV_CORNER, *cost.classes])
    # repr(float) is the shortest text that reads back to the same float.
    for name, row in zip(cost.classes, cost.values.tolist()):
        writer.writerow([name, *map(repr, row)])
    atomic_write_text(path, buffer.getvalue())


def read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise CostMatrixError(f"{path}: not valid YAML: {exc}") from None


def _read_yaml_matrix(path: str | os.PathLike[str]) -> CostMatrix:
    return from_mapping(read_yaml(path), where=str(path))


def _write_yaml(cost: CostMatrix, path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, yaml.safe_dump(cost.to_dict(), sort_keys=False, default_flow_style=None))


def _read_json(path: str | os.PathLike[str]) -> CostMatrix:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise CostMatrixError(f"{path}: not valid JSON: {exc}") from None
    return from_mapping(data, where=str(path))


def _write_json(cost: CostMatrix, path: str | os.PathLike[str]) -> None:
    atomic_write_text(path, json.dumps(cost.to_dict(), indent=2) + "\n")


_READERS: dict[str, Callable[[str | os.PathLike[str]], CostMatrix]] = {"csv": read_csv, "yaml": _read_yaml_matrix, "json": _read_json}
_WRITERS = {"csv": write_csv, "yaml": _write_yaml, "json": _write_json}


def _format_of(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise CostMatrixError(f"{path}: unknown cost file suffix {suffix!r}; valid suffixes: {sorted(_FORMATS)}")
    return _FORMATS[suffix]


def _construct_at(where: Any, classes: Any, values: Any) -> CostMatrix:
    """Build a CostMatrix, prefixing a validation error with the file it came from."""
    try:
        return CostMatrix(classes, values)
    except CostMatrixError as exc:
        raise CostMatrixError(f"{where}: {exc}") from None


def expert_from_yaml(path: str | os.PathLike[str], classes: Iterable[Any]) -> CostMatrix:
    """Read ``{default: 1.0, pairs: [{true, predicted, cost}, ...]}`` for the given classes."""
    data = read_yaml(path)
    _check_keys(data, required=("pairs",), allowed=_EXPERT_KEYS, where=str(path))
    return CostMatrix.expert(classes, data["pairs"], default=data.get("default", 1.0))


# How params.yaml's ``costs.kind`` builds a matrix for the data set's classes. ``settings`` is the
# validated ``costs`` section (pipeline.config.CostConfig).
COST_KINDS: dict[str, Callable[[list[str], Any], CostMatrix]] = {
    "pareto": lambda classes, s: CostMatrix.pareto(classes, shape=s.pareto_shape, scale=s.pareto_scale,
                                                   seed=s.pareto_seed),
    "single_pair": lambda classes, s: CostMatrix.single_pair(classes, s.true_class, s.predicted_class),
    "expert": lambda classes, s: CostMatrix.expert(classes, s.expert["pairs"], default=s.expert.get("default", 1.0)),
    "file": lambda classes, s: load_costs(s.file),
}


def build_cost_matrix(settings: Any, classes: list[str]) -> CostMatrix:
    """The matrix ``settings.kind`` asks for, in the data set's class order and checked against
    its class names."""
    if settings.kind not in COST_KINDS:
        raise CostMatrixError(f"unknown cost kind {settings.kind!r}; known: {', '.join(COST_KINDS)}")
    cost = COST_KINDS[settings.kind](classes, settings).in_order(classes)
    cost.check_classes(classes)
    return cost
