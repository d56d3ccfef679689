"""Misclassification cost matrices: validation, construction, storage and derived weights.

A cost matrix C holds c(y, z), the cost of predicting class z for a sample whose true class
is y (rows = true class, columns = predicted class). Costs are non-negative, need not be
symmetric, and a correct prediction costs nothing, so the diagonal is zero (paper, Sec. 1.1).

The files a matrix is read from and written to (CSV, YAML, JSON, the expert YAML), and the
matrix params.yaml's ``costs`` section asks for, are :mod:`pipeline.method.costfiles`'s; this module
reads no file.

Class names are strings; integer names (as YAML reads an unquoted ``0``) become their
decimal string, so MNIST's ``0..9`` work whether or not a file quotes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError

_EXPERT_KEYS = ("default", "pairs")
_PAIR_KEYS = ("true", "predicted", "cost")


class CostMatrixError(UserError):
    """An invalid cost matrix, cost file or cost specification."""


def _class_name(name: Any, where: str) -> str:
    if isinstance(name, bool) or not isinstance(name, (str, int, np.integer)):
        raise CostMatrixError(f"{where}: class name {name!r} must be a string")
    text = str(name)
    if not text.strip():
        raise CostMatrixError(f"{where}: class names must be non-empty, got {name!r}")
    return text


def _normalise_classes(classes: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(classes, (str, bytes)):
        raise CostMatrixError(f"classes must be a sequence of names, got the string {classes!r}")
    names = tuple(_class_name(c, f"class {i}") for i, c in enumerate(classes))
    if len(names) < 2:
        raise CostMatrixError(f"a cost matrix needs at least 2 classes, got {len(names)}: {list(names)}")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise CostMatrixError(f"duplicate class name {name!r} at positions {seen[name]} and {i}")
        seen[name] = i
    return names


def _finite_number(value: Any, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CostMatrixError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        valid = "> 0" if positive else ">= 0"
        raise CostMatrixError(f"{what} must be finite and {valid}, got {value!r}")
    return number


# The largest cost accepted. Only ratios of costs matter, and sums of costs over a data set (WER,
# the methods' weights) must stay finite in float32 (3.4e38) with room to spare.
MAX_COST = 1e12


class CostMatrix:
    """An immutable K x K matrix of misclassification costs c(y, z) with class names.

    ``values[i, j]`` is the cost of predicting ``classes[j]`` when the truth is ``classes[i]``.
    """

    __slots__ = ("_classes", "_values")

    def __init__(self, classes: Iterable[Any], values: Any) -> None:
        names = _normalise_classes(classes)
        array = self._validate_values(names, values)
        array.setflags(write=False)
        object.__setattr__(self, "_classes", names)
        object.__setattr__(self, "_values", array)

    @staticmethod
    def _validate_values(names: tuple[str, ...], values: Any) -> np.ndarray:
        try:
            array = np.array(values, dtype=np.float64)  # always a private copy
        except (TypeError, ValueError) as exc:
            raise CostMatrixError(f"cost values must be a numeric K x K array: {exc}") from None
        k = len(names)
        if array.ndim != 2 or array.shape[0] != array.shape[1]:
            raise CostMatrixError(f"cost values must be a square 2-D array, got shape {array.shape}")
        if array.shape[0] != k:
            raise CostMatrixError(
                f"cost matrix is {array.shape[0]} x {array.shape[1]} but there are {k} classes {list(names)}"
            )

        def entry(i: int, j: int) -> str:
            return f"c({names[i]!r}, {names[j]!r}) at [{i}, {j}] = {float(array[i, j])!r}"

        checks = (
            (~np.isfinite(array), "costs must be finite (no NaN or infinity)"),
            (array < 0, "costs must be >= 0"),
            (array > MAX_COST, f"costs must be at most {MAX_COST:g} (only their ratios matter: divide every "
                               "cost by a common factor)"),
            (np.eye(k, dtype=bool) & (array != 0), "a correct prediction costs nothing: the diagonal must be 0"),
        )
        for bad, rule in checks:
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise CostMatrixError(f"invalid cost {entry(int(i), int(j))}: {rule}")
        if not (array > 0).any():
            raise CostMatrixError("every cost is 0: at least one off-diagonal pair must have a positive cost")
        return array

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"CostMatrix is immutable; cannot set {name!r}")

    # ------------------------------------------------------------------ basic access

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def values(self) -> np.ndarray:
        """The costs as a read-only float64 array (rows true, columns predicted)."""
        return self._values

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    def index(self, name: Any) -> int:
        """Position of class ``name``; an unknown name raises, listing the known ones."""
        return _lookup(self._classes, name, "class lookup")

    def as_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self._values, dtype=dtype, device=device)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CostMatrix):
            return NotImplemented
        return self._classes == other._classes and np.array_equal(self._values, other._values)

    def __hash__(self) -> int:
        return hash((self._classes, self._values.tobytes()))

    def __repr__(self) -> str:
        names = list(self._classes)
        shown = repr(names) if len(names) <= 6 else f"[{', '.join(map(repr, names[:5]))}, ... +{len(names) - 5}]"
        off = self._values[~np.eye(self.num_classes, dtype=bool)]
        return (
            f"CostMatrix(K={self.num_classes}, classes={shown}, "
            f"off-diagonal costs in [{off.min():g}, {off.max():g}], {int((off > 0).sum())} pairs > 0)"
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def pareto(
        cls, classes: Iterable[Any], shape: float = 1.5, scale: float = 1.0, seed: int = 0
    ) -> CostMatrix:
        """Random costs as in Sec. 5.2: every off-diagonal c(y, z) ~ Pareto(scale=1, shape=1.5).

        This is the classical (type I) Pareto with minimum ``scale`` (x_m) and tail index
        ``shape`` (alpha), support [scale, inf), median scale * 2**(1/shape). NumPy's
        ``Generator.pareto`` samples the Lomax (shifted) variant on [0, inf), so we add 1
        and multiply by ``scale``. Draws fill the off-diagonal entries in row-major order
        from ``np.random.default_rng(seed)``, so a seed fixes the matrix exactly.
        """
        names = _normalise_classes(classes)
        shape = _finite_number(shape, "Pareto shape", positive=True)
        scale = _finite_number(scale, "Pareto scale", positive=True)
        k = len(names)
        rng = np.random.default_rng(seed)
        values = np.zeros((k, k))
        values[~np.eye(k, dtype=bool)] = (rng.pareto(shape, size=k * (k - 1)) + 1.0) * scale
        return cls(names, values)

    @classmethod
    def single_pair(
        cls, classes: Iterable[Any], true_class: Any, predicted_class: Any, cost: float = 1.0
    ) -> CostMatrix:
        """Only one error costs anything (the Sec. 1.1 / 5.1 setting)."""
        return cls.expert(classes, {(true_class, predicted_class): cost}, default=0.0)

    @classmethod
    def expert(
        cls, classes: Iterable[Any], pairs: Mapping[Any, Any] | Sequence[Any], default: float = 1.0
    ) -> CostMatrix:
        """Costs named pair by pair, every other off-diagonal pair costing ``default``.

        ``pairs`` is either ``{(true, predicted): cost}`` or a list whose items are
        ``{"true": ..., "predicted": ..., "cost": ...}`` mappings (the YAML form) or
        ``(true, predicted, cost)`` triples. Sec. 5.3.4 uses four named PMI pairs
        (10, 10, 10, 8) and 1 for all the others.
        """
        names = _normalise_classes(classes)
        default = _finite_number(default, "default cost")
        k = len(names)
        values = np.full((k, k), default)
        np.fill_diagonal(values, 0.0)
        seen: set[tuple[int, int]] = set()
        for n, (true, predicted, cost) in enumerate(_expert_items(pairs)):
            where = f"expert pair {n} ({true!r} -> {predicted!r})"
            i, j = (_lookup(names, c, where) for c in (true, predicted))
            if i == j:
                raise CostMatrixError(f"{where}: a pair must name two different classes; the diagonal is always 0")
            if (i, j) in seen:
                raise CostMatrixError(f"{where}: this pair is given more than once")
            seen.add((i, j))
            values[i, j] = _finite_number(cost, f"{where}: cost")
        return cls(names, values)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self._classes), "costs": self._values.tolist()}

    # ------------------------------------------------------------------ derived quantities

    def pair_weights(self, temperature: float) -> np.ndarray:
        """Normalised pair weights c~(y, z) (Sec. 3, Eq. 5); see :func:`pair_weights`."""
        tau = _finite_number(temperature, "temperature", positive=True)
        return pair_weights(self.as_tensor(torch.float64), tau).numpy()

    def top_pair_indices(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` costliest off-diagonal (true, predicted) index pairs, costliest first.

        Equal costs keep row-major order (row 0 before row 1, then column order).
        """
        n_pairs = self.num_classes * (self.num_classes - 1)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_pairs:
            raise CostMatrixError(f"top-k must be an integer in [1, {n_pairs}] (the off-diagonal pairs), got {k!r}")
        rows, cols = np.nonzero(~np.eye(self.num_classes, dtype=bool))  # row-major order
        order = np.argsort(-self._values[rows, cols], kind="stable")[:k]
        return [(int(rows[o]), int(cols[o])) for o in order]

    def top_pairs(self, k: int) -> list[tuple[str, str]]:
        """The ``k`` costliest off-diagonal (true, predicted) class-name pairs, costliest first."""
        return [(self._classes[i], self._classes[j]) for i, j in self.top_pair_indices(k)]

    def in_order(self, classes: Iterable[Any]) -> CostMatrix:
        """This matrix with its rows and columns in the order of ``classes`` when it names the same
        classes (a file may list them in any order: its names say which cost is which);
        otherwise unchanged, for :meth:`check_classes` to say what differs."""
        wanted = [_class_name(c, "expected class") for c in classes]
        if sorted(wanted) != sorted(self._classes) or wanted == list(self._classes):
            return self
        order = [self._classes.index(name) for name in wanted]
        return CostMatrix(wanted, self._values[np.ix_(order, order)])

    def check_classes(self, expected_classes: Iterable[Any]) -> None:
        """Raise unless this matrix's class names equal ``expected_classes`` in the same order."""
        expected = [_class_name(c, "expected class") for c in expected_classes]
        ours = list(self._classes)
        if expected == ours:
            return
        problems = []
        missing = [c for c in expected if c not in self._classes]
        extra = [c for c in ours if c not in expected]
        if missing:
            problems.append(f"missing from the cost matrix: {missing}")
        if extra:
            problems.append(f"not in the dataset: {extra}")
        if not problems:
            pos = next(i for i, (a, b) in enumerate(zip(expected, ours)) if a != b)
            problems.append(f"order differs at position {pos}: dataset has {expected[pos]!r}, cost matrix {ours[pos]!r}")
        raise CostMatrixError(
            f"cost matrix classes do not match the dataset ({'; '.join(problems)}); dataset classes: {expected}"
        )


