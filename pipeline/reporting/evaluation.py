"""Evaluate trained runs under every decision rule and write the results DVC tracks.

One evaluated model is a :class:`RunPredictions`: its test-set scores, the true labels and,
optionally, its training history. The baseline is the run ``method="baseline"`` with
``replication=None``; every other method has replications 0, 1, ... . Each run is scored under
every decision rule of :data:`RULES` ("argmax", "expected_cost" and "calibrated_expected_cost",
which uses the run's validation-fitted ``temperature``), with every number read off one
confusion matrix by :func:`pipeline.method.metrics.cost_metrics`.

Shapes
------
``summarize_runs`` returns the *evaluation*, one entry per method::

    {method: {"summary": {rule: {metric: {"mean", "sd", "lower", "upper", "n"}}},
              "runs":    {run: {rule: {metric: value}}}}}

``metric`` is every scalar of :func:`pipeline.method.metrics.flat_metrics`: ``n``, ``accuracy``,
``wer``, ``total_cost``, ``error_count`` and ``top{r}_pair_error_rate`` /
``top{r}_pair_error_count`` for r = 1..top_k (pairs ranked by cost, costliest first). ``mean``
and ``sd`` (ddof 1) are over replications; ``lower``/``upper`` bound the 90% prediction interval
of :func:`pipeline.method.metrics.summarize`. A single run (the baseline) has the same shape with
``n = 1``, ``sd = 0`` and ``lower = upper = mean``, so every method reads alike in
``dvc metrics show/diff``. ``run`` names a run: ``"baseline"``, ``"csada-r0"``, ``"csada-r1"``...

``metrics_summary(evaluation)`` keeps only the ``summary`` part,
``{method: {rule: {metric: stats}}}``: ``summary.json``, what :mod:`pipeline.reporting.report` renders.
Undefined values (the error rate of a pair whose true class never occurs in the test set) are
JSON ``null``.

Files written by :func:`pipeline.reporting.outputs.write_evaluation`, under its ``out_dir``
----------------------------------------------------------------------
* ``metrics/headline.json``      the DVC metric, first ``recommended``: the chosen model's method,
                                 decision rule, test WER and accuracy; then for each method the mean
                                 WER under argmax and calibrated expected cost and the mean
                                 accuracy under argmax
                                 (:data:`HEADLINE`), the baseline first. Its keys keep that order
                                 (DVC shows the columns in the file's order).
* ``summary.json``               ``{"methods": <the summary above>, "recommendation": ...,
                                 "temperatures": {run: T}, "identical_predictions": ...}``: sd,
                                 intervals, every top-k pair, the recommended model, each model's
                                 fitted temperature, and per rule the methods whose test predictions
                                 coincide (:func:`identical_predictions`).
* ``recommendation.json``        the (method, decision rule) of lowest validation WER (:func:`recommend`)
                                 with its test WER and accuracy, the baseline's, and the paired
                                 difference (:func:`recommendation_record`), for a CI job to gate on;
                                 under ``exported`` the one replication the export stage hands
                                 back and its own figures (:func:`exported_record`).
* ``tables/evaluation.json``     the whole evaluation: summaries and every run's values.
* ``tables/pair_errors.csv``     long format, one row per (method, replication, rule, true
  ``tables/pair_errors.parquet`` class, predicted class) over every off-diagonal pair, with
                                 columns :data:`PAIR_COLUMNS`.
* ``tables/top_pairs.csv``       the same rows restricted to the ``top_k`` costliest pairs.
* ``tables/exported_decisions.csv``  ``actual,decision`` class names, one row per test sample in
                                 test-set order: the decisions of the one model the export stage
                                 hands back (``recommendation.json``'s ``exported``: of the
                                 recommended method's replications, the one of lowest validation
                                 WER under the recommended rule), which it checks its own against.
* ``plots/confusion/baseline.csv``, ``plots/confusion/recommended.csv``  ``actual,predicted``
  class names, one row per test sample: the baseline under argmax, and the first replication of
  the recommended method under its rule (DVC template ``confusion``, which counts rows: one model
  beside one model; the mean over replications is drawn in ``figures/confusion.png``).
* ``plots/baseline_val_loss.csv``, ``plots/finetune_val_wer.csv``  long format
  ``epoch,run,method,<key>`` from the histories (the baseline selects by validation loss, the
  fine-tuning runs by validation WER); ``epoch`` counts from 0.

Every file is written atomically and deterministically (sorted JSON keys but for the headline's
fixed order, no timestamps, rows in a fixed order), so an unchanged evaluation leaves DVC's
hashes unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from pipeline.errors import UserError
from pipeline.method.costs import CostMatrix
from pipeline.method.decision import DECISION_RULES, decide
from pipeline.method.metrics import (
    Summary,
    aggregate_replications,
    check_top_k,
    cost_metrics,
    flat_metrics,
)

BASELINE = "baseline"
RULES: tuple[str, ...] = ("argmax", "expected_cost", "calibrated_expected_cost")
# The rule a user's baseline model answers with today: what the recommendation is compared with.
BASELINE_RULE = "argmax"
# Column order of the paper's tables (Sec. 5.2-5.3), then the peers; others follow alphabetically.
METHOD_ORDER: tuple[str, ...] = (BASELINE, "csada", "ap", "sosr", "penalty", "soft_labels", "logit_adjusted")
DISPLAY_NAMES = {"baseline": "Baseline", "csada": "CSADA", "ap": "AP", "sosr": "SOSR", "penalty": "Penalty",
                 "soft_labels": "Soft labels", "logit_adjusted": "Logit-adjusted CE"}
CONFUSION_RULE = "argmax"
STAT_FIELDS: tuple[str, ...] = ("mean", "sd", "lower", "upper", "n")

HEADLINE_FILE = "metrics/headline.json"
SUMMARY_FILE = "summary.json"
RECOMMENDATION_FILE = "recommendation.json"
BASELINE_CURVE = "plots/baseline_val_loss.csv"
FINETUNE_CURVE = "plots/finetune_val_wer.csv"
EVALUATION_FILE = "tables/evaluation.json"
PAIR_ERRORS_CSV = "tables/pair_errors.csv"
PAIR_ERRORS_PARQUET = "tables/pair_errors.parquet"
TOP_PAIRS_CSV = "tables/top_pairs.csv"
EXPORTED_DECISIONS = "tables/exported_decisions.csv"
CONFUSION_DIR = "plots/confusion"
# The headline metrics, what `dvc metrics show/diff` and `dvc exp show` compare, in the order they
# show them (the file's own order): the recommended model first (method, decision rule, mean test
# WER and accuracy), then each model in METHOD_ORDER, the baseline first, with its mean WER under
# argmax and under the calibrated expected-cost rule, and its mean argmax accuracy. So the first six columns of
# `dvc exp show` are the recommendation and, beside it, the baseline's WER and accuracy under
# BASELINE_RULE, what it is compared with. The uncalibrated expected-cost rule, each rule's
# accuracy, total cost and top-k pairs, and the intervals, are in summary.json: 4 + 8 x 3 numbers
# keep `dvc exp show` within 80 columns with the export's settings (tests/test_dvc_projects.py).
HEADLINE: dict[str, tuple[str, ...]] = {"argmax": ("wer", "accuracy"), "calibrated_expected_cost": ("wer",)}
RECOMMENDED = "recommended"
# The recommended block of the headline: its key -> the key in recommendation.json.
RECOMMENDED_HEADLINE: dict[str, str] = {"method": "method", "rule": "decision_rule",
                                        "test_wer": "test_wer", "test_accuracy": "test_accuracy"}
PAIR_COLUMNS: tuple[str, ...] = (
    "method", "replication", "run", "rule", "true_class", "predicted_class",
    "cost", "cost_rank", "errors", "class_count", "rate",
)

# Method names become file names (plots/confusion/<method>.csv).
_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class EvaluationError(UserError):
    """Run predictions, histories or options that cannot be evaluated."""


@dataclass(frozen=True, eq=False)  # tensors have no single truth value for ==
class RunPredictions:
    """One evaluated model: scores [N, K] on the test set, labels [N] and its history.

    ``logits`` are any scores whose argmax is the model's prediction. For SOSR they are the
    negated regressed costs; the expected-cost rule still applies a softmax to them, which is a
    heuristic there because those scores are not calibrated log-probabilities.
    ``history`` is a list of per-epoch dicts; keys :data:`HISTORY_KEYS` are plotted, with
    ``epoch`` taken from each dict's ``"epoch"`` when present, else its 1-based position.
    """

    method: str
    replication: int | None
    logits: Tensor
    labels: Tensor
    history: list[dict[str, Any]] | None = None
    temperature: float = 1.0  # fitted on validation (pipeline.method.calibration), for the calibrated rule

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not _METHOD_NAME.fullmatch(self.method):
            raise EvaluationError(
                f"method {self.method!r} must be a name of letters, digits, '_', '-' or '.' "
                "(it becomes a file name)"
            )
        rep = self.replication
        if rep is not None and (isinstance(rep, bool) or not isinstance(rep, (int, np.integer)) or rep < 0):
            raise EvaluationError(f"{self.method}: replication must be None or an integer >= 0, got {rep!r}")
        if not isinstance(self.logits, Tensor) or self.logits.ndim != 2 or not self.logits.is_floating_point():
            raise EvaluationError(
                f"{self.name}: logits must be a 2-D floating-point tensor [N, K], got {_describe(self.logits)}"
            )
        if not isinstance(self.labels, Tensor) or self.labels.ndim != 1 or self.labels.is_floating_point():
            raise EvaluationError(f"{self.name}: labels must be a 1-D integer tensor [N], got {_describe(self.labels)}")
        if len(self.labels) != len(self.logits) or len(self.labels) == 0:
            raise EvaluationError(
                f"{self.name}: {len(self.logits)} rows of logits but {len(self.labels)} labels; "
                "they must match and be non-empty"
            )
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
            raise EvaluationError(f"{self.name}: temperature must be a finite number > 0, got {t!r}")
        if self.history is not None and not isinstance(self.history, list):
            raise EvaluationError(
                f"{self.name}: history must be a list of dicts or None, got {type(self.history).__name__}"
            )

    @property
    def name(self) -> str:
        """``"baseline"`` for a single run, ``"<method>-r<replication>"`` otherwise."""
        return self.method if self.replication is None else f"{self.method}-r{int(self.replication)}"


def _describe(value: Any) -> str:
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def evaluate_run(
    run: RunPredictions, cost: CostMatrix, top_k: int, rules: Sequence[str] = RULES
) -> dict[str, dict[str, Any]]:
    """``{rule: metrics}`` for one run, ``metrics`` as from :func:`pipeline.method.metrics.cost_metrics`."""
    top_k = check_top_k(top_k, cost)
    unknown = [rule for rule in rules if rule not in DECISION_RULES]
    if unknown:
        raise EvaluationError(f"unknown decision rules {unknown}; known: {', '.join(sorted(DECISION_RULES))}")
    if run.logits.shape[1] != cost.num_classes:
        raise EvaluationError(
            f"{run.name}: logits have {run.logits.shape[1]} classes but the cost matrix has "
            f"{cost.num_classes} ({cost.classes})"
        )
    return {rule: cost_metrics(run.labels, decide(rule, run.logits, cost, run.temperature), cost, top_k)
            for rule in rules}


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """Distinct method names in the paper's column order, unknown ones after, alphabetically."""
    rank = {name: i for i, name in enumerate(METHOD_ORDER)}
    return sorted(set(methods), key=lambda m: (rank.get(m, len(rank)), m))


