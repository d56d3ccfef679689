"""A readable Markdown report and a one-screen text summary of an evaluation.

Both take the metrics summary that :func:`pipeline.reporting.outputs.write_evaluation` returns and
writes to ``summary.json`` under ``methods`` (``{method: {rule: {metric: {mean, sd, lower, upper, n}}}}``).
The tables follow the layout of the paper's Tables 3-7: methods as columns (Baseline, CSADA,
AP, SOSR, Penalty, then any others), rows WER, total cost, the error rates of the costliest
pairs and overall accuracy, each cell ``mean (sd)`` over replications.

WER is shown as it is, total cost / number of predictions, the value every metrics file holds:
not a percentage, since with costs above 1 it can exceed 1. Accuracy and pair error rates, which
are shares of samples, are percentages. Console lines are wrapped to the terminal's width
(pipeline.console), never cut.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.console import console_width, wrap
from pipeline.errors import UserError
from pipeline.fileio import atomic_write_bytes
from pipeline.method.costs import CostMatrix
from pipeline.method.decision import DECISION_RULES
from pipeline.method.metrics import Summary, check_top_k, format_mean_sd
from pipeline.reporting.evaluation import DISPLAY_NAMES, SUMMARY_FILE, ordered_methods
from pipeline.reporting.recommendation import small_validation_warning

RULE_TITLES = {
    "argmax": "argmax (predict the highest-scoring class)",
    "expected_cost": "expected cost (predict the class with the least expected cost under the softmax)",
    "calibrated_expected_cost": "calibrated expected cost (the same rule on softmax(logits / T), T fitted "
                                "per model on validation)",
}
SHORT_RULES = {"argmax": "argmax", "expected_cost": "exp-cost", "calibrated_expected_cost": "calibrated"}
MISSING = "n/a"
WER_DIGITS = 4  # WER's own value (a mean cost), to four decimals wherever it is shown


class ReportError(UserError):
    """A summary or option the report cannot be rendered from."""


def _display(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


def _summary(stats: Any) -> Summary | None:
    """A :class:`Summary` from its JSON form (null -> NaN); None when the metric is absent."""
    if not isinstance(stats, Mapping):
        return None
    nan = float("nan")
    values = {key: nan if stats.get(key) is None else float(stats[key]) for key in ("mean", "sd", "lower", "upper")}
    return Summary(n=int(stats.get("n") or 0), **values)


def _cell(stats: Any, scale: float, digits: int) -> str:
    """``mean (sd)``; a single run shows its value alone; undefined values show n/a."""
    s = _summary(stats)
    if s is None or np.isnan(s.mean):
        return MISSING
    if s.n <= 1:
        return f"{s.mean * scale:.{digits}f}"
    return format_mean_sd(s, scale=scale, digits=digits)


def _check_summary(summary: Any, rule: str) -> list[str]:
    """Methods in table order, after checking the summary's shape and that ``rule`` is in it."""
    if rule not in DECISION_RULES:
        raise ReportError(f"unknown decision rule {rule!r}; known: {', '.join(sorted(DECISION_RULES))}")
    if not isinstance(summary, Mapping) or not summary:
        raise ReportError(
            f"summary must be a non-empty mapping {{method: {{rule: {{metric: stats}}}}}} as in {SUMMARY_FILE}"
        )
    for method, rules in summary.items():
        if not isinstance(rules, Mapping):
            raise ReportError(f"summary[{method!r}] must map decision rules to metrics, got {type(rules).__name__}")
    if not any(rule in rules for rules in summary.values()):
        present = sorted({r for rules in summary.values() for r in rules})
        raise ReportError(f"no method in the summary has decision rule {rule!r}; present: {present}")
    return ordered_methods(summary)


def _replications(summary: Mapping[str, Any], method: str) -> int:
    for rules in summary[method].values():
        s = _summary(rules.get("wer")) if isinstance(rules, Mapping) else None
        if s is not None:
            return s.n
    return 0


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _pair_label(cost: CostMatrix, i: int, j: int) -> str:
    return f"{cost.classes[i]} -> {cost.classes[j]}"


