import json
import math

import pandas as pd
import pytest
import torch
from scipy import stats

from pipeline.method.costs import CostMatrix
from pipeline.method.metrics import MetricsError
from pipeline.reporting.evaluation import (
    PAIR_COLUMNS,
    EvaluationError,
    RunPredictions,
    evaluate_run,
    metrics_summary,
    ordered_methods,
    summarize_runs,
)
from pipeline.reporting.outputs import read_summary, write_evaluation
from pipeline.reporting.recommendation import recommend

COST = CostMatrix(["a", "b", "c"], [[0, 1, 4], [2, 0, 1], [5, 3, 0]])
# Pairs by cost: c->a 5, a->c 4, c->b 3, b->a 2, then a->b and b->c (1 each, row-major).

LABELS = torch.tensor([0, 0, 1, 2])
# Probabilities per sample and the decision of each rule (expected cost of predicting a, b, c):
#   s0 true a [.5 .3 .2]: argmax a (ok)       E = [1.6, 1.1, 2.3] -> b (a->b, cost 1)
#   s1 true a [.1 .1 .8]: argmax c (a->c, 4)  E = [4.2, 2.5, 0.5] -> c (a->c, 4)
#   s2 true b [.2 .6 .2]: argmax b (ok)       E = [2.2, 0.8, 1.4] -> b (ok)
#   s3 true c [.6 .1 .3]: argmax a (c->a, 5)  E = [1.7, 1.5, 2.5] -> b (c->b, 3)
MIXED = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.6, 0.1, 0.3]]))
# Argmax: 2 of 4 correct, cost 4 + 5 = 9, WER 2.25.  Expected cost: 1 of 4, cost 1 + 4 + 3 = 8, WER 2.
# 0.8 on the true class: both rules get every sample right (E for a row [.8 .1 .1] is [.7, 1.1, 3.3]
# and so on), so WER 0 and accuracy 1.
CONFIDENT = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))

T90_DF1 = float(stats.t.ppf(0.95, df=1))


def run(method, rep, logits, labels=LABELS, history=None):
    return RunPredictions(method=method, replication=rep, logits=logits, labels=labels, history=history)


RUNS = [
    run("csada", 1, CONFIDENT, history=[{"epoch": 1, "val_wer": 0.3, "val_loss": 1.5}, {"epoch": 2, "val_wer": 0.2}]),
    run("baseline", None, MIXED),
    run("csada", 0, MIXED, history=[{"epoch": 1, "val_wer": 0.5}, {"epoch": 2, "val_wer": 0.4, "val_loss": 0.9}]),
]


def test_evaluate_run_rules_differ_by_hand():
    out = evaluate_run(run("baseline", None, MIXED), COST, top_k=3)
    am, ec = out["argmax"], out["expected_cost"]
    assert am["accuracy"] == 0.5 and am["total_cost"] == 9.0 and am["wer"] == 2.25
    assert ec["accuracy"] == 0.25 and ec["total_cost"] == 8.0 and ec["wer"] == 2.0
    assert am["top_pairs"] == [("c", "a"), ("a", "c"), ("c", "b")]
    assert am["top_pair_error_rate"] == [1.0, 0.5, 0.0]
    assert ec["top_pair_error_rate"] == [0.0, 0.5, 1.0]


