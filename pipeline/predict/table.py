"""The CLI's output: one CSV row per image, and the one-line summary.

Columns: ``source`` (``file.npz[i]``, or the image's path relative to the folder given),
``label`` (the true class, only when the input has labels), ``decision`` (the class decided, also
when abstained: what the model would decide), ``expected_cost`` (of that decision, under the
calibrated probabilities), ``abstained`` (true: the case goes to a person), then ``top1``,
``top1_probability`` ... ``top3``/``top3_probability`` (the most probable classes, ties by class
order). Numbers are written with fixed digits, so the same predictions give the same bytes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from pipeline.method.costs import CostMatrix
from pipeline.predict.conformal import outcome
from pipeline.predict.predictor import Predictions

TOP = 3


def csv_text(sources: Sequence[str], predictions: Predictions, labels: np.ndarray | None = None) -> str:
    """The CSV of the module doc, rows in the order of ``sources``."""
    classes = predictions.classes
    top = min(TOP, len(classes))
    ranked = np.argsort(-predictions.probabilities, axis=1, kind="stable")[:, :top]
    header = ["source", *(["label"] if labels is not None else []), "decision", "expected_cost", "abstained"]
    header += [name for r in range(1, top + 1) for name in (f"top{r}", f"top{r}_probability")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    costs = predictions.decision_costs
    for i, source in enumerate(sources):
        row = [source, *([classes[int(labels[i])]] if labels is not None else []), classes[int(predictions.decisions[i])],
               f"{float(costs[i]):.6g}", "true" if predictions.abstained[i] else "false"]
        row += [cell for j in ranked[i] for cell in (classes[int(j)], f"{float(predictions.probabilities[i, j]):.6f}")]
        writer.writerow(row)
    return buffer.getvalue()


def summary_line(predictions: Predictions, cost: CostMatrix, threshold: float | None,
                 labels: np.ndarray | None = None) -> str:
    """How many were decided and abstained on, and with labels, the WER and the cost per case."""
    n, abstained = len(predictions), int(predictions.abstained.sum())
    rule = "never abstains" if threshold is None else f"abstains at expected cost >= {threshold:.6g}"
    line = f"{n} images: {n - abstained} decided, {abstained} to a person ({rule})"
    if labels is None or n == 0:
        return line
    from pipeline.method.metrics import cost_metrics  # scipy: only when there are labels to score

    wer = cost_metrics(labels, predictions.decisions, cost, top_k=0)["wer"]
    losses = cost.values[labels, predictions.decisions]
    kept = outcome(losses, predictions.decision_costs, threshold, float(cost.values.max()))
    return f"{line}; on the labels: WER {wer!r} deciding all, {kept.cost_per_case:.6g} per case with abstentions"