def _rows(cost: CostMatrix, top_k: int) -> list[tuple[str, str, float, int]]:
    """(row label, metric key, scale, digits) in the paper's row order."""
    rows = [("WER", "wer", 1.0, WER_DIGITS), ("Total cost", "total_cost", 1.0, 1)]
    for r, (i, j) in enumerate(cost.top_pair_indices(top_k) if top_k else [], start=1):
        rows.append((f"Top-{r} cost pair error (%): {_pair_label(cost, i, j)}", f"top{r}_pair_error_rate", 100.0, 2))
    rows.append(("Overall accuracy (%)", "accuracy", 100.0, 2))
    return rows


def methods_table(summary: Mapping[str, Any], methods: list[str], rule: str, cost: CostMatrix,
                  top_k: int) -> list[str]:
    """The paper's Tables 3-7 layout: methods as columns, ``mean (sd)`` cells, one rule."""
    header = "| | " + " | ".join(_md(_display(m)) for m in methods) + " |"
    lines = [header, "|---|" + "---:|" * len(methods)]
    for label, key, scale, digits in _rows(cost, top_k):
        cells = [_cell(summary[m].get(rule, {}).get(key), scale, digits) for m in methods]
        lines.append(f"| {_md(label)} | " + " | ".join(cells) + " |")
    return lines


def _cost_lines(cost: CostMatrix, top_k: int) -> list[str]:
    k = cost.num_classes
    off = cost.values[~np.eye(k, dtype=bool)]
    names = cost.classes if k <= 12 else [*cost.classes[:10], f"... ({k - 10} more)"]
    lines = [
        f"- Classes ({k}): {_md(', '.join(names))}",
        f"- Off-diagonal costs: min {off.min():.3g}, median {np.median(off):.3g}, max {off.max():.3g}; "
        f"{int((off > 0).sum())} of {off.size} pairs cost more than 0",
    ]
    if top_k:
        pairs = "; ".join(
            f"{r}. {_md(_pair_label(cost, i, j))} (cost {cost.values[i, j]:.3g})"
            for r, (i, j) in enumerate(cost.top_pair_indices(top_k), start=1)
        )
        lines.append(f"- Costliest pairs (true -> predicted): {pairs}")
    return lines


