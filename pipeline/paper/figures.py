"""The paper's figures as PNGs: the pair sweep's heatmaps (Figures 1, 3, 4), test WER against
lambda (Figure 5) and the convergence curves (Figure 6).

Every figure has a title, labelled axes with units and a legend or colour bar placed outside the
axes, so that it hides no data, and is written atomically with fixed metadata
(pipeline.reporting.figures), so the same inputs give the same bytes. Each ``draw_*`` function
returns the figure (what the tests inspect); its twin writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.reporting.figures import _pyplot, _save, shared_colour_limits, text_colour


def pair_heatmaps(panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str], swept: Sequence[tuple[int, int]],
                  title: str, path: Path) -> None:
    _save(draw_pair_heatmaps(panels, classes, swept, title), path)


def draw_pair_heatmaps(panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str],
                       swept: Sequence[tuple[int, int]], title: str) -> Any:
    """K x K heatmaps side by side on one colour scale (test error rate, %); the swept critical
    pairs are outlined and labelled with their value, other cells of a method's panel are blank."""
    plt = _pyplot()
    k = len(classes)
    low, high = shared_colour_limits([matrix * 100 for _, matrix in panels])
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1, 4.8), squeeze=False,
                                layout="constrained")
    for axis, (name, matrix) in zip(axes[0], panels):
        image = axis.imshow(matrix * 100, cmap="viridis", vmin=low, vmax=high)
        for y, z in swept:
            axis.add_patch(plt.Rectangle((z - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2))
            if np.isfinite(matrix[y, z]):
                axis.text(z, y, f"{matrix[y, z] * 100:.1f}", ha="center", va="center", fontsize=6,
                          color=text_colour(image.cmap(image.norm(matrix[y, z] * 100))))
        axis.set_xticks(range(k), classes, rotation=90, fontsize=7)
        axis.set_yticks(range(k), classes, fontsize=7)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        axis.set_title(name, fontsize=10)
    figure.colorbar(image, ax=axes[0].tolist(), label="test error rate of the pair (% of the true class)",
                    shrink=0.85)
    figure.suptitle(title + " (red: critical pairs swept)", fontsize=11)
    return figure


def lambda_figure(lambdas: Sequence[float], curve: Mapping[str, Any], baseline_wer: float, title: str,
                  path: Path) -> None:
    _save(draw_lambdas(lambdas, curve, baseline_wer, title), path)


def draw_lambdas(lambdas: Sequence[float], curve: Mapping[str, Any], baseline_wer: float, title: str) -> Any:
    """Test WER against lambda: mean over replications and the 90% prediction interval."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    x = np.asarray(lambdas)
    axis.fill_between(x, curve["lower"], curve["upper"], alpha=0.25, label="90% prediction interval")
    axis.plot(x, curve["mean"], "o-", label=f"CSADA, mean of {curve['n']} replications")
    axis.axhline(baseline_wer, color="grey", ls="--", lw=1, label="baseline (lambda = 0)")
    axis.set_xlabel("lambda (weight of the adversarial term)")
    axis.set_ylabel("test WER (mean cost per prediction)")
    axis.set_title(title, fontsize=10)
    figure.legend(fontsize=8, ncols=2, loc="outside lower center")  # below the axes, never over the curve
    return figure


def convergence_figure(loss: Mapping[str, Any], wer: Mapping[str, Any], baseline_wer: float, title: str,
                       path: Path) -> None:
    _save(draw_convergence(loss, wer, baseline_wer, title), path)


def draw_convergence(loss: Mapping[str, Any], wer: Mapping[str, Any], baseline_wer: float, title: str) -> Any:
    """Training objective (left) and test WER (right) per fine-tuning epoch: mean and 90% PI."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for axis, curve, label, start in ((axes[0], loss, "training objective (mean over the epoch)", 1),
                                      (axes[1], wer, "test WER (mean cost per prediction)", 0)):
        x = np.arange(start, start + len(curve["mean"]))
        named = axis is axes[0]  # both panels draw the same two series alike: one legend entry each
        axis.fill_between(x, curve["lower"], curve["upper"], color="C0", alpha=0.25,
                          label="90% prediction interval" if named else None)
        axis.plot(x, curve["mean"], "o-", ms=3, color="C0",
                  label=f"mean of {curve['n']} replications" if named else None)
        axis.set_xlabel("fine-tuning epoch (0: the baseline)" if start == 0 else "fine-tuning epoch")
        axis.set_ylabel(label)
    axes[1].axhline(baseline_wer, color="grey", ls="--", lw=1, label="baseline (right)")
    axes[0].set_title("(a) Loss (training)", fontsize=10)
    axes[1].set_title("(b) WER (testing)", fontsize=10)
    figure.legend(fontsize=8, ncols=3, loc="outside lower center")  # below the panels, never over the curves
    figure.suptitle(title, fontsize=11)
    return figure


def ablation_figure(results: Mapping[str, Any], title: str, path: Path) -> None:
    """Two panels over the ablation's arms: the share of critical errors (of cost, on the Pareto
    costs) removed with its 90% bootstrap interval, and the change in test accuracy."""
    plt = _pyplot()
    arms = list(results["arms"])
    shares = [results["arms"][a]["removed_share"] for a in arms]
    mean = np.array([s["mean"] if s["mean"] is not None else np.nan for s in shares]) * 100
    lower = np.array([s["lower"] if s["lower"] is not None else np.nan for s in shares]) * 100
    upper = np.array([s["upper"] if s["upper"] is not None else np.nan for s in shares]) * 100
    accuracy = np.array([results["arms"][a]["accuracy_change"] for a in arms]) * 100
    rows = np.arange(len(arms))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(arms) + 1.8), sharey=True)
    left.barh(rows, np.nan_to_num(mean), color=["tab:blue" if a.startswith("pair/") else "tab:orange" for a in arms])
    left.errorbar(mean, rows, xerr=[np.nan_to_num(mean - lower), np.nan_to_num(upper - mean)], fmt="none",
                  ecolor="black", capsize=3)
    left.axvline(0, color="grey", lw=0.8)
    left.set_yticks(rows, arms)
    left.invert_yaxis()
    left.set_xlabel("critical errors removed, % (pareto/: % of test cost)\nbar: mean; whiskers: 90% bootstrap")
    right.barh(rows, accuracy, color="tab:grey")
    right.axvline(0, color="black", lw=0.8)
    right.set_xlabel("test accuracy change, points")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path)