def test_summary_numbers_by_hand_for_two_replications():
    ev = summarize_runs(RUNS, COST, top_k=2)
    assert list(ev) == ["baseline", "csada"]
    assert list(ev["csada"]["runs"]) == ["csada-r0", "csada-r1"]
    wer = ev["csada"]["summary"]["argmax"]["wer"]
    # Values 2.25 and 0: mean 1.125, sd |2.25 - 0| / sqrt(2).
    sd = 2.25 / math.sqrt(2)
    half = T90_DF1 * sd * math.sqrt(1.5)
    assert wer["n"] == 2
    assert wer["mean"] == pytest.approx(1.125)
    assert wer["sd"] == pytest.approx(sd)
    assert wer["lower"] == pytest.approx(1.125 - half) and wer["upper"] == pytest.approx(1.125 + half)
    ec = ev["csada"]["summary"]["expected_cost"]
    assert ec["wer"]["mean"] == pytest.approx(1.0) and ec["wer"]["sd"] == pytest.approx(2 / math.sqrt(2))
    assert ec["accuracy"]["mean"] == pytest.approx(0.625)  # (0.25 + 1) / 2
    assert ec["top2_pair_error_rate"]["mean"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert ev["csada"]["runs"]["csada-r0"]["argmax"]["total_cost"] == 9.0
    # One run: sd 0 and a collapsed interval, in the same shape as replicated methods.
    base = ev["baseline"]["summary"]["argmax"]["wer"]
    assert base == {"mean": 2.25, "sd": 0.0, "lower": 2.25, "upper": 2.25, "n": 1}
    assert metrics_summary(ev)["csada"] is ev["csada"]["summary"]


def test_written_summary_and_full_evaluation(tmp_path):
    summary = write_evaluation(RUNS, COST, tmp_path, top_k=2)
    on_disk = read_summary(tmp_path / "summary.json")["methods"]
    assert on_disk == summary
    headline = json.loads((tmp_path / "metrics/headline.json").read_text())
    assert headline["csada"]["argmax"] == {"wer": summary["csada"]["argmax"]["wer"]["mean"],
                                           "accuracy": summary["csada"]["argmax"]["accuracy"]["mean"]}
    assert headline["csada"]["calibrated_expected_cost"] == {
        "wer": summary["csada"]["calibrated_expected_cost"]["wer"]["mean"]}
    assert "expected_cost" not in headline["csada"]  # in summary.json, not a column of dvc exp show
    assert sum(len(metrics) for rules in headline.values() for metrics in rules.values()) == 2 * 3
    assert set(on_disk) == {"baseline", "csada"}
    assert set(on_disk["csada"]) == {"argmax", "expected_cost", "calibrated_expected_cost"}
    assert set(on_disk["csada"]["argmax"]["wer"]) == {"mean", "sd", "lower", "upper", "n"}
    full = json.loads((tmp_path / "tables/evaluation.json").read_text())
    assert full["csada"]["runs"]["csada-r1"]["argmax"]["wer"] == 0.0
    assert full["csada"]["runs"]["csada-r0"]["expected_cost"]["top1_pair_error_rate"] == 0.0
    assert {m: e["summary"] for m, e in full.items()} == on_disk


def test_pair_tables_parse_back(tmp_path):
    write_evaluation(RUNS, COST, tmp_path, top_k=2)
    pairs = pd.read_csv(tmp_path / "tables/pair_errors.csv")
    assert tuple(pairs.columns) == PAIR_COLUMNS
    assert len(pairs) == 3 * 3 * 6  # runs x rules x off-diagonal pairs
    row = pairs.query("run == 'csada-r0' and rule == 'argmax' and true_class == 'c' and predicted_class == 'a'")
    assert row[["cost", "cost_rank", "errors", "class_count", "rate"]].values.tolist() == [[5.0, 1, 1, 1, 1.0]]
    assert pairs.loc[pairs["run"] == "baseline", "replication"].isna().all()
    assert pairs.groupby(["run", "rule"])["errors"].sum().to_dict()[("csada-r0", "expected_cost")] == 3

    parquet = pd.read_parquet(tmp_path / "tables/pair_errors.parquet")
    assert tuple(parquet.columns) == PAIR_COLUMNS and len(parquet) == len(pairs)
    assert str(parquet["replication"].dtype) == "Int64"

    top = pd.read_csv(tmp_path / "tables/top_pairs.csv")
    assert len(top) == 3 * 3 * 2
    first = top[(top["run"] == "csada-r0") & (top["rule"] == "argmax")]
    assert first["cost_rank"].tolist() == [1, 2]
    assert list(zip(first["true_class"], first["predicted_class"])) == [("c", "a"), ("a", "c")]
    assert first["rate"].tolist() == [1.0, 0.5]


def test_confusion_csvs_of_the_baseline_and_the_recommended_model(tmp_path):
    # csada's replications have the lowest validation WER under argmax: it is recommended.
    validation = {"baseline": {"argmax": 0.5, "expected_cost": 0.5, "calibrated_expected_cost": 0.5},
                  "csada-r0": {"argmax": 0.2, "expected_cost": 0.6, "calibrated_expected_cost": 0.6},
                  "csada-r1": {"argmax": 0.3, "expected_cost": 0.6, "calibrated_expected_cost": 0.6}}
    write_evaluation(RUNS, COST, tmp_path, top_k=2, validation=validation)
    recommendation = json.loads((tmp_path / "recommendation.json").read_text())
    assert (recommendation["method"], recommendation["decision_rule"]) == ("csada", "argmax")
    assert recommendation["val_wer"] == pytest.approx(0.25)
    # Test side, by hand: r0 (MIXED) has WER 2.25 and accuracy 0.5 like the baseline, r1 (CONFIDENT)
    # WER 0 and accuracy 1; paired differences [0, -2.25]: mean -1.125, sd 2.25 / sqrt 2, so the
    # 90% interval is -1.125 +- t(0.95, 1) * 1.125, which includes 0.
    assert recommendation["baseline"] == {"decision_rule": "argmax", "val_wer": 0.5, "test_wer": 2.25,
                                          "test_accuracy": 0.5}
    assert (recommendation["test_wer"], recommendation["test_accuracy"]) == (1.125, 0.75)
    diff = recommendation["paired_difference"]
    assert diff["mean"] == pytest.approx(-1.125) and diff["n"] == 2 and diff["includes_zero"]
    assert diff["lower"] == pytest.approx(-1.125 - T90_DF1 * 1.125)
    assert diff["upper"] == pytest.approx(-1.125 + T90_DF1 * 1.125)
    headline = json.loads((tmp_path / "metrics/headline.json").read_text())
    # The recommendation first, then the baseline's argmax WER and accuracy beside it, then the
    # rest: DVC shows the columns in the file's order (the file is not key-sorted).
    assert list(headline) == ["recommended", "baseline", "csada"]
    assert headline["recommended"] == {"method": "csada", "rule": "argmax", "test_wer": 1.125, "test_accuracy": 0.75}
    assert list(headline["recommended"]) == ["method", "rule", "test_wer", "test_accuracy"]
    assert list(headline["baseline"]) == ["argmax", "calibrated_expected_cost"]
    assert list(headline["baseline"]["argmax"].items()) == [("wer", 2.25), ("accuracy", 0.5)]
    conf = pd.read_csv(tmp_path / "plots/confusion/recommended.csv")
    assert list(conf.columns) == ["actual", "predicted"]
    # One model beside the baseline's one, never the replications pooled: the first, r0 (MIXED: a, c, b, a),
    # one row per test sample.
    assert conf.values.tolist() == [["a", "a"], ["a", "c"], ["b", "b"], ["c", "a"]]
    assert len(pd.read_csv(tmp_path / "plots/confusion/baseline.csv")) == len(LABELS)


def test_the_exported_model_is_the_replication_of_lowest_validation_wer_with_its_own_test_decisions(tmp_path):
    # csada is recommended under argmax (mean validation WER 0.25); of its replications r1 has
    # the lower validation WER (0.2 < 0.3), so r1 is the one model exported, with r1's own test
    # figures (CONFIDENT: right on every sample), not the means over replications.
    validation = {"baseline": {"argmax": 0.5, "expected_cost": 0.5, "calibrated_expected_cost": 0.5},
                  "csada-r0": {"argmax": 0.3, "expected_cost": 0.6, "calibrated_expected_cost": 0.6},
                  "csada-r1": {"argmax": 0.2, "expected_cost": 0.6, "calibrated_expected_cost": 0.6}}
    write_evaluation(RUNS, COST, tmp_path, top_k=2, validation=validation)
    recommendation = json.loads((tmp_path / "recommendation.json").read_text())
    exported = recommendation["exported"]
    assert (exported["run"], exported["replication"], exported["decision_rule"]) == ("csada-r1", 1, "argmax")
    assert (exported["val_wer"], exported["test_wer"], exported["test_accuracy"]) == (0.2, 0.0, 1.0)
    assert recommendation["test_wer"] == 1.125  # the recommendation's own figures stay means
    decisions = pd.read_csv(tmp_path / "tables/exported_decisions.csv")
    assert decisions.values.tolist() == [["a", "a"], ["a", "a"], ["b", "b"], ["c", "c"]]
    assert list(decisions.columns) == ["actual", "decision"]

    # The other way round, r0 is exported, under its rule: MIXED's argmax decisions.
    validation["csada-r0"]["argmax"], validation["csada-r1"]["argmax"] = 0.2, 0.3
    write_evaluation(RUNS, COST, tmp_path, top_k=2, validation=validation)
    assert json.loads((tmp_path / "recommendation.json").read_text())["exported"]["run"] == "csada-r0"
    assert pd.read_csv(tmp_path / "tables/exported_decisions.csv")["decision"].tolist() == ["a", "c", "b", "a"]


def test_a_recommended_baseline_is_exported_itself(tmp_path):
    runs = [run("baseline", None, MIXED), run("ap", 0, CONFIDENT)]
    validation = {"baseline": {"argmax": 0.3, "expected_cost": 0.2, "calibrated_expected_cost": 0.31},
                  "ap-r0": {"argmax": 0.31, "expected_cost": 0.4, "calibrated_expected_cost": 0.5}}
    write_evaluation(runs, COST, tmp_path, top_k=1, validation=validation)
    exported = json.loads((tmp_path / "recommendation.json").read_text())["exported"]
    assert (exported["run"], exported["replication"], exported["decision_rule"]) == ("baseline", None, "expected_cost")
    assert exported["test_wer"] == 2.0  # MIXED under the expected-cost rule, by hand above
    assert pd.read_csv(tmp_path / "tables/exported_decisions.csv")["decision"].tolist() == ["b", "c", "b", "b"]


def test_the_baseline_wins_every_tie_and_is_recommended_when_nothing_beats_it():
    runs = {"ap": ["ap-r0"], "baseline": ["baseline"]}  # the baseline listed last: ties must still go to it

    def rules(argmax, expected, calibrated):
        return {"argmax": argmax, "expected_cost": expected, "calibrated_expected_cost": calibrated}

    tie = {"baseline": rules(0.4, 0.5, 0.5), "ap-r0": rules(0.4, 0.4, 0.45)}
    assert (recommend(tie, runs)["method"], recommend(tie, runs)["decision_rule"]) == ("baseline", "argmax")
    worse = {"baseline": rules(0.4, 0.5, 0.5), "ap-r0": rules(0.41, 0.45, 0.42)}
    assert recommend(worse, runs)["method"] == "baseline"
    better = {"baseline": rules(0.4, 0.3, 0.35), "ap-r0": rules(0.41, 0.45, 0.45)}
    assert (recommend(better, runs)["method"], recommend(better, runs)["decision_rule"]) == ("baseline", "expected_cost")
    calibrated = {"baseline": rules(0.4, 0.5, 0.2), "ap-r0": rules(0.41, 0.45, 0.3)}
    assert recommend(calibrated, runs)["decision_rule"] == "calibrated_expected_cost"


def test_when_every_method_hurts_on_validation_the_baseline_is_recommended_with_no_difference(tmp_path):
    # CONFIDENT is right on every test sample, but on validation every fine-tuned run is worse
    # than the baseline under every rule: the product keeps the baseline, whatever the test says.
    runs = [run("baseline", None, MIXED), run("ap", 0, CONFIDENT), run("ap", 1, CONFIDENT), run("csada", 0, CONFIDENT)]
    validation = {"baseline": {"argmax": 0.3, "expected_cost": 0.35, "calibrated_expected_cost": 0.31},
                  **{name: {"argmax": 0.31, "expected_cost": 0.4, "calibrated_expected_cost": 0.5}
                     for name in ("ap-r0", "ap-r1", "csada-r0")}}
    write_evaluation(runs, COST, tmp_path, top_k=1, validation=validation)
    recommendation = json.loads((tmp_path / "recommendation.json").read_text())
    assert (recommendation["method"], recommendation["decision_rule"]) == ("baseline", "argmax")
    assert recommendation["test_wer"] == recommendation["baseline"]["test_wer"] == 2.25
    assert recommendation["paired_difference"] == {"mean": 0.0, "lower": 0.0, "upper": 0.0, "n": 1,
                                                   "includes_zero": None}  # one run: no interval


def test_history_plots_keep_the_baseline_and_the_fine_tuning_apart(tmp_path):
    runs = [*(r for r in RUNS if r.method != "baseline"),
            run("baseline", None, MIXED, history=[{"epoch": 0, "val_loss": 2.0}, {"epoch": 1, "val_loss": 1.0}])]
    write_evaluation(runs, COST, tmp_path, top_k=2)
    wer = pd.read_csv(tmp_path / "plots/finetune_val_wer.csv")
    assert list(wer.columns) == ["epoch", "run", "method", "val_wer"]
    assert wer.values.tolist() == [[1, "csada-r0", "csada", 0.5], [2, "csada-r0", "csada", 0.4],
                                   [1, "csada-r1", "csada", 0.3], [2, "csada-r1", "csada", 0.2]]
    loss = pd.read_csv(tmp_path / "plots/baseline_val_loss.csv")
    assert loss.values.tolist() == [[0, "baseline", "baseline", 2.0], [1, "baseline", "baseline", 1.0]]


def test_history_without_epoch_uses_position_and_empty_history_writes_header(tmp_path):
    runs = [run("ap", 0, MIXED, history=[{"val_wer": 0.7}, {"val_wer": 0.6}])]
    write_evaluation(runs, COST, tmp_path, top_k=1)
    assert pd.read_csv(tmp_path / "plots/finetune_val_wer.csv")["epoch"].tolist() == [1, 2]
    assert (tmp_path / "plots/baseline_val_loss.csv").read_text() == "epoch,run,method,val_loss\n"


def test_writing_twice_gives_identical_bytes(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    write_evaluation(RUNS, COST, first, top_k=2)
    write_evaluation(list(reversed(RUNS)), COST, second, top_k=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) == 11
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert not list(tmp_path.rglob("*.tmp*"))


def test_absent_class_gives_null_and_empty_cells(tmp_path):
    labels = torch.tensor([0, 0, 1, 1])  # no sample of class c: pairs c->a, c->b undefined
    runs = [run("baseline", None, MIXED, labels), run("sosr", 0, MIXED, labels), run("sosr", 1, CONFIDENT, labels)]
    summary = write_evaluation(runs, COST, tmp_path, top_k=3)
    text = (tmp_path / "summary.json").read_text() + (tmp_path / "metrics/headline.json").read_text()
    assert "NaN" not in text
    assert summary["baseline"]["argmax"]["top1_pair_error_rate"]["mean"] is None
    assert summary["sosr"]["argmax"]["top1_pair_error_rate"] == {"mean": None, "sd": None, "lower": None, "upper": None, "n": 2}
    assert summary["sosr"]["argmax"]["top2_pair_error_rate"]["mean"] is not None  # a->c is defined
    pairs = pd.read_csv(tmp_path / "tables/pair_errors.csv")
    undefined = pairs[pairs["true_class"] == "c"]
    assert undefined["rate"].isna().all() and (undefined["class_count"] == 0).all()


def test_ordered_methods_paper_order_then_alphabetical():
    assert ordered_methods(["zeta", "penalty", "sosr", "alpha", "csada", "baseline", "ap"]) == [
        "baseline", "csada", "ap", "sosr", "penalty", "alpha", "zeta"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "a/b"}, "file name"),
        ({"replication": -1}, "replication"),
        ({"logits": torch.zeros(4, 3, dtype=torch.long)}, "floating-point"),
        ({"labels": torch.zeros(4)}, "integer"),
        ({"labels": torch.tensor([0, 1])}, "must match"),
        ({"history": {"val_wer": 1}}, "history"),
    ],
)
def test_bad_run_fails_clearly(kwargs, match):
    args = {"method": "csada", "replication": 0, "logits": MIXED, "labels": LABELS, "history": None, **kwargs}
    with pytest.raises(EvaluationError, match=match):
        RunPredictions(**args)


