"""The recommendation: the (method, decision rule) of lowest validation WER, and its test
results beside the baseline's, and whether the validation split was large enough for it to mean much.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.method.metrics import (
    mean_interval,
)
from pipeline.reporting.evaluation import BASELINE, BASELINE_RULE, RULES, EvaluationError

# Below this many baseline errors on validation, validation WER (which chose every setting and the
# recommended model) moves by whole errors of a handful of samples, so the choice says little.
MIN_BASELINE_VAL_ERRORS = 20


def recommend(validation: Mapping[str, Mapping[str, float]], methods: Mapping[str, list[str]]) -> dict[str, Any]:
    """The (method, decision rule) of lowest mean validation WER over its replications.

    ``validation`` maps a run name to ``{rule: validation WER}``; ``methods`` a method to its run
    names. The baseline (under any rule) wins every tie, so the recommendation is never worse
    than the baseline on validation.
    """
    means = {(method, rule): float(np.mean([validation[run][rule] for run in runs]))
             for method, runs in methods.items() for rule in RULES}
    order = sorted(means, key=lambda pair: (means[pair], pair[0] != BASELINE, RULES.index(pair[1])))
    method, rule = order[0]
    return {"method": method, "decision_rule": rule, "val_wer": means[order[0]],
            "val_wer_by_choice": {f"{m}/{r}": v for (m, r), v in sorted(means.items())}}


def recommendation_record(choice: Mapping[str, Any], evaluation: Mapping[str, Any],
                          validation: Mapping[str, Mapping[str, float]],
                          baseline_val_errors: tuple[int, int] | None = None) -> dict[str, Any]:
    """``choice`` (from :func:`recommend`) with its test results beside the baseline's.

    ``baseline`` is the baseline model under :data:`BASELINE_RULE`, what the user had before.
    ``paired_difference`` is the recommended model's test WER minus the baseline's, per
    replication (each fine-tuning run starts from that baseline, so the pairs share it): mean and
    the 90% Student-t confidence interval of the mean (:func:`pipeline.method.metrics.mean_interval`).
    ``includes_zero`` says the interval does not exclude "no difference"; with one run there is
    no interval (``n`` 1, lower = upper = mean, ``includes_zero`` null).
    ``baseline_val_errors`` (errors, samples): the baseline's errors under its rule on the
    validation split, recorded as ``baseline_val_errors`` and ``val_samples`` for
    :func:`small_validation_warning`.
    """
    method, rule = choice["method"], choice["decision_rule"]
    if BASELINE not in evaluation:
        raise EvaluationError("the recommendation compares with the baseline, and there is no baseline run")
    base_run = next(iter(evaluation[BASELINE]["runs"].values()))[BASELINE_RULE]
    runs = evaluation[method]["runs"]
    differences = mean_interval([values[rule]["wer"] - base_run["wer"] for values in runs.values()])
    accuracy_gain = mean_interval([values[rule]["accuracy"] - base_run["accuracy"] for values in runs.values()])
    size = {} if baseline_val_errors is None else {"baseline_val_errors": int(baseline_val_errors[0]),
                                                   "val_samples": int(baseline_val_errors[1])}
    return {
        **dict(choice),
        **size,
        "test_wer": float(np.mean([values[rule]["wer"] for values in runs.values()])),
        "test_accuracy": float(np.mean([values[rule]["accuracy"] for values in runs.values()])),
        "replications": len(runs),
        "baseline": {"decision_rule": BASELINE_RULE, "val_wer": float(validation[BASELINE][BASELINE_RULE]),
                     "test_wer": float(base_run["wer"]), "test_accuracy": float(base_run["accuracy"])},
        "paired_difference": {"mean": differences.mean, "lower": differences.lower, "upper": differences.upper,
                              "n": differences.n,
                              "includes_zero": (bool(differences.lower <= 0 <= differences.upper)
                                                if differences.n > 1 else None)},
        "accuracy_difference": {"mean": accuracy_gain.mean, "lower": accuracy_gain.lower,
                                "upper": accuracy_gain.upper, "n": accuracy_gain.n},
    }


def small_validation_warning(record: Mapping[str, Any]) -> str | None:
    """What to tell a user whose recommendation rests on fewer than :data:`MIN_BASELINE_VAL_ERRORS`
    baseline errors on validation (``record`` from :func:`recommendation_record`); None otherwise."""
    errors = record.get("baseline_val_errors")
    if errors is None or errors >= MIN_BASELINE_VAL_ERRORS:
        return None
    return (f"the baseline makes only {errors} errors on the {record['val_samples']} validation samples (fewer than "
            f"{MIN_BASELINE_VAL_ERRORS}), so validation WER, which chose the settings and the recommended model, "
            "turns on a handful of samples and the recommendation means little; a larger validation split would "
            "tell the methods apart")


def exported_record(choice: Mapping[str, Any], runs: list[tuple[str, int | None]],
                    test: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    validation: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The one model the export stage hands back for ``choice``: of the chosen method's ``runs``
    ((name, replication), in replication order), the one of lowest validation WER under the
    chosen rule (ties: the first). The recommendation's figures are means over the replications;
    these are this model's own, its test figures from ``test`` (run -> rule -> metrics)."""
    rule = choice["decision_rule"]
    name, replication = min(runs, key=lambda run: validation[run[0]][rule])  # min keeps the first of ties
    return {"run": name, "replication": replication, "decision_rule": rule,
            "val_wer": float(validation[name][rule]), "test_wer": float(test[name][rule]["wer"]),
            "test_accuracy": float(test[name][rule]["accuracy"]),
            "chosen_as": "the replication of lowest validation WER under the decision rule"}
