"""The pictures a person opens: PNG figures drawn from the evaluation's outputs.

* :func:`wer_figure`: test WER per method under each decision rule, mean with the sd over
  replications as error bars.
* :func:`confusion_figure`: test confusion matrices of the baseline beside the recommended model.
* :func:`curves_figure`: validation curves: the baseline's loss and the fine-tuning runs' WER on
  separate panels (their epochs and scales differ), lines coloured by method.
* :func:`abstention_figure`: the exported model's cost per case against the share of cases it
  abstains on, on the held-out test cases (the export stage's).

Every figure has a title, labelled axes with units and a legend, and is written atomically with
fixed metadata, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.fileio import atomic_write_bytes

RULE_LABELS = {"argmax": "argmax", "expected_cost": "expected cost",
               "calibrated_expected_cost": "expected cost, calibrated"}


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


def wer_figure(summary: Mapping[str, Any], methods: Sequence[str], labels: Mapping[str, str], path: Path) -> None:
    plt = _pyplot()
    rules = [rule for rule in RULE_LABELS if any(rule in summary[m] for m in methods)]
    figure, axis = plt.subplots(figsize=(1.4 * len(methods) + 2, 3.6))
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        means = [100 * (summary[m].get(rule, {}).get("wer", {}).get("mean") or np.nan) for m in methods]
        sds = [100 * (summary[m].get(rule, {}).get("wer", {}).get("sd") or 0.0) for m in methods]
        x = np.arange(len(methods)) + (i - (len(rules) - 1) / 2) * width
        axis.bar(x, means, width, yerr=sds, capsize=3, label=RULE_LABELS[rule])
    axis.set_xticks(np.arange(len(methods)), [labels.get(m, m) for m in methods])
    axis.set_ylabel("test WER (%)")
    axis.set_title("Test WER by method and decision rule (mean, sd over replications)")
    axis.legend(title="decision rule")
    axis.grid(axis="y", alpha=0.3)
    _save(figure, path)


def _confusion(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (frame["actual"].map(index).to_numpy(), frame["predicted"].map(index).to_numpy()), 1)
    return counts


def confusion_figure(panels: Sequence[tuple[str, pd.DataFrame]], classes: Sequence[str],
                     cost: np.ndarray, path: Path) -> None:
    """One heatmap per (title, actual/predicted rows); off-diagonal cells with costs above the
    median are outlined, so the costly confusions stand out."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False,
                                layout="constrained")
    costly = cost > np.median(cost[~np.eye(len(classes), dtype=bool)])
    for axis, (title, frame) in zip(axes[0], panels):
        counts = _confusion(frame, classes)
        shown = np.where(np.eye(len(classes), dtype=bool), 0, counts)  # errors only: the diagonal dwarfs them
        image = axis.imshow(shown, cmap="Reds")
        for (i, j), value in np.ndenumerate(counts):
            if i != j and value:
                axis.text(j, i, str(value), ha="center", va="center", fontsize=7)
            if costly[i, j]:
                axis.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=0.8, ec="black"))
        axis.set_xticks(range(len(classes)), classes, fontsize=7, rotation=90)
        axis.set_yticks(range(len(classes)), classes, fontsize=7)
        axis.set_xlabel("predicted class")
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046, label="test errors (count)")
    axes[0][0].set_ylabel("true class")
    figure.suptitle("Test errors (off-diagonal counts; outlined: costlier than the median pair)", fontsize=10)
    _save(figure, path)


def curves_figure(baseline: pd.DataFrame, finetune: pd.DataFrame, labels: Mapping[str, str], path: Path) -> None:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(baseline["epoch"] + 1, baseline["val_loss"], color="black", label="baseline")
    left.set_title("Baseline: validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("validation cross-entropy")
    left.legend()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, runs) in enumerate(finetune.groupby("method", sort=False)):
        for j, (_, run) in enumerate(runs.groupby("run", sort=False)):
            right.plot(run["epoch"] + 1, 100 * run["val_wer"], color=colours[i % len(colours)], alpha=0.8,
                       label=labels.get(method, method) if j == 0 else None)
    right.set_title("Fine-tuning: validation WER (one line per replication)")
    right.set_xlabel("epoch")
    right.set_ylabel("validation WER (%)")
    right.legend(title="method")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    _save(figure, path)


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
