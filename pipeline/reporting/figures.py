"""The pictures a person opens: PNG figures drawn from the evaluation's outputs.

* :func:`wer_figure`: test WER per method under each decision rule, mean with the sd over
  replications as error bars.
* :func:`confusion_figure`: test errors of the baseline beside the recommended model, each panel
  the errors of one model (a method's replications averaged, :func:`mean_errors`), all panels on
  one colour scale.
* :func:`curves_figure`: validation curves: the baseline's loss and the fine-tuning runs' WER on
  separate panels (their epochs and scales differ), lines coloured by method.
* :func:`abstention_figure`: the exported model's cost per case against the share of cases it
  abstains on, on the held-out test cases (the export stage's).

Every figure has a title, labelled axes with units and a legend (or colour bar) placed outside
the axes, so that it hides no data, and is written atomically with fixed metadata, so the same
inputs give the same bytes. Each ``draw_*`` function returns the figure (what the tests inspect);
its ``*_figure`` twin writes it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.fileio import atomic_write_bytes

RULE_LABELS = {"argmax": "argmax", "expected_cost": "expected cost",
               "calibrated_expected_cost": "expected cost, calibrated"}
# WCAG 2 relative luminance at which black and white text have equal contrast: sqrt(1.05 * 0.05) - 0.05.
_EQUAL_CONTRAST_LUMINANCE = 0.179


class FigureError(UserError):
    """Evaluation outputs a figure cannot be drawn from."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    # No creation time or software version in the file: the same figure gives the same bytes.
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def text_colour(background: Sequence[float]) -> str:
    """``"white"`` on a dark cell, ``"black"`` on a light one: whichever contrasts more with the
    cell's RGB(A) colour (WCAG 2 relative luminance)."""
    channels = np.asarray(background[:3], dtype=float)
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ np.array([0.2126, 0.7152, 0.0722]))
    return "white" if luminance < _EQUAL_CONTRAST_LUMINANCE else "black"


def shared_colour_limits(matrices: Sequence[np.ndarray]) -> tuple[float, float]:
    """(0, the largest finite value of any matrix): one scale for panels that are compared, so a
    colour means the same number in each. At least 1, so that panels with no errors stay pale."""
    finite = [m[np.isfinite(m)] for m in matrices]
    return 0.0, max([float(v.max()) for v in finite if v.size] + [1.0])


def wer_figure(summary: Mapping[str, Any], methods: Sequence[str], labels: Mapping[str, str], path: Path) -> None:
    _save(draw_wer(summary, methods, labels), path)


