"""The evaluation's figures (pipeline/reporting/figures.py, drawn by stages/evaluate.py): legends
off the data, compared panels on one colour scale, a method's replications averaged rather than
pooled against one baseline run, and cell text that reads on its cell."""

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.method.costs import CostMatrix
from pipeline.reporting.evaluation import RunPredictions
from pipeline.reporting.figures import (
    FigureError,
    draw_confusion,
    draw_curves,
    draw_wer,
    mean_errors,
    shared_colour_limits,
    text_colour,
)
from pipeline.reporting.outputs import write_evaluation
from stages import evaluate
from tests.figure_checks import assert_legends_clear_of_the_axes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

COST = CostMatrix(["a", "b", "c"], [[0, 1, 4], [2, 0, 1], [5, 3, 0]])
LABELS = torch.tensor([0, 0, 1, 2])
# Argmax of each row: a, c, b, a -> errors a->c and c->a (the same rows as tests/test_evaluation.py).
MIXED = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.6, 0.1, 0.3]]))
CONFIDENT = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def run(method, replication, logits, history=None):
    return RunPredictions(method=method, replication=replication, logits=logits, labels=LABELS, history=history)


def evaluation(tmp_path):
    """The baseline (errors a->c, c->a) and three CSADA replications (r0 and r2 as the baseline,
    r1 right every time), CSADA recommended under argmax: write_evaluation's files in tmp_path."""
    history = [{"epoch": 0, "val_wer": 0.5, "val_loss": 1.0}, {"epoch": 1, "val_wer": 0.4, "val_loss": 0.9}]
    runs = [run("baseline", None, MIXED, history), run("csada", 0, MIXED, history),
            run("csada", 1, CONFIDENT, history), run("csada", 2, MIXED, history)]
    rules = ("argmax", "expected_cost", "calibrated_expected_cost")
    validation = {"baseline": dict.fromkeys(rules, 0.5),
                  **{f"csada-r{r}": {**dict.fromkeys(rules, 0.6), "argmax": 0.2} for r in range(3)}}
    write_evaluation(runs, COST, tmp_path, top_k=2, validation=validation)
    return tmp_path


def test_text_colour_contrasts_with_the_cell():
    assert text_colour((0.0, 0.0, 0.0)) == "white" and text_colour((1.0, 1.0, 1.0, 1.0)) == "black"
    reds, viridis = matplotlib.colormaps["Reds"], matplotlib.colormaps["viridis"]
    assert text_colour(reds(1.0)) == "white" and text_colour(reds(0.1)) == "black"
    # viridis is dark at the bottom and bright yellow at the top: the rule follows darkness, not value.
    assert text_colour(viridis(0.0)) == "white" and text_colour(viridis(1.0)) == "black"


def test_shared_colour_limits_span_every_panel():
    assert shared_colour_limits([np.array([[0, 2.0]]), np.array([[6.0, np.nan]])]) == (0.0, 6.0)
    assert shared_colour_limits([np.zeros((2, 2))]) == (0.0, 1.0)  # no errors: a pale panel, not a dark one


def test_mean_errors_divide_a_methods_errors_by_its_runs(tmp_path):
    pairs = pd.read_csv(evaluation(tmp_path) / "tables/pair_errors.csv", dtype={"true_class": str,
                                                                              "predicted_class": str})
    baseline, baseline_runs = mean_errors(pairs, "baseline", "argmax", COST.classes)
    csada, csada_runs = mean_errors(pairs, "csada", "argmax", COST.classes)
    assert baseline_runs == 1 and csada_runs == 3
    assert baseline.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    # Two of the three replications make each error once: 2/3 per model, not 2 pooled against the baseline's 1.
    assert np.allclose(csada, [[0, 0, 2 / 3], [0, 0, 0], [2 / 3, 0, 0]])
    with pytest.raises(FigureError, match=r"no pair errors of method 'sosr' under rule 'argmax'; known"):
        mean_errors(pairs, "sosr", "argmax", COST.classes)
    with pytest.raises(FigureError, match=r"classes \['a'\] that are not among \['x', 'b', 'c'\]"):
        mean_errors(pairs, "baseline", "argmax", ["x", "b", "c"])


def test_the_confusion_figure_sets_one_model_beside_one_model(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(evaluate, "confusion_figure", lambda panels, *_: drawn.update(panels=panels))
    evaluate.draw_figures(evaluation(tmp_path), COST)
    (baseline_title, baseline), (title, recommended) = drawn["panels"]
    assert baseline_title == "Baseline (argmax)" and "CSADA, argmax" in title and "mean of its 3 replications" in title
    assert baseline[0, 2] == 1 and recommended[0, 2] == pytest.approx(2 / 3)
    assert recommended.sum() <= baseline.sum()  # pooled, the better model would show 4 errors to the baseline's 2


def test_compared_confusion_panels_share_one_colour_scale_and_readable_text():
    baseline = np.array([[0, 1, 2], [0, 0, 0], [1, 0, 0]], dtype=float)
    recommended = np.array([[0, 0, 0.5], [0, 0, 0], [0.3, 0, 0]])
    figure = draw_confusion([("baseline", baseline), ("recommended", recommended)], COST.classes, COST.values)
    images = [axis.images[0] for axis in figure.axes if axis.images]
    assert len(images) == 2
    assert {image.get_clim() for image in images} == {(0.0, 2.0)}  # the baseline's 2 is the top of both
    darkest = [text for text in images[0].axes.texts if text.get_text() == "2"]
    palest = [text for text in images[1].axes.texts if text.get_text() == "0.3"]
    assert darkest and darkest[0].get_color() == "white"
    assert palest and palest[0].get_color() == "black"
    assert [text.get_text() for text in images[1].axes.texts] == ["0.5", "0.3"]  # means keep their decimals


def test_wer_figure_legend_sits_beside_the_bars():
    summary = {method: {rule: {"wer": {"mean": 0.1 + 0.01 * i, "sd": 0.01}}
                        for i, rule in enumerate(("argmax", "expected_cost", "calibrated_expected_cost"))}
               for method in ("baseline", "csada", "sosr")}
    assert_legends_clear_of_the_axes(draw_wer(summary, list(summary), {"csada": "CSADA"}))


def test_curves_figure_legend_sits_beside_the_lines_and_one_epoch_runs_are_visible():
    baseline = pd.DataFrame({"epoch": range(20), "run": "baseline", "method": "baseline",
                             "val_loss": np.linspace(2, 0.1, 20)})
    finetune = pd.DataFrame({"epoch": [0, 1, 2, 0], "run": ["csada-r0"] * 3 + ["sosr-r0"],
                             "method": ["csada"] * 3 + ["sosr"], "val_wer": [0.1, 0.08, 0.07, 0.05]})
    figure = draw_curves(baseline, finetune, {"csada": "CSADA"})
    assert_legends_clear_of_the_axes(figure)
    one_epoch = [line for axis in figure.axes for line in axis.lines if len(line.get_xdata()) == 1]
    assert one_epoch and one_epoch[0].get_marker() not in ("", "None", None)


def test_the_stage_writes_the_three_figures(tmp_path):
    results = evaluation(tmp_path)
    evaluate.draw_figures(results, COST)
    for name in ("wer", "confusion", "curves"):
        assert (results / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((results / "recommendation.json").read_text())["method"] == "csada"