def _group_runs(runs: Sequence[RunPredictions]) -> dict[str, list[RunPredictions]]:
    """Runs per method (paper order), each list by replication; duplicates and mixes fail."""
    if not runs:
        raise EvaluationError("no runs to evaluate")
    for run in runs:
        if not isinstance(run, RunPredictions):
            raise EvaluationError(f"expected RunPredictions, got {type(run).__name__}")
    groups: dict[str, list[RunPredictions]] = {m: [] for m in ordered_methods(r.method for r in runs)}
    for run in runs:
        groups[run.method].append(run)
    for method, group in groups.items():
        reps = [r.replication for r in group]
        if None in reps and len(reps) > 1:
            raise EvaluationError(
                f"method {method!r} has {len(reps)} runs but one has replication None; a method is "
                f"either one run (None) or numbered replications, got {reps}"
            )
        if len(set(reps)) != len(reps):
            raise EvaluationError(f"method {method!r} has duplicate replications: {sorted(reps)}")
        group.sort(key=lambda r: -1 if r.replication is None else int(r.replication))
    return groups


def _stats(summary: Summary) -> dict[str, float | int | None]:
    return {key: _plain(getattr(summary, key)) for key in STAT_FIELDS}


def _plain(value: Any) -> Any:
    """A JSON-ready copy: NaN -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def _summarize_evaluated(
    groups: Mapping[str, list[RunPredictions]], evaluated: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, group in groups.items():
        per_run = {run.name: {rule: flat_metrics(m) for rule, m in evaluated[run.name].items()} for run in group}
        summary = {
            rule: {
                metric: _stats(s)
                for metric, s in aggregate_replications([per_run[run.name][rule] for run in group]).items()
            }
            for rule in RULES
        }
        out[method] = {"summary": summary, "runs": _plain(per_run)}
    return out


def summarize_runs(runs: Sequence[RunPredictions], cost: CostMatrix, top_k: int) -> dict[str, Any]:
    """The evaluation of ``runs`` (shape in the module docstring): summaries and per-run values."""
    top_k = check_top_k(top_k, cost)
    groups = _group_runs(runs)
    evaluated = {run.name: evaluate_run(run, cost, top_k) for group in groups.values() for run in group}
    return _summarize_evaluated(groups, evaluated)


def identical_predictions(groups: Mapping[str, list[RunPredictions]], cost: CostMatrix) -> dict[str, list[list[str]]]:
    """Per rule, the groups of two or more methods (table order) that predicted the same class for
    every test sample: their runs agree replication by replication, and a method whose runs all
    agree stands as one run, so a fine-tuning that changed no decision matches the baseline.
    Rules with no such group are left out."""
    same: dict[str, list[list[str]]] = {}
    for rule in RULES:
        by_decisions: dict[tuple[bytes, ...], list[str]] = {}
        for method, group in groups.items():
            decisions = [decide(rule, run.logits, cost, run.temperature).cpu().numpy().tobytes() for run in group]
            key = tuple(decisions[:1] if len(set(decisions)) == 1 else decisions)
            by_decisions.setdefault(key, []).append(method)
        if any(len(methods) > 1 for methods in by_decisions.values()):
            same[rule] = [methods for methods in by_decisions.values() if len(methods) > 1]
    return same


def metrics_summary(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """``{method: {rule: {metric: stats}}}``: the content of ``summary.json``."""
    return {method: entry["summary"] for method, entry in evaluation.items()}


def headline_metrics(summary: Mapping[str, Any], recommendation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``metrics/headline.json``, in the order DVC shows it (see :data:`HEADLINE`):
    ``recommended`` when ``recommendation`` has test results, then ``{method: {rule: {metric:
    mean}}}`` for every method of ``summary``, in :func:`ordered_methods` and :data:`RULES` order."""
    headline: dict[str, Any] = {}
    if recommendation is not None and "test_wer" in recommendation:
        headline[RECOMMENDED] = {key: recommendation[source] for key, source in RECOMMENDED_HEADLINE.items()}
    for method in ordered_methods(summary):
        rules = summary[method]
        headline[method] = {rule: {key: rules[rule].get(key, {}).get("mean")
                                   for key in HEADLINE[rule]}
                            for rule in sorted(rules, key=_rule_rank) if rule in HEADLINE}
    return headline