def test_bad_groups_and_shapes_fail_before_writing(tmp_path):
    with pytest.raises(EvaluationError, match="duplicate replications"):
        write_evaluation([run("csada", 0, MIXED), run("csada", 0, CONFIDENT)], COST, tmp_path, top_k=1)
    with pytest.raises(EvaluationError, match="replication None"):
        summarize_runs([run("csada", None, MIXED), run("csada", 0, CONFIDENT)], COST, top_k=1)
    with pytest.raises(EvaluationError, match="4 classes but the cost matrix has 3"):
        write_evaluation([run("ap", 0, torch.zeros(4, 4))], COST, tmp_path, top_k=1)
    with pytest.raises(MetricsError, match="top_k"):
        summarize_runs(RUNS, COST, top_k=-1)
    with pytest.raises(EvaluationError, match="no runs"):
        summarize_runs([], COST, top_k=1)
    with pytest.raises(EvaluationError, match="non-numeric"):
        write_evaluation([run("ap", 0, MIXED, history=[{"val_wer": "x"}])], COST, tmp_path, top_k=1)
    assert not any(tmp_path.iterdir())


def test_methods_whose_test_predictions_coincide_are_named_per_rule(tmp_path):
    # ap and penalty: different scores, the same decisions replication by replication (doubled
    # log-probabilities and a nudge keep every argmax and expected-cost decision); csada's two
    # runs both decide as the baseline does, so it stands with the baseline.
    nudge = torch.full_like(MIXED, 1e-3)
    runs = [run("baseline", None, MIXED), run("csada", 0, MIXED + nudge), run("csada", 1, MIXED),
            run("ap", 0, CONFIDENT), run("ap", 1, MIXED), run("penalty", 0, 2 * CONFIDENT), run("penalty", 1, MIXED + nudge)]
    write_evaluation(runs, COST, tmp_path, top_k=1)
    same = read_summary(tmp_path / "summary.json")["identical_predictions"]
    assert same == {rule: [["baseline", "csada"], ["ap", "penalty"]]
                    for rule in ("argmax", "expected_cost", "calibrated_expected_cost")}
    # The same decisions in the other replication order are not the same predictions.
    swapped = [*runs[:3], run("ap", 0, MIXED), run("ap", 1, CONFIDENT), *runs[5:]]
    write_evaluation(swapped, COST, tmp_path, top_k=1)
    assert read_summary(tmp_path / "summary.json")["identical_predictions"] == {
        rule: [["baseline", "csada"]] for rule in ("argmax", "expected_cost", "calibrated_expected_cost")}


