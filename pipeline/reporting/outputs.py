"""The evaluation's files: deterministic JSON, CSV and Parquet writers, and
:func:`write_evaluation`, which writes every output DVC tracks (see
:mod:`pipeline.reporting.evaluation` for the list).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.fileio import atomic_write_bytes
from pipeline.method.costs import CostMatrix
from pipeline.method.metrics import (
    check_top_k,
)
from pipeline.reporting.evaluation import (
    BASELINE,
    BASELINE_CURVE,
    CONFUSION_DIR,
    CONFUSION_RULE,
    EVALUATION_FILE,
    EXPORTED_DECISIONS,
    FINETUNE_CURVE,
    HEADLINE_FILE,
    PAIR_ERRORS_CSV,
    PAIR_ERRORS_PARQUET,
    RECOMMENDATION_FILE,
    SUMMARY_FILE,
    TOP_PAIRS_CSV,
    RunPredictions,
    _group_runs,
    _plain,
    _summarize_evaluated,
    confusion_rows,
    evaluate_run,
    headline_metrics,
    identical_predictions,
    history_table,
    metrics_summary,
    pair_error_table,
    top_pair_table,
)
from pipeline.reporting.recommendation import exported_record, recommend, recommendation_record

# ---------------------------------------------------------------------- writers


def json_text(data: Any, sort_keys: bool = True) -> str:
    """Deterministic JSON: sorted keys (or, with ``sort_keys=False``, the order ``data`` was built
    in), two-space indent, NaN as null, trailing newline."""
    return json.dumps(_plain(data), sort_keys=sort_keys, indent=2, allow_nan=False) + "\n"


def write_json(data: Any, path: str | Path, sort_keys: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json_text(data, sort_keys).encode("utf-8"))


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """CSV with a header, no index, '\\n' line ends; missing values as empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n", na_rep="").encode("utf-8"))


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(path, buffer.getvalue())


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` back (JSON null stays None)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_evaluation(
    runs: Sequence[RunPredictions], cost: CostMatrix, out_dir: str | Path, top_k: int,
    validation: Mapping[str, Mapping[str, float]] | None = None,
    baseline_val_errors: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Evaluate ``runs``, write every output listed in the module docstring under ``out_dir``.

    ``validation`` (run name -> {rule: validation WER}) picks the recommended model (see
    :func:`recommend`); without it the baseline stands. ``baseline_val_errors`` (errors, samples
    of the baseline on validation) goes into the recommendation. Returns the summary.
    """
    top_k = check_top_k(top_k, cost)
    out_dir = Path(out_dir)
    groups = _group_runs(runs)
    ordered = [run for group in groups.values() for run in group]
    # Evaluate every run before writing anything: a bad run fails with no partial output.
    evaluated = {run.name: evaluate_run(run, cost, top_k) for run in ordered}
    evaluation = _summarize_evaluated(groups, evaluated)
    summary = metrics_summary(evaluation)
    pairs = pair_error_table(groups, evaluated, cost)
    if validation is None:
        recommendation = {"method": next(iter(groups)), "decision_rule": CONFUSION_RULE}
    else:
        recommendation = recommendation_record(
            recommend(validation, {m: [r.name for r in g] for m, g in groups.items()}), evaluation, validation,
            baseline_val_errors)
    chosen = recommendation["method"]
    exported = None
    if validation is not None:  # the model the export stage hands back, and its test decisions
        recommendation["exported"] = exported_record(
            recommendation, [(run.name, run.replication) for run in groups[chosen]],
            {run.name: evaluated[run.name] for run in groups[chosen]}, validation)
        run = next(run for run in groups[chosen] if run.name == recommendation["exported"]["run"])
        exported = confusion_rows(run, cost, recommendation["decision_rule"]).rename(columns={"predicted": "decision"})
    # DVC's confusion template counts rows, so it cannot draw a mean over replications, and pooled
    # rows would set n models' errors beside the baseline's one: the first replication stands for
    # the method (chosen before any test result; the mean is results/figures/confusion.png).
    confusions = {
        "baseline": confusion_rows(groups[BASELINE][0], cost) if BASELINE in groups else None,
        "recommended": confusion_rows(groups[chosen][0], cost, recommendation["decision_rule"]),
    }
    curves = {BASELINE_CURVE: history_table([run for run in ordered if run.method == BASELINE], "val_loss"),
              FINETUNE_CURVE: history_table([run for run in ordered if run.method != BASELINE], "val_wer")}

    # In its own order, not sorted: DVC shows the columns in the file's order (evaluation.HEADLINE).
    write_json(headline_metrics(summary, recommendation), out_dir / HEADLINE_FILE, sort_keys=False)
    write_json({"methods": summary, "recommendation": recommendation,
                "temperatures": {run.name: run.temperature for run in ordered},
                "identical_predictions": identical_predictions(groups, cost)}, out_dir / SUMMARY_FILE)
    write_json(recommendation, out_dir / RECOMMENDATION_FILE)
    write_json(evaluation, out_dir / EVALUATION_FILE)
    write_csv(pairs, out_dir / PAIR_ERRORS_CSV)
    write_parquet(pairs, out_dir / PAIR_ERRORS_PARQUET)
    write_csv(top_pair_table(pairs, top_k), out_dir / TOP_PAIRS_CSV)
    for name, frame in confusions.items():
        if frame is not None:
            write_csv(frame, out_dir / CONFUSION_DIR / f"{name}.csv")
    for name, frame in curves.items():
        write_csv(frame, out_dir / name)
    if exported is not None:
        write_csv(exported, out_dir / EXPORTED_DECISIONS)
    return summary