def draw_wer(summary: Mapping[str, Any], methods: Sequence[str], labels: Mapping[str, str]) -> Any:
    plt = _pyplot()
    rules = [rule for rule in RULE_LABELS if any(rule in summary[m] for m in methods)]
    figure, axis = plt.subplots(figsize=(1.4 * len(methods) + 4, 3.6), layout="constrained")
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        means = [summary[m].get(rule, {}).get("wer", {}).get("mean") or np.nan for m in methods]
        sds = [summary[m].get(rule, {}).get("wer", {}).get("sd") or 0.0 for m in methods]
        x = np.arange(len(methods)) + (i - (len(rules) - 1) / 2) * width
        axis.bar(x, means, width, yerr=sds, capsize=3, label=RULE_LABELS[rule])
    axis.set_xticks(np.arange(len(methods)), [labels.get(m, m) for m in methods])
    axis.set_ylabel("test WER (cost per prediction)")
    axis.set_title("Test WER by method and decision rule (mean, sd over replications)")
    # Beside the axes, its top level with theirs: never over a bar, nor under a title wider than the axes.
    axis.legend(title="decision rule", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axis.grid(axis="y", alpha=0.3)
    return figure


def mean_errors(pair_errors: pd.DataFrame, method: str, rule: str, classes: Sequence[str]) -> tuple[np.ndarray, int]:
    """K x K test errors of one model of ``method`` under ``rule`` (true class x predicted class,
    diagonal 0) and how many runs it averages: the per-pair error counts of tables/pair_errors.csv
    summed over the method's runs and divided by their number. Pooling the runs instead would set
    n models' errors beside the baseline's one."""
    rows = pair_errors[(pair_errors["method"] == method) & (pair_errors["rule"] == rule)]
    if rows.empty:
        known = sorted(set(zip(pair_errors["method"], pair_errors["rule"])))
        raise FigureError(f"no pair errors of method {method!r} under rule {rule!r}; known (method, rule): {known}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(rows["true_class"]).union(rows["predicted_class"]) - set(index))
    if unknown:
        raise FigureError(f"pair errors name classes {unknown} that are not among {list(classes)}")
    totals = np.zeros((len(classes), len(classes)))
    np.add.at(totals, (rows["true_class"].map(index).to_numpy(), rows["predicted_class"].map(index).to_numpy()),
              rows["errors"].to_numpy(dtype=float))
    runs = rows["run"].nunique()
    return totals / runs, runs


def _count_label(value: float, whole: bool) -> str:
    """A count as a count; a mean over runs to one decimal, or two where one would read 0."""
    return f"{value:.0f}" if whole else f"{value:.1f}" if value >= 0.05 else f"{value:.2f}"


def confusion_figure(panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str], cost: np.ndarray,
                     path: Path) -> None:
    _save(draw_confusion(panels, classes, cost), path)


def draw_confusion(panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str], cost: np.ndarray) -> Any:
    """One heatmap per (title, K x K test errors of one model) on one colour scale; off-diagonal
    cells with costs above the median are outlined, so the costly confusions stand out."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1, 4.6), squeeze=False,
                                layout="constrained")
    k = len(classes)
    costly = cost > np.median(cost[~np.eye(k, dtype=bool)])
    off_diagonal = [np.where(np.eye(k, dtype=bool), 0.0, errors) for _, errors in panels]  # the diagonal dwarfs them
    low, high = shared_colour_limits(off_diagonal)
    for axis, (title, _), shown in zip(axes[0], panels, off_diagonal):
        image = axis.imshow(shown, cmap="Reds", vmin=low, vmax=high)
        whole = np.allclose(shown, np.round(shown))
        for (i, j), value in np.ndenumerate(shown):
            if value:
                axis.text(j, i, _count_label(value, whole), ha="center", va="center", fontsize=7,
                          color=text_colour(image.cmap(image.norm(value))))
            if costly[i, j]:
                axis.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=0.8, ec="black"))
        axis.set_xticks(range(k), classes, fontsize=7, rotation=90)
        axis.set_yticks(range(k), classes, fontsize=7)
        axis.set_xlabel("predicted class")
        axis.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("true class")
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="test errors of one model (count)")
    figure.suptitle("Test errors (off-diagonal; outlined: costlier than the median pair)", fontsize=10)
    return figure


def curves_figure(baseline: pd.DataFrame, finetune: pd.DataFrame, labels: Mapping[str, str], path: Path) -> None:
    _save(draw_curves(baseline, finetune, labels), path)


def draw_curves(baseline: pd.DataFrame, finetune: pd.DataFrame, labels: Mapping[str, str]) -> Any:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    left.plot(baseline["epoch"] + 1, baseline["val_loss"], color="black", label="Baseline (left panel)")
    left.set_title("Baseline: validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("validation cross-entropy")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, runs) in enumerate(finetune.groupby("method", sort=False)):
        for j, (_, run) in enumerate(runs.groupby("run", sort=False)):
            # Markers: a run that stopped after one validated epoch is a point, not an invisible line.
            right.plot(run["epoch"] + 1, run["val_wer"], "o-", ms=3, color=colours[i % len(colours)],
                       alpha=0.8, label=labels.get(method, method) if j == 0 else None)
    right.set_title("Fine-tuning: validation WER (one line per replication)")
    right.set_xlabel("epoch")
    right.set_ylabel("validation WER (cost per prediction)")
    figure.legend(ncols=4, loc="outside lower center")  # below the panels, never over the lines
    for axis in (left, right):
        axis.grid(alpha=0.3)
    return figure


def abstention_figure(abstention: np.ndarray, cost: np.ndarray, record: Mapping[str, Any], path: Path) -> None:
    """Cost per case against the share abstained on the held-out test cases, one point per threshold,
    with the promise (max_cost), the smallest promise the calibration size allows, and the
    calibrated threshold's point."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    axis.step(100 * abstention, cost, where="post", color="black", lw=1.2,
              label="each threshold on the held-out cases")
    axis.axhline(record["max_cost"], color="tab:red", ls="--", lw=1, label=f"promise: max_cost {record['max_cost']:g}")
    axis.axhline(record["floor"], color="tab:grey", ls=":", lw=1,
                 label=f"smallest promise possible: B/(n+1) = {record['floor']:.3g}")
    held = record["held_out"]
    axis.plot(100 * held["abstention_rate"], held["cost_per_case"], "o", color="tab:red",
              label=f"calibrated threshold: {100 * held['abstention_rate']:.1f}% abstained, "
                    f"{held['cost_per_case']:.3g} per case")
    axis.set_xlabel("cases abstained on, to a person (%)")
    axis.set_ylabel("cost per case (abstentions cost 0)")
    axis.set_title(f"Abstention on the held-out test cases (n = {held['n']}); "
                   f"calibrated on {record['calibration_cases']}", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    _save(figure, path)
