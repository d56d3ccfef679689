import re

import pytest
import torch

from pipeline.errors import UserError
from pipeline.method.costs import CostMatrix
from pipeline.reporting.evaluation import RunPredictions
from pipeline.reporting.outputs import write_evaluation
from pipeline.reporting.report import one_screen_summary, render_report, write_report

COST = CostMatrix(["a", "b", "c"], [[0, 1, 4], [2, 0, 1], [5, 3, 0]])
# Costliest pairs: c -> a (5), a -> c (4), c -> b (3).


def stats(mean, sd=0.0, n=5):
    return {"mean": mean, "sd": sd, "lower": None if mean is None else mean - 2 * sd,
            "upper": None if mean is None else mean + 2 * sd, "n": n}


def rule_metrics(wer, wer_sd, n, *, top1=0.01, accuracy=0.95):
    return {
        "wer": stats(wer, wer_sd, n),
        "total_cost": stats(wer * 1000, wer_sd * 1000, n),
        "accuracy": stats(accuracy, 0.0005 if n > 1 else 0.0, n),
        "top1_pair_error_rate": stats(top1, 0.0, n),
        "top2_pair_error_rate": stats(None, None, n),  # true class absent from the test set
    }


# Methods deliberately out of order; "zeta" is not a paper method.
SUMMARY = {
    "zeta": {"argmax": rule_metrics(0.06, 0.001, 3)},
    "sosr": {"argmax": rule_metrics(0.0512, 0.0208, 5), "expected_cost": rule_metrics(0.05, 0.01, 5)},
    "baseline": {"argmax": rule_metrics(0.0549, 0.0, 1), "expected_cost": rule_metrics(0.05, 0.0, 1)},
    "csada": {"argmax": rule_metrics(0.042, 0.0003, 5), "expected_cost": rule_metrics(0.04, 0.0002, 5)},
    "ap": {"argmax": rule_metrics(0.0507, 0.0206, 5), "expected_cost": rule_metrics(0.049, 0.001, 5)},
}


def table(text, title):
    """The Markdown table lines under the heading that contains ``title``."""
    section = text.split(title, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_report_columns_rows_and_cells():
    text = render_report(SUMMARY, COST, dataset="cifar10", top_k=2)
    lines = table(text, "## Decision rule: argmax")
    assert lines[0] == "| | Baseline | CSADA | AP | SOSR | zeta |"
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == [
        "WER (%)", "Total cost", "Top-1 cost pair error (%): c -> a",
        "Top-2 cost pair error (%): a -> c", "Overall accuracy (%)",
    ]
    wer = lines[2]
    assert wer == "| WER (%) | 5.49 | 4.20 (0.03) | 5.07 (2.06) | 5.12 (2.08) | 6.00 (0.10) |"
    assert lines[3].split("|")[2].strip() == "54.9"  # total cost: one decimal, baseline plain
    assert lines[3].split("|")[3].strip() == "42.0 (0.3)"
    assert "n/a" in lines[5]  # the undefined top-2 rate
    assert lines[6].split("|")[3].strip() == "95.00 (0.05)"


def test_report_second_table_for_expected_cost_and_header():
    text = render_report(SUMMARY, COST, dataset="cifar10", top_k=2, extra={"epochs": 10, "costs": {"seed": 0}},
                         score_notes={"sosr": "SOSR's scores are a heuristic for SOSR.", "absent": "never shown"})
    assert text.index("## Decision rule: argmax") < text.index("## Decision rule: expected cost")
    ec = table(text, "## Decision rule: expected cost")
    assert ec[2] == "| WER (%) | 5.00 | 4.00 (0.02) | 4.90 (0.10) | 5.00 (1.00) | n/a |"
    assert text.index("heuristic for SOSR") > text.index("## Decision rule: expected cost")
    assert "never shown" not in text  # notes only for the methods in the summary
    assert "# Cost-sensitive evaluation: cifar10" in text
    assert "Runs per method: Baseline 1, CSADA 5, AP 5, SOSR 5, zeta 3." in text
    assert "Classes (3): a, b, c" in text
    assert "1. c -> a (cost 5); 2. a -> c (cost 4)" in text
    assert "results/summary.json" in text and "90%" in text
    assert '- costs: {"seed": 0}' in text and "- epochs: 10" in text


def test_report_rule_choice_puts_that_table_first():
    text = render_report(SUMMARY, COST, dataset="d", top_k=1, rule="expected_cost")
    assert text.index("## Decision rule: expected cost") < text.index("## Decision rule: argmax")


def test_report_from_real_evaluation(tmp_path):
    labels = torch.tensor([0, 0, 1, 2])
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.6, 0.1, 0.3]]))
    runs = [RunPredictions("baseline", None, logits, labels, None),
            RunPredictions("csada", 0, logits, labels, None),
            RunPredictions("csada", 1, logits.flip(1), labels, None)]
    summary = write_evaluation(runs, COST, tmp_path, top_k=3)
    text = render_report(summary, COST, dataset="toy", top_k=3)
    # Baseline argmax: WER 9 / 4 = 2.25 -> "225.00"; total cost 9.0; accuracy 50%.
    wer = table(text, "## Decision rule: argmax")[2]
    assert wer.startswith("| WER (%) | 225.00 | ")
    path = tmp_path / "report" / "report.md"
    write_report(text, path)
    write_report(text, path)
    assert path.read_text(encoding="utf-8") == text