def _rule_rank(rule: str) -> tuple[int, str]:
    """:data:`RULES` in their order, any other rule after them, alphabetically."""
    return (RULES.index(rule), "") if rule in RULES else (len(RULES), rule)


# ---------------------------------------------------------------------- tables


def _pair_rows(run: RunPredictions, rule: str, metrics: Mapping[str, Any], cost: CostMatrix) -> pd.DataFrame:
    """Every off-diagonal (true, predicted) pair of one run under one rule, in row-major order."""
    k = cost.num_classes
    rows, cols = np.nonzero(~np.eye(k, dtype=bool))
    rank = np.zeros((k, k), dtype=np.int64)
    ranked = cost.top_pair_indices(k * (k - 1))
    rank[tuple(np.array(ranked).T)] = np.arange(1, len(ranked) + 1)
    names = np.array(cost.classes, dtype=object)
    n = len(rows)
    return pd.DataFrame({
        "method": [run.method] * n,
        "replication": pd.array([run.replication] * n, dtype="Int64"),
        "run": [run.name] * n,
        "rule": [rule] * n,
        "true_class": names[rows],
        "predicted_class": names[cols],
        "cost": cost.values[rows, cols],
        "cost_rank": rank[rows, cols],
        "errors": metrics["pair_error_count"][rows, cols].astype(np.int64),
        "class_count": metrics["class_count"][rows].astype(np.int64),
        "rate": metrics["pair_error_rate"][rows, cols].astype(np.float64),
    }, columns=list(PAIR_COLUMNS))