# ---------------------------------------------------------------------- helpers

def _check_keys(data: Any, required: Sequence[str], allowed: Sequence[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise CostMatrixError(f"{where}: expected a mapping with keys {list(allowed)}, got {type(data).__name__}")
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise CostMatrixError(f"{where}: unknown keys {unknown}; valid keys: {list(allowed)}")
    absent = [key for key in required if key not in data]
    if absent:
        raise CostMatrixError(f"{where}: missing required keys {absent}")


def _expert_items(pairs: Any) -> list[tuple[Any, Any, Any]]:
    """Normalise the accepted expert-pair spellings to (true, predicted, cost) triples."""
    if isinstance(pairs, Mapping):
        items = []
        for key, cost in pairs.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise CostMatrixError(f"expert pair key {key!r} must be a (true, predicted) tuple")
            items.append((key[0], key[1], cost))
        return items
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise CostMatrixError(
            f"expert pairs must be a mapping {{(true, predicted): cost}} or a list, got {type(pairs).__name__}"
        )
    items = []
    for n, item in enumerate(pairs):
        if isinstance(item, Mapping):
            # YAML 1.1 (PyYAML) reads an unquoted `true:` key as the boolean True.
            item = {("true" if key is True else key): value for key, value in item.items()}
            _check_keys(item, required=_PAIR_KEYS, allowed=_PAIR_KEYS, where=f"expert pair {n}")
            items.append((item["true"], item["predicted"], item["cost"]))
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 3:
            items.append(tuple(item))
        else:
            raise CostMatrixError(
                f"expert pair {n} is {item!r}; expected {{true: ..., predicted: ..., cost: ...}} or (true, predicted, cost)"
            )
    return items


def _lookup(names: tuple[str, ...], name: Any, where: str) -> int:
    text = _class_name(name, where)
    if text not in names:
        raise CostMatrixError(f"{where}: unknown class {text!r}; known classes: {list(names)}")
    return names.index(text)


def pair_weights(cost: torch.Tensor, temperature: float, error_rates: torch.Tensor | None = None) -> torch.Tensor:
    """c~(y, z) = c(y, z)^tau / sum over all pairs of c^tau (section 3, objective (5)).

    A larger temperature concentrates the weight on the costliest pairs; the diagonal stays 0.
    Scaling by the largest cost first cancels in the ratio and keeps c^tau from overflowing for
    heavy-tailed (Pareto) costs and large tau.

    ``error_rates`` (K x K, beyond the paper): weight each pair by how often the model makes that
    error too, c(y, z)^tau * r(y, z), so that augmentation goes where costly errors happen rather
    than to a costly pair the model never confuses (:func:`smoothed_error_rates`).
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise CostMatrixError(f"temperature (tau) must be a finite number > 0, got {temperature!r}")
    off_diagonal = cost.clamp_min(0) * (1 - torch.eye(cost.shape[0], dtype=cost.dtype, device=cost.device))
    largest = off_diagonal.max()
    if not bool(largest > 0):
        raise CostMatrixError("the cost matrix has no positive off-diagonal entry: nothing to be "
                              "cost-sensitive about")
    powered = (off_diagonal / largest) ** temperature
    if error_rates is not None:
        if error_rates.shape != cost.shape or not bool((error_rates >= 0).all()):
            raise CostMatrixError(f"error rates must be a non-negative {tuple(cost.shape)} matrix, "
                                  f"got shape {tuple(error_rates.shape)}")
        powered = powered * error_rates.to(powered.dtype)
    return powered / powered.sum()


def smoothed_error_rates(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """r(y, z) = (n(y, z) + 1) / (n(y) + K): the share of class-y samples predicted z, with one
    pseudo-count per cell (Laplace), so a pair never seen confused keeps a small weight instead
    of none, and a class without samples gets 1/K everywhere."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((labels.long().cpu(), predictions.long().cpu()), torch.ones(len(labels), dtype=torch.float64),
                      accumulate=True)
    return (counts + 1) / (counts.sum(1, keepdim=True) + num_classes)
