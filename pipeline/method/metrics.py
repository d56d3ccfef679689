"""Evaluation metrics, all derived from one confusion matrix, and replication summaries.

Accuracy, the weighted error rate (WER, Sec. 5.2: mean cost per test prediction), the total
cost (Sec. 5.3.4: sum of the costs of all errors) and every pair error rate are read off the
same confusion matrix and cost matrix, so they can never disagree with one another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from torch import Tensor

from pipeline.errors import UserError
from pipeline.method.costs import CostMatrix

PREDICTION_INTERVAL_LEVEL = 0.90


class MetricsError(UserError):
    """Labels, a confusion matrix or metric values that cannot be evaluated."""


def _labels(labels: Any, name: str) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise MetricsError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise MetricsError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts ``out[y, z]`` of samples with true class y predicted as z (int64, K x K)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise MetricsError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    true, pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise MetricsError(f"y_true has {true.size} labels but y_pred has {pred.size}; they must match")
    for name, array in (("y_true", true), ("y_pred", pred)):
        bad = (array < 0) | (array >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise MetricsError(f"{name}[{i}] = {array[i]} is not a class index in [0, {num_classes - 1}]")
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def check_top_k(top_k: Any, cost: CostMatrix) -> int:
    """``top_k`` (how many of the costliest pairs to report) as an int, clamped to the number of
    off-diagonal pairs of ``cost``."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise MetricsError(f"top_k must be an integer >= 0, got {top_k!r}")
    k = cost.num_classes
    return min(int(top_k), k * (k - 1))


def metrics_from_confusion(confusion: np.ndarray, cost: CostMatrix, top_k: int = 3) -> dict[str, Any]:
    """Every cost-sensitive metric from a confusion matrix and a cost matrix.

    ``pair_error_rate[y, z]`` is P(predict z | true y) for z != y; its diagonal is 0 and the
    off-diagonal entries of a row are NaN when class y never occurs (the rate is undefined).
    ``top_k`` is clamped to the number of off-diagonal pairs; ``top_k = 0`` gives empty lists.
    """
    confusion = np.asarray(confusion)
    k = cost.num_classes
    if confusion.shape != (k, k):
        raise MetricsError(f"confusion must be {k} x {k} to match the cost matrix, got shape {confusion.shape}")
    if not np.issubdtype(confusion.dtype, np.integer) or (confusion < 0).any():
        raise MetricsError("confusion must hold non-negative integer counts")
    top_k = check_top_k(top_k, cost)
    n = int(confusion.sum())
    if n == 0:
        raise MetricsError("the confusion matrix is empty (no samples); metrics are undefined")

    correct = int(np.trace(confusion))
    total_cost = float((confusion * cost.values).sum())
    pair_count = confusion.astype(np.int64, copy=True)
    np.fill_diagonal(pair_count, 0)
    class_count = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pair_rate = pair_count / class_count[:, None]
    np.fill_diagonal(pair_rate, 0.0)

    top = cost.top_pair_indices(top_k) if top_k else []
    return {
        "n": n,
        "accuracy": correct / n,
        "wer": total_cost / n,
        "total_cost": total_cost,
        "error_count": n - correct,
        "confusion": confusion,
        "class_count": class_count,
        "pair_error_count": pair_count,
        "pair_error_rate": pair_rate,
        "classes": cost.classes,
        "top_pairs": [(cost.classes[i], cost.classes[j]) for i, j in top],
        "top_pair_error_rate": [float(pair_rate[i, j]) for i, j in top],
        "top_pair_error_count": [int(pair_count[i, j]) for i, j in top],
    }