def test_one_screen_summary_fits():
    paths = {"report": "reports/report.md", "figures": "results/figures"}
    text = one_screen_summary(SUMMARY, COST, paths=paths, dataset="cifar10", top_k=2)
    lines = text.splitlines()
    assert len(lines) <= 25
    assert all(len(line) <= 100 for line in lines), max(map(len, lines))
    assert lines[1].split() == ["method", "runs", "WER", "%", "argmax", "WER", "%", "exp-cost",
                                "top-1", "pair", "%", "accuracy", "%"]
    assert [line.split()[0] for line in lines[2:7]] == ["baseline", "csada", "ap", "sosr", "zeta"]
    assert re.split(r"\s{2,}", lines[3].strip()) == [
        "csada", "5", "4.20 (0.03)", "4.00 (0.02)", "1.00 (0.00)", "95.00 (0.05)"]
    assert lines[2].split()[1:] == ["1", "5.49", "5.00", "1.00", "95.00"]
    assert "c -> a, cost 5" in text
    assert lines[-1] == "outputs: report reports/report.md, figures results/figures"
    long = one_screen_summary(SUMMARY, COST, paths={"report": "x/" * 80 + "end.csv"}, top_k=2)
    assert long.splitlines()[-1].startswith("...") and long.rstrip().endswith("end.csv")  # the informative tail
    # Without top pairs the column goes.
    assert "top-1" not in one_screen_summary(SUMMARY, COST, paths={}, top_k=0)


@pytest.mark.parametrize(
    "summary, kwargs, match",
    [
        ({}, {}, "non-empty"),
        ({"csada": [1]}, {}, "must map decision rules"),
        (SUMMARY, {"rule": "bayes"}, "unknown decision rule"),
        ({"csada": {"argmax": {}}}, {"rule": "expected_cost"}, "no method .* has decision rule"),
        (SUMMARY, {"top_k": -1}, "top_k"),
        (SUMMARY, {"dataset": " "}, "dataset"),
    ],
)
def test_report_bad_input(summary, kwargs, match):
    args = {"dataset": "d", "top_k": 1, **kwargs}
    with pytest.raises(UserError, match=match):  # ReportError, or MetricsError for top_k
        render_report(summary, COST, **args)


