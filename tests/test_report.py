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
        "WER", "Total cost", "Top-1 cost pair error (%): c -> a",
        "Top-2 cost pair error (%): a -> c", "Overall accuracy (%)",
    ]
    wer = lines[2]
    # WER as it is (a mean cost, as in summary.json), four decimals; accuracy a percentage.
    assert wer == "| WER | 0.0549 | 0.0420 (0.0003) | 0.0507 (0.0206) | 0.0512 (0.0208) | 0.0600 (0.0010) |"
    assert lines[3].split("|")[2].strip() == "54.9"  # total cost: one decimal, baseline plain
    assert lines[3].split("|")[3].strip() == "42.0 (0.3)"
    assert "n/a" in lines[5]  # the undefined top-2 rate
    assert lines[6].split("|")[3].strip() == "95.00 (0.05)"


def test_report_second_table_for_expected_cost_and_header():
    text = render_report(SUMMARY, COST, dataset="cifar10", top_k=2, extra={"epochs": 10, "costs": {"seed": 0}},
                         score_notes={"sosr": "SOSR's scores are a heuristic for SOSR.", "absent": "never shown"})
    assert text.index("## Decision rule: argmax") < text.index("## Decision rule: expected cost")
    ec = table(text, "## Decision rule: expected cost")
    assert ec[2] == "| WER | 0.0500 | 0.0400 (0.0002) | 0.0490 (0.0010) | 0.0500 (0.0100) | n/a |"
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
    # Baseline argmax: WER 9 / 4 = 2.25, as summary.json holds it (not "225.00"); total cost 9.0.
    wer = table(text, "## Decision rule: argmax")[2]
    assert wer.startswith("| WER | 2.2500 | ")
    assert summary["baseline"]["argmax"]["wer"]["mean"] == 2.25
    assert "(not a percentage: with costs above 1 it can exceed 1)" in text
    path = tmp_path / "report" / "report.md"
    write_report(text, path)
    write_report(text, path)
    assert path.read_text(encoding="utf-8") == text


def test_one_screen_summary_fits():
    paths = {"report": "reports/report.md", "figures": "results/figures"}
    text = one_screen_summary(SUMMARY, COST, paths=paths, dataset="cifar10", top_k=2, width=100)
    lines = text.splitlines()
    assert len(lines) <= 25
    assert all(len(line) <= 100 for line in lines), max(map(len, lines))
    assert lines[1].split() == ["method", "runs", "WER", "argmax", "WER", "exp-cost",
                                "top-1", "pair", "%", "accuracy", "%"]
    assert [line.split()[0] for line in lines[2:7]] == ["baseline", "csada", "ap", "sosr", "zeta"]
    assert re.split(r"\s{2,}", lines[3].strip()) == [
        "csada", "5", "0.0420 (0.0003)", "0.0400 (0.0002)", "1.00 (0.00)", "95.00 (0.05)"]
    assert lines[2].split()[1:] == ["1", "0.0549", "0.0500", "1.00", "95.00"]
    assert "c -> a, cost 5" in text
    assert lines[-1] == "outputs: report reports/report.md, figures results/figures"
    # Without top pairs the column goes.
    assert "top-1" not in one_screen_summary(SUMMARY, COST, paths={}, top_k=0)


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_the_console_summary_wraps_to_the_terminal_and_keeps_every_beginning(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))  # what shutil.get_terminal_size reads first
    path = "results/" + "deep/" * 30 + "summary.json"
    text = one_screen_summary(SUMMARY, COST, paths={"report": "reports/report.md", "all numbers": path},
                              dataset="a-data-set-with-a-rather-long-name", top_k=2)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), (width, max(lines, key=len))
    title = "Evaluation of a-data-set-with-a-rather-long-name: mean (sd) over replications, rule argmax"
    assert " ".join(line.strip() for line in lines).startswith(title)  # wrapped, never cut
    assert "".join(line.strip() for line in lines).count(path) == 1  # the path whole, across lines
    table = [line for line in lines if line.split()[0] in ("method", *SUMMARY)]
    assert [line.split()[0] for line in table] == ["method", "baseline", "csada", "ap", "sosr", "zeta"]
    assert all(line.split()[1] in ("runs", "1", "3", "5") for line in table)
    if width <= 60:  # the table is 76 wide: the sd goes before any column does; columns that go are named
        assert "(0.0003)" not in text and "0.0420" in text
    else:
        assert "0.0420 (0.0003)" in text and "too narrow" not in text
    if width == 40:
        joined = " ".join(line.strip() for line in lines)
        assert "(too narrow for top-1 pair %, accuracy %: see the report)" in joined


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
        "| Validation WER | 0.0500 | 0.0400 |", "| Test WER | 0.0550 | 0.0450 |",
        "| Test accuracy (%) | 95.00 | 95.10 |"]
    assert "-0.0100, 90% confidence interval [-0.0200, -0.0010] over 5 paired" in section
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
    assert rows[2] == "| CSADA | 7 (3) | adv_weight 4.25, lr 0.0001, steps 6 | 7 | 0.0986 | 94.90 |"
    assert rows[3] == "| AP | 0 | recipe settings: not searched (search.max_trials is 0) | 8 | | |"
    assert "down to 94.15% on validation" in text
    assert "time budget" not in text  # every search ran its trials: nothing depends on timing

    search["methods"]["csada"]["budget_reached"] = True
    text = render_report(SUMMARY, COST, dataset="d", top_k=1, search=search)
    assert table(text, "## Hyperparameter search")[2].startswith("| CSADA | 7 (3), time budget reached | adv_weight")
    assert "Where the time budget (search.time_budget_s) ended a search" in text


