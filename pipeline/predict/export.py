"""The export of the recommended model: which run it is, what ``model.json`` says about it, the
check that it decides what the evaluate stage decided, and its abstention threshold.

The recommendation names a (method, decision rule); a fine-tuned method has several
replications, and its recommendation figures are their means. One model is handed back: the
replication of lowest validation WER under the recommended rule (the evaluate stage records which
in ``recommendation.json``'s ``exported``, with that model's own figures and test decisions),
the baseline itself when the baseline is recommended.

The abstention threshold is calibrated on a calibration part of the test split: the validation
split already chose every epoch, setting and temperature and the recommendation itself, so its
cases are not exchangeable with new ones any more, while no choice has looked at the test split.
The test split is cut, per class and with the pipeline's seed, into ``calibration_fraction`` that
sets the threshold (:func:`pipeline.predict.conformal.crc_threshold`) and the rest, which
measures what the threshold does (the cost per case and the share abstained beside the promise).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets import ClassificationData
from pipeline.datasets.common import stratified_split
from pipeline.errors import UserError
from pipeline.method.costs import CostMatrix
from pipeline.predict.conformal import abstention_curve, crc_threshold, outcome
from pipeline.predict.predictor import Predictions
from pipeline.predict.spec import ExportedModel, Normalization
from pipeline.runs.jobs import TrainJob

RUNS_INDEX = "runs.json"  # the finetune stage's list of its runs
BASELINE = "baseline"


class ExportError(UserError):
    """Pipeline outputs the export cannot be built from (stale or inconsistent); re-run their stages."""


def run_folder(exported: Mapping[str, Any], method: str, baseline: Path, finetune: Path) -> Path:
    """The outcome folder of the exported run: the baseline's, or the finetune stage's run of
    ``method`` and the exported replication."""
    if method == BASELINE:
        return baseline
    index = json.loads((finetune / RUNS_INDEX).read_text())
    found = [run["name"] for run in index if run["method"] == method and run["replication"] == exported["replication"]]
    if len(found) != 1:
        raise ExportError(f"{finetune / RUNS_INDEX} lists no single run of {method} replication "
                          f"{exported['replication']}, the one recommendation.json exports; re-run dvc repro evaluate")
    return finetune / found[0]


def exported_spec(job: TrainJob, data: ClassificationData, cost: CostMatrix, *, recommendation: Mapping[str, Any],
                  temperature: float, max_cost: float, epoch: int) -> ExportedModel:
    """What ``model.json`` says about the run ``job`` trained (threshold still unset)."""
    norm = data.normalization
    selection = {key: recommendation[key] for key in ("method", "decision_rule", "val_wer", "test_wer",
                                                      "test_accuracy", "replications", "baseline")}
    return ExportedModel(
        dataset=job.dataset, classes=tuple(data.classes), model=job.model, model_options=dict(job.model_options),
        method=job.method, method_options=dict(job.method_options), input_shape=tuple(data.input_shape),
        normalization=None if norm is None else Normalization(tuple(norm.mean), tuple(norm.std), norm.raw_range),
        decision_rule=recommendation["decision_rule"], temperature=float(temperature), cost=cost,
        max_cost=float(max_cost), threshold=None,
        training={"options": dict(job.method_options), "optim": dict(job.optim), "seed": job.seed,
                  "selected_epoch": epoch},
        selection={"recommendation": selection, "exported": dict(recommendation["exported"]),
                   "note": "recommendation figures are means over the method's replications; exported "
                           "figures are this model's own"})


def check_decisions(ours: list[str], evaluated: list[str], test_wer: float, recorded_wer: float, where: str) -> None:
    """The export decides what the evaluate stage decided on every test image, to the last digit of WER."""
    if len(ours) != len(evaluated):
        raise ExportError(f"the test split has {len(ours)} images but {where} records {len(evaluated)} decisions; "
                          "re-run dvc repro evaluate")
    differ = [i for i, (a, b) in enumerate(zip(ours, evaluated)) if a != b]
    if differ or test_wer != recorded_wer:
        raise ExportError(f"the exported model decides {len(differ)} test image(s) differently from {where} "
                          f"(e.g. index {differ[:3]}; test WER {test_wer!r} vs {recorded_wer!r}); re-run dvc repro evaluate")


def calibrate(spec: ExportedModel, predictions: Predictions, labels: np.ndarray, *, fraction: float,
              seed: int) -> tuple[ExportedModel, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The spec with its abstention threshold set on the calibration part of the test split, the
    record of what it does on the rest (``abstention.json``), and the curve on the rest."""
    cost = spec.cost
    bound = float(cost.values.max())
    losses = cost.values[labels, predictions.decisions]
    scores = predictions.decision_costs.astype(np.float64)
    parts = stratified_split(labels, {"calibration": fraction, "held_out": 1 - fraction}, seed, cost.classes)
    cal, held = parts["calibration"], parts["held_out"]
    threshold = crc_threshold(losses[cal], scores[cal], spec.max_cost, bound)
    how = {"bound": bound, "calibration_cases": int(cal.size), "floor": bound / (cal.size + 1),
           "split": "test", "calibration_fraction": fraction, "seed": seed,
           "procedure": "conformal risk control (arXiv 2208.02814): the largest threshold t with "
                        "(sum of the costs of the calibration cases scored below t + bound) / (n + 1) <= max_cost"}
    held_out = outcome(losses[held], scores[held], threshold, bound)
    record = {"max_cost": spec.max_cost, "threshold": threshold, **how,
              "calibration": outcome(losses[cal], scores[cal], threshold, bound).to_dict(),
              "held_out": {**held_out.to_dict(), "wer_deciding_all": float(losses[held].mean())},
              "model": spec.selection.get("exported", {}).get("run"), "decision_rule": spec.decision_rule}
    exported = dataclasses.replace(spec, threshold=threshold, calibration={**how, "held_out": held_out.to_dict()})
    return exported, record, abstention_curve(losses[held], scores[held], bound)