def recommendation(method="csada", rule="argmax", mean=-0.01, lower=-0.02, upper=-0.001, n=5):
    return {"method": method, "decision_rule": rule, "val_wer": 0.04, "test_wer": 0.045, "test_accuracy": 0.951,
            "baseline": {"decision_rule": "argmax", "val_wer": 0.05, "test_wer": 0.055, "test_accuracy": 0.95},
            "paired_difference": {"mean": mean, "lower": lower, "upper": upper, "n": n,
                                  "includes_zero": lower <= 0 <= upper}}


def test_the_report_opens_with_the_recommendation_and_says_whether_the_difference_is_noise():
    text = render_report(SUMMARY, COST, dataset="d", top_k=1, recommendation=recommendation())
    section = text.split("## Recommendation", 1)[1].split("\n## ", 1)[0]
    assert "Recommended: **CSADA, decision rule argmax**" in section
    assert table(text, "## Recommendation") == [
        "| | Baseline (argmax) | Recommended (CSADA, decision rule argmax) |", "|---|---:|---:|",
        "| Validation WER (%) | 5.00 | 4.00 |", "| Test WER (%) | 5.50 | 4.50 |",
        "| Test accuracy (%) | 95.00 | 95.10 |"]
    assert "-1.00 points, 90% confidence interval [-2.00, -0.10] over 5 paired" in section
    assert "excludes 0: the recommended model's test WER is lower" in section
    assert text.index("## Recommendation") < text.index("## Decision rule")
    noisy = render_report(SUMMARY, COST, dataset="d", top_k=1, recommendation=recommendation(upper=0.004))
    assert "The interval includes 0: on the test set the difference is within noise." in noisy
    worse = render_report(SUMMARY, COST, dataset="d", top_k=1, recommendation=recommendation(0.01, 0.002, 0.02))
    assert "on the test set the recommended model is worse" in worse
    kept = render_report(SUMMARY, COST, dataset="d", top_k=1,
                         recommendation=recommendation("baseline", mean=0.0, lower=0.0, upper=0.0, n=1))
    assert "No method beat the baseline on validation: keep the baseline model as it is." in kept


def test_the_report_shows_what_the_search_chose():
    search = {"accuracy_floor": 0.9415, "methods": {
        "csada": {"searched": True, "trials": 7, "stopped_early": 3, "settings": {"optim": {"epochs": 7}},
                  "best": {"trial": 2, "epoch": 7, "val_wer": 0.0986, "val_accuracy": 0.949, "feasible": True,
                           "values": {"adv_weight": 4.25, "lr": 0.0001, "steps": 6}}},
        "ap": {"searched": False, "trials": 0, "note": "not searched (search.max_trials is 0)",
               "settings": {"optim": {"epochs": 8}}}}}
    text = render_report(SUMMARY, COST, dataset="d", top_k=1, search=search)
    rows = table(text, "## Hyperparameter search")
    assert rows[2] == "| CSADA | 7 (3) | adv_weight 4.25, lr 0.0001, steps 6 | 7 | 9.86 | 94.90 |"
    assert rows[3] == "| AP | 0 | recipe settings: not searched (search.max_trials is 0) | 8 | | |"
    assert "down to 94.15% on validation" in text
    assert "time budget" not in text  # every search ran its trials: nothing depends on timing

    search["methods"]["csada"]["budget_reached"] = True
    text = render_report(SUMMARY, COST, dataset="d", top_k=1, search=search)
    assert table(text, "## Hyperparameter search")[2].startswith("| CSADA | 7 (3), time budget reached | adv_weight")
    assert "Where the time budget (search.time_budget_s) ended a search" in text


def test_the_console_recommendation_lines_fit_the_screen():
    from pipeline.reporting.report import recommendation_line

    lines = recommendation_line(recommendation(upper=0.002)).splitlines()
    assert lines[0] == "recommended on validation: CSADA, decision rule argmax"
    assert lines[1] == "  test WER %: 4.50 vs 5.50 for the baseline; difference -1.00, 90% CI [-2.00, 0.20]: within noise"
    assert lines[2] == "  test accuracy %: 95.10 vs 95.00" and all(len(line) <= 100 for line in lines)