def test_the_console_recommendation_lines_fit_the_screen():
    from pipeline.reporting.report import recommendation_line

    lines = recommendation_line(recommendation(upper=0.002), width=100).splitlines()
    assert lines[0] == "recommended on validation: CSADA, decision rule argmax"
    assert lines[1] == "  test WER: 0.0450 (baseline 0.0550), difference -0.0100, 90% CI [-0.0200, 0.0020]: within noise"
    assert lines[2] == "  test accuracy %: 95.10 (baseline 95.00)" and all(len(line) <= 100 for line in lines)
    narrow = recommendation_line(recommendation(upper=0.002), width=50).splitlines()
    assert all(len(line) <= 50 for line in narrow) and len(narrow) > 3
    wer = next(i for i, line in enumerate(narrow) if line.startswith("  test WER: 0.0450"))
    assert narrow[wer + 1].startswith("    -0.0100")  # wrapped, indented under its line
    assert " ".join(line.strip() for line in narrow).endswith("within noise test accuracy %: 95.10 (baseline 95.00)")


def test_the_report_warns_beside_the_recommendation_when_validation_is_too_small():
    def section(errors):
        chosen = {**recommendation(), "baseline_val_errors": errors, "val_samples": 362}
        text = render_report(SUMMARY, COST, dataset="d", top_k=1, recommendation=chosen)
        return text.split("## Recommendation", 1)[1].split("\n## ", 1)[0]

    small = section(7)
    assert ("**Warning: a small validation split.** The baseline makes only 7 errors on the 362 validation "
            "samples (fewer than 20)") in small
    assert small.index("Recommended: **CSADA") < small.index("**Warning") < small.index("| | Baseline")
    assert "Warning" not in section(20)


def test_the_report_says_which_methods_made_identical_test_predictions():
    text = render_report(SUMMARY, COST, dataset="d", top_k=1,
                         identical={"argmax": [["ap", "sosr"]], "expected_cost": [["baseline", "csada", "zeta"]]})
    argmax = text.split("## Decision rule: argmax", 1)[1].split("\n## ", 1)[0]
    expected = text.split("## Decision rule: expected cost", 1)[1].split("\n## ", 1)[0]
    assert ("AP and SOSR predicted the same class for every test sample in every run under this rule, so their "
            "columns are equal") in argmax
    assert "Baseline, CSADA and zeta predicted the same class" in expected and "AP and SOSR" not in expected
    assert "predicted the same class" not in render_report(SUMMARY, COST, dataset="d", top_k=1)


def abstention(threshold=0.29, calibration_rate=0.25, held_rate=0.2, held_cost=0.05):
    return {"model": "csada-r0", "decision_rule": "calibrated_expected_cost", "threshold": threshold, "max_cost": 0.35,
            "bound": 56.7, "floor": 56.7 / 181, "calibration_cases": 180, "calibration_fraction": 0.5,
            "calibration": {"n": 180, "cost_per_case": 0.03, "abstention_rate": calibration_rate,
                            "cost_per_decided_case": 0.04},
            "held_out": {"n": 177, "cost_per_case": held_cost, "abstention_rate": held_rate,
                         "cost_per_decided_case": None if held_rate == 1 else 0.0625, "wer_deciding_all": 0.26}}


def test_the_report_shows_the_abstention_beside_its_promise():
    text = render_report(SUMMARY, COST, dataset="d", top_k=1, recommendation=recommendation(), abstention=abstention())
    section = text.split("## Abstention", 1)[1].split("\n## ", 1)[0]
    assert "(csada-r0, calibrated_expected_cost) abstains when the expected cost of its decision is at least 0.29" in section
    assert "on 180 test cases (a stratified 0.5 of the test split)" in section
    assert table(text, "## Abstention") == [
        "| | max_cost (promise) | cost per case | abstained (%) | cost per decided case |", "|---|---:|---:|---:|---:|",
        "| Calibration cases (n = 180) | 0.35 | 0.03 | 25.00 | 0.04 |",
        "| Held-out test cases (n = 177) | 0.35 | 0.05 | 20.00 | 0.0625 |"]
    assert "no promise below B/(n+1) = 0.3133 can be kept" in section and "figures/abstention.png" in section
    assert text.index("## Recommendation") < text.index("## Abstention") < text.index("## Cost matrix")
    never = render_report(SUMMARY, COST, dataset="d", top_k=1, abstention=abstention(None, 0.0, 0.0))
    assert "never abstains: deciding every case meets the promise" in never
    everything = render_report(SUMMARY, COST, dataset="d", top_k=1, abstention=abstention(0.0, 1.0, 1.0, 0.0))
    assert "| Held-out test cases (n = 177) | 0.35 | 0 | 100.00 | n/a |" in everything
    assert "## Abstention" not in render_report(SUMMARY, COST, dataset="d", top_k=1)