def pair_error_table(
    groups: Mapping[str, list[RunPredictions]], evaluated: Mapping[str, Mapping[str, Any]], cost: CostMatrix
) -> pd.DataFrame:
    """Long table of pair errors for every run and rule (columns :data:`PAIR_COLUMNS`)."""
    frames = [
        _pair_rows(run, rule, evaluated[run.name][rule], cost)
        for group in groups.values() for run in group for rule in RULES
    ]
    return pd.concat(frames, ignore_index=True)


def top_pair_table(pairs: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Rows of the ``top_k`` costliest pairs, ordered by run, rule and cost rank."""
    top = pairs[pairs["cost_rank"] <= top_k]
    order = {run: i for i, run in enumerate(dict.fromkeys(pairs["run"]))}
    top = top.assign(_run=top["run"].map(order), _rule=top["rule"].map({r: i for i, r in enumerate(RULES)}))
    top = top.sort_values(["_run", "_rule", "cost_rank"], kind="stable")
    return top.drop(columns=["_run", "_rule"]).reset_index(drop=True)


def confusion_rows(run: RunPredictions, cost: CostMatrix, rule: str = CONFUSION_RULE) -> pd.DataFrame:
    """``actual,predicted`` class names, one row per test sample in test-set order."""
    names = np.array(cost.classes, dtype=object)
    predicted = decide(rule, run.logits, cost, run.temperature).cpu().numpy()
    labels = run.labels.cpu().numpy()
    if labels.min() < 0 or labels.max() >= cost.num_classes:
        raise EvaluationError(f"{run.name}: labels must be class indices in [0, {cost.num_classes - 1}]")
    return pd.DataFrame({"actual": names[labels], "predicted": names[predicted]})


def history_table(runs: Iterable[RunPredictions], key: str) -> pd.DataFrame:
    """Long table ``epoch,run,method,<key>`` of one history key over every run that logged it."""
    records = []
    for run in runs:
        for position, entry in enumerate(run.history or [], start=1):
            if not isinstance(entry, Mapping):
                raise EvaluationError(f"{run.name}: history entry {position} is {type(entry).__name__}, not a dict")
            value = entry.get(key)
            if value is None:
                continue  # epochs that were not validated
            epoch = entry.get("epoch", position)
            for what, number in (("epoch", epoch), (key, value)):
                if isinstance(number, bool) or not isinstance(number, (int, float, np.number)):
                    raise EvaluationError(f"{run.name}: history entry {position} has non-numeric {what} {number!r}")
            records.append((epoch, run.name, run.method, float(value)))
    return pd.DataFrame.from_records(records, columns=["epoch", "run", "method", key])