def _extra_value(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _wer(value: float) -> str:
    return f"{value:.{WER_DIGITS}f}"


def recommendation_lines(recommendation: Mapping[str, Any]) -> list[str]:
    """The recommended model beside the baseline, and whether the test difference is real."""
    method, rule = recommendation["method"], recommendation["decision_rule"]
    base, diff = recommendation["baseline"], recommendation["paired_difference"]
    name = f"{_display(method)}, decision rule {rule}"
    warning = small_validation_warning(recommendation)
    lines = [
        f"Recommended: **{_md(name)}**, the lowest mean validation WER of every (method, decision rule) "
        "pair; the baseline wins ties, so the recommendation is never worse than the baseline on validation.",
        *(["", f"**Warning: a small validation split.** {_md(warning[0].upper() + warning[1:])}."] if warning else []),
        "",
        f"| | Baseline ({base['decision_rule']}) | Recommended ({_md(name)}) |",
        "|---|---:|---:|",
        f"| Validation WER | {_wer(base['val_wer'])} | {_wer(recommendation['val_wer'])} |",
        f"| Test WER | {_wer(base['test_wer'])} | {_wer(recommendation['test_wer'])} |",
        f"| Test accuracy (%) | {_percent(base['test_accuracy'])} | {_percent(recommendation['test_accuracy'])} |",
        "",
    ]
    if method == "baseline" and rule == base["decision_rule"]:
        return lines + ["No method beat the baseline on validation: keep the baseline model as it is."]
    span = (f"{_wer(diff['mean'])}, 90% confidence interval [{_wer(diff['lower'])}, "
            f"{_wer(diff['upper'])}] over {diff['n']} paired replication(s)")
    if diff["n"] < 2:
        verdict = "One run: no interval, so no claim beyond this test set."
    elif diff["includes_zero"]:
        verdict = "The interval includes 0: on the test set the difference is within noise."
    elif diff["mean"] < 0:
        verdict = "The interval excludes 0: the recommended model's test WER is lower than the baseline's."
    else:
        verdict = "The interval excludes 0 on the wrong side: on the test set the recommended model is worse."
    return lines + [f"Test WER difference (recommended - baseline): {span}. {verdict}",
                    "",
                    "A fine-tuning run keeps its epoch of lowest validation WER, so its validation WER is "
                    "optimistic; the test columns are the unbiased comparison."]


def abstention_lines(abstention: Mapping[str, Any]) -> list[str]:
    """The exported model's abstention threshold, and what it did on the held-out test cases
    beside its promise (``abstention.json`` of the export stage)."""
    held, fit = abstention["held_out"], abstention["calibration"]
    threshold = abstention["threshold"]
    rule = ("never abstains: deciding every case meets the promise" if threshold is None
            else f"abstains when the expected cost of its decision is at least {threshold:.4g}")
    lines = [
        f"The exported model ({_md(str(abstention['model']))}, {abstention['decision_rule']}) {rule}. The threshold is "
        f"set by conformal risk control on {abstention['calibration_cases']} test cases (a stratified "
        f"{abstention['calibration_fraction']:g} of the test split) so that the expected cost per case of its "
        f"automated decisions (an abstention costs 0 and goes to a person) is at most max_cost = "
        f"{abstention['max_cost']:g}; the other test cases measure it.",
        "",
        "| | max_cost (promise) | cost per case | abstained (%) | cost per decided case |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in (("Calibration cases", fit), ("Held-out test cases", held)):
        decided = values["cost_per_decided_case"]
        lines.append(f"| {name} (n = {values['n']}) | {abstention['max_cost']:g} | {values['cost_per_case']:.4g} | "
                     f"{_percent(values['abstention_rate'])} | {MISSING if decided is None else f'{decided:.4g}'} |")
    lines += ["", f"Deciding every held-out case would cost {held['wer_deciding_all']:.4g} per case. With "
                  f"{abstention['calibration_cases']} calibration cases and a largest cost B = {abstention['bound']:.4g}, "
                  f"no promise below B/(n+1) = {abstention['floor']:.4g} can be kept without abstaining on every case.",
              "", "![Cost per case against the share abstained](figures/abstention.png)"]
    return lines


def search_lines(search: Mapping[str, Any]) -> list[str]:
    """What the search tried and chose per method (chosen.json of the search stage)."""
    lines = [f"Settings chosen on validation WER; a setting could lose at most the accuracy down to "
             f"{_percent(search['accuracy_floor'])}% on validation (the baseline's minus search.max_accuracy_drop).",
             "",
             "| Method | Trials (stopped early) | Chosen | Epochs | Validation WER | Validation accuracy (%) |",
             "|---|---:|---|---:|---:|---:|"]
    for method, entry in search["methods"].items():
        if not entry.get("searched"):
            reason = entry.get("note", "not searched")
            lines.append(f"| {_md(_display(method))} | {entry.get('trials', 0)} | recipe settings: {_md(reason)} "
                         f"| {entry['settings']['optim']['epochs']} | | |")
            continue
        best = entry["best"]
        values = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(best["values"].items()))
        flag = "" if best["feasible"] else " (accuracy below the floor)"
        timed = ", time budget reached" if entry.get("budget_reached") else ""
        lines.append(f"| {_md(_display(method))} | {entry['trials']} ({entry['stopped_early']}){timed} "
                     f"| {_md(values) or 'n/a'} | {best['epoch']} | {_wer(best['val_wer'])}{flag} "
                     f"| {_percent(best['val_accuracy'])} |")
    if any(entry.get("budget_reached") for entry in search["methods"].values()):
        lines += ["", "Where the time budget (search.time_budget_s) ended a search, how far it got depends on the "
                  "machine's speed: another run may choose differently. Every other search is the same on every run."]
    return lines


def render_report(
    summary: Mapping[str, Any],
    cost: CostMatrix,
    *,
    dataset: str,
    top_k: int,
    rule: str = "argmax",
    extra: Mapping[str, Any] | None = None,
    score_notes: Mapping[str, str] | None = None,
    recommendation: Mapping[str, Any] | None = None,
    search: Mapping[str, Any] | None = None,
    identical: Mapping[str, list[list[str]]] | None = None,
    abstention: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown report: a header, the recommendation, the exported model's abstention, the
    table under ``rule``, then one per other rule, then what the search chose.

    ``score_notes`` (method -> text) are printed under the expected-cost tables for the methods
    whose scores are not calibrated logits (``pipeline.method.registry.MethodSpec.scores_note``).
    ``identical`` (rule -> groups of methods, summary.json's ``identical_predictions``) notes under a
    rule's table the methods whose test predictions were the same, sample for sample."""
    methods = _check_summary(summary, rule)
    if not isinstance(dataset, str) or not dataset.strip():
        raise ReportError(f"dataset must be a non-empty name, got {dataset!r}")
    top_k = check_top_k(top_k, cost)
    rules = [rule] + sorted({r for rules in summary.values() for r in rules if r != rule}, key=_rule_order)

    reps = {m: _replications(summary, m) for m in methods}
    rep_text = ", ".join(f"{_display(m)} {n}" for m, n in reps.items())
    lines = [
        f"# Cost-sensitive evaluation: {_md(dataset)}",
        "",
        f"Runs per method: {rep_text}.",
        "",
        *(["## Recommendation", "", *recommendation_lines(recommendation), ""]
          if recommendation and "paired_difference" in recommendation else []),
        *(["## Abstention", "", *abstention_lines(abstention), ""] if abstention else []),
        "## Cost matrix",
        "",
        *_cost_lines(cost, top_k),
        "",
        "## How to read the tables",
        "",
        "WER (weighted error rate) is the average misclassification cost per test prediction: the "
        "total cost of the test errors divided by the number of test samples, shown as it is (not a "
        "percentage: with costs above 1 it can exceed 1), as in every metrics file; total cost adds up "
        "the costs of all test errors. "
        "A top-r cost pair error is the percentage of test samples of the pair's true class that "
        "were predicted as the pair's predicted class, with pairs ranked by cost. "
        "Each cell is the mean over replications with the sample standard deviation in brackets; "
        "a method run once shows its single value. n/a marks a value that is undefined, such as "
        "the error rate of a pair whose true class has no test samples. "
        f"The 90% prediction intervals of every number are in `results/{SUMMARY_FILE}` "
        "(keys `lower` and `upper`).",
    ]
    if extra:
        lines += ["", "## Settings", ""] + [f"- {_md(str(k))}: {_md(_extra_value(v))}" for k, v in extra.items()]
    for r in rules:
        lines += ["", f"## Decision rule: {RULE_TITLES.get(r, r)}", ""]
        lines += methods_table(summary, methods, r, cost, top_k)
        lines += [line for group in (identical or {}).get(r, []) for line in ("", identical_note(group))]
        if r != "argmax":
            lines += [line for m in methods if m in (score_notes or {}) for line in ("", score_notes[m])]
    if search:
        lines += ["", "## Hyperparameter search", "", *search_lines(search)]
    return "\n".join(lines) + "\n"


def identical_note(methods: list[str]) -> str:
    """Why some columns of a table agree: the methods made the same test predictions."""
    names = [_display(m) for m in methods]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    return (f"{_md(listed)} predicted the same class for every test sample in every run under this rule, so "
            "their columns are equal: different trainings that ended at the same decisions, not a copy.")


def _rule_order(rule: str) -> tuple[int, str]:
    known = list(RULE_TITLES)
    return (known.index(rule) if rule in known else len(known), rule)


def write_report(text: str, path: str | Path) -> None:
    """Write the report atomically (UTF-8), creating the parent directory."""
    if not isinstance(text, str):
        raise ReportError(f"report text must be a string, got {type(text).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def _fit_table(header: list[str], rows: list[list[str]], width: int) -> tuple[list[str], list[str]]:
    """Aligned lines of a table (first column left, the others right, two spaces apart) within
    ``width``: as it is when it fits, else with its cells' ``(sd)`` left out, else without its last
    columns (never fewer than three). Returns the lines and the headers of the columns left out."""
    def lines(table: list[list[str]]) -> list[str]:
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        return [("  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])).rstrip()
                for row in table]

    table = [header, *rows]
    if max(map(len, lines(table))) <= width:
        return lines(table), []
    means = [[cell.split(" (")[0] for cell in row] for row in table]
    for keep in range(len(header), 3, -1):
        shown = lines([row[:keep] for row in means])
        if max(map(len, shown)) <= width:
            return shown, header[keep:]
    return lines([row[:3] for row in means]), header[3:]  # a method, its runs, its WER: the least to show


def one_screen_summary(
    summary: Mapping[str, Any],
    cost: CostMatrix,
    *,
    paths: Mapping[str, str],
    dataset: str | None = None,
    top_k: int = 1,
    rule: str = "argmax",
    width: int | None = None,
) -> str:
    """A plain-text table of the headline numbers and the output paths, within ``width`` columns
    (default: the terminal's, :func:`pipeline.console.console_width`).

    One line per method: runs, WER under ``rule`` and under each other rule, the error rate of
    the costliest pair (when ``top_k`` >= 1) and accuracy; then one line per entry of ``paths``
    (label -> path). Cells are ``mean (sd)`` as in the report; on a narrow terminal the table
    drops the ``(sd)``, then its last columns (saying which), and the other lines wrap.
    """
    methods = _check_summary(summary, rule)
    top_k = check_top_k(top_k, cost)
    width = width or console_width()
    present = {r for rules in summary.values() for r in rules}
    others = sorted(present - {rule}, key=_rule_order)
    # (header, rule, metric key, scale, digits)
    columns = [(f"WER {SHORT_RULES.get(r, r)}", r, "wer", 1.0, WER_DIGITS) for r in [rule, *others[:2]]]
    if top_k:
        columns.append(("top-1 pair %", rule, "top1_pair_error_rate", 100.0, 2))
    columns.append(("accuracy %", rule, "accuracy", 100.0, 2))
    rows = [[m, str(_replications(summary, m)),
             *(_cell(summary[m].get(r, {}).get(key), scale, digits) for _, r, key, scale, digits in columns)]
            for m in methods]
    table, left_out = _fit_table(["method", "runs", *(c[0] for c in columns)], rows, width)
    lines = [*wrap(f"Evaluation{f' of {dataset}' if dataset else ''}: mean (sd) over replications, rule {rule}",
                   width), *table]
    if left_out:
        lines += wrap(f"(too narrow for {', '.join(left_out)}: see the report)", width)
    if top_k:
        (i, j), = cost.top_pair_indices(1)
        lines += wrap(f"top-1 pair (true -> predicted): {_pair_label(cost, i, j)}, cost {cost.values[i, j]:.3g}", width)
    if paths:
        lines += wrap("outputs: " + ", ".join(f"{label} {path}" for label, path in paths.items()), width)
    return "\n".join(lines) + "\n"


def recommendation_line(recommendation: Mapping[str, Any], width: int | None = None) -> str:
    """Console lines: the recommended model, and its test WER and accuracy against the baseline's,
    wrapped to ``width`` (default: the terminal's)."""
    base, diff = recommendation["baseline"], recommendation["paired_difference"]
    interval = ""
    if diff["n"] > 1:
        interval = f", 90% CI [{_wer(diff['lower'])}, {_wer(diff['upper'])}]" + (
            ": within noise" if diff["includes_zero"] else "")
    chosen = f"{_display(recommendation['method'])}, decision rule {recommendation['decision_rule']}"
    return "\n".join(line for text in (
        f"recommended on validation: {chosen}",
        f"  test WER: {_wer(recommendation['test_wer'])} (baseline {_wer(base['test_wer'])}), "
        f"difference {_wer(diff['mean'])}{interval}",
        f"  test accuracy %: {_percent(recommendation['test_accuracy'])} (baseline {_percent(base['test_accuracy'])})")
        for line in wrap(text, width))