def cost_metrics(y_true: Any, y_pred: Any, cost: CostMatrix, top_k: int = 3) -> dict[str, Any]:
    """Metrics of predictions ``y_pred`` against ``y_true`` (class indices) under ``cost``."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, cost.num_classes), cost, top_k)


def _scalar(value: Any) -> float | int | None:
    if isinstance(value, (bool, np.bool_)):
        raise MetricsError(f"expected a number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    number = float(value)
    return None if math.isnan(number) else number


def flat_metrics(m: Mapping[str, Any]) -> dict[str, float | int | None]:
    """The scalar metrics as a flat JSON-ready dict (NaN becomes None, i.e. JSON null)."""
    flat = {key: _scalar(m[key]) for key in ("n", "accuracy", "wer", "total_cost", "error_count")}
    for r, (rate, count) in enumerate(zip(m["top_pair_error_rate"], m["top_pair_error_count"]), start=1):
        flat[f"top{r}_pair_error_rate"] = _scalar(rate)
        flat[f"top{r}_pair_error_count"] = _scalar(count)
    return flat


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and a 90% prediction interval over replications."""

    mean: float
    sd: float
    lower: float
    upper: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Summarise replicated results as the paper does (Fig. 6: mean and 90% prediction interval).

    ``sd`` is the sample standard deviation (ddof = 1). The interval is the Student-t
    prediction interval for one further replication, mean +- t_{0.95, n-1} * sd * sqrt(1 + 1/n),
    which is wider than a confidence interval for the mean because it also covers the spread
    of a single new run. With one value there is no spread to estimate: sd = 0 and the
    interval collapses to (mean, mean).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise MetricsError(f"summarize needs a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        i = int(np.argmax(~np.isfinite(array)))
        raise MetricsError(f"value {i} is {array[i]}; every replicated value must be finite")
    n = int(array.size)
    mean = float(array.mean())
    if n == 1:
        return Summary(mean=mean, sd=0.0, lower=mean, upper=mean, n=1)
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + PREDICTION_INTERVAL_LEVEL / 2, df=n - 1)) * sd * math.sqrt(1 + 1 / n)
    return Summary(mean=mean, sd=sd, lower=mean - half, upper=mean + half, n=n)


def mean_interval(values: Sequence[float], level: float = PREDICTION_INTERVAL_LEVEL) -> Summary:
    """Mean and Student-t confidence interval of the mean, mean +- t_{(1+level)/2, n-1} * sd / sqrt(n).

    For paired differences over replications: does the mean difference exclude 0? Narrower than
    :func:`summarize`'s prediction interval, which covers one further run. One value: no spread,
    the interval collapses to (mean, mean).
    """
    single = summarize(values)
    if single.n == 1:
        return single
    half = float(stats.t.ppf(0.5 + level / 2, df=single.n - 1)) * single.sd / math.sqrt(single.n)
    return Summary(mean=single.mean, sd=single.sd, lower=single.mean - half, upper=single.mean + half, n=single.n)


def aggregate_replications(runs: Sequence[Mapping[str, Any]]) -> dict[str, Summary]:
    """Summaries of each metric key present in every run (in the first run's key order).

    A metric that is undefined (None or NaN) in any run, such as the error rate of a pair
    whose true class is absent from the test set, gets an all-NaN Summary rather than a
    number computed from a subset of the runs.
    """
    if not runs:
        raise MetricsError("aggregate_replications needs at least one run")
    shared = [key for key in runs[0] if all(key in run for run in runs[1:])]
    out = {}
    for key in shared:
        values = [run[key] for run in runs]
        for v in values:
            if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number))):
                raise MetricsError(f"metric {key!r} has non-numeric value {v!r}")
        if any(v is None or math.isnan(v) for v in values):
            nan = float("nan")
            out[key] = Summary(mean=nan, sd=nan, lower=nan, upper=nan, n=len(values))
        else:
            out[key] = summarize(values)
    return out


def format_mean_sd(summary: Summary, scale: float = 1.0, digits: int = 2) -> str:
    """``"mean (sd)"`` as in the paper's tables; ``scale=100`` turns rates into percent."""
    return f"{summary.mean * scale:.{digits}f} ({summary.sd * scale:.{digits}f})"