def test_the_recommendation_records_how_many_errors_the_baseline_made_on_validation(tmp_path):
    from pipeline.reporting.recommendation import MIN_BASELINE_VAL_ERRORS, small_validation_warning

    validation = {name: {"argmax": 0.5, "expected_cost": 0.5, "calibrated_expected_cost": 0.5}
                  for name in ("baseline", "csada-r0", "csada-r1")}
    write_evaluation(RUNS, COST, tmp_path, top_k=1, validation=validation, baseline_val_errors=(7, 362))
    recommendation = json.loads((tmp_path / "recommendation.json").read_text())
    assert (recommendation["baseline_val_errors"], recommendation["val_samples"]) == (7, 362)
    warning = small_validation_warning(recommendation)
    assert warning.startswith("the baseline makes only 7 errors on the 362 validation samples (fewer than 20)")
    assert "the recommendation means little" in warning
    assert MIN_BASELINE_VAL_ERRORS == 20
    assert small_validation_warning({**recommendation, "baseline_val_errors": 20}) is None
    assert small_validation_warning({**recommendation, "baseline_val_errors": 19}) is not None
    write_evaluation(RUNS, COST, tmp_path, top_k=1, validation=validation)  # not measured: not recorded
    assert "baseline_val_errors" not in json.loads((tmp_path / "recommendation.json").read_text())
