import json
import math

import numpy as np
import pytest
import torch

from pipeline.method.costs import CostMatrix
from pipeline.method.metrics import (
    MetricsError,
    Summary,
    aggregate_replications,
    confusion_matrix,
    cost_metrics,
    flat_metrics,
    format_mean_sd,
    metrics_from_confusion,
    summarize,
)

COST = CostMatrix(["a", "b", "c"], [[0, 1, 4], [2, 0, 1], [5, 3, 0]])

# Hand-made predictions for 10 samples.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 0, 1, 2, 0, 1]
# Confusion (rows true, columns predicted):
#   a: a a b c -> [2, 1, 1]
#   b: b a b   -> [1, 2, 0]
#   c: c a b   -> [1, 1, 1]
# Correct 5 of 10. Errors and their costs:
#   a->b 1, a->c 4, b->a 2, c->a 5, c->b 3  => total cost 15, WER 15 / 10 = 1.5.
CONFUSION = [[2, 1, 1], [1, 2, 0], [1, 1, 1]]


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONFUSION)


def test_confusion_matrix_accepts_tensors_and_keeps_empty_classes():
    conf = confusion_matrix(torch.tensor(Y_TRUE), torch.tensor(Y_PRED), 4)
    np.testing.assert_array_equal(conf[:3, :3], CONFUSION)
    assert conf[3].sum() == 0 and conf[:, 3].sum() == 0
    np.testing.assert_array_equal(confusion_matrix([], [], 2), np.zeros((2, 2)))


@pytest.mark.parametrize(
    "y_true, y_pred, k, message",
    [
        ([0, 1], [0], 2, "y_true has 2 labels but y_pred has 1"),
        ([0, 3], [0, 1], 3, "y_true[1] = 3 is not a class index in [0, 2]"),
        ([0, 1], [-1, 1], 3, "y_pred[0] = -1"),
        ([0.0, 1.0], [0, 1], 2, "integer class indices"),
        ([[0, 1]], [[0, 1]], 2, "must be 1-D"),
        ([0], [0], 0, "num_classes must be an integer >= 1"),
    ],
)
def test_confusion_matrix_errors(y_true, y_pred, k, message):
    with pytest.raises(MetricsError) as info:
        confusion_matrix(y_true, y_pred, k)
    assert message in str(info.value)


def test_cost_metrics_by_hand():
    m = cost_metrics(Y_TRUE, Y_PRED, COST, top_k=3)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["error_count"] == 5
    assert m["total_cost"] == pytest.approx(15.0)
    assert m["wer"] == pytest.approx(1.5)
    np.testing.assert_array_equal(m["confusion"], CONFUSION)
    np.testing.assert_array_equal(m["pair_error_count"], [[0, 1, 1], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_allclose(m["pair_error_rate"], [[0, 1 / 4, 1 / 4], [1 / 3, 0, 0], [1 / 3, 1 / 3, 0]])
    # Costliest pairs: c->a (5), a->c (4), c->b (3).
    assert m["top_pairs"] == [("c", "a"), ("a", "c"), ("c", "b")]
    assert m["top_pair_error_rate"] == pytest.approx([1 / 3, 1 / 4, 1 / 3])
    assert m["top_pair_error_count"] == [1, 1, 1]


def test_unit_costs_make_wer_the_error_rate():
    unit = CostMatrix(["a", "b", "c"], np.ones((3, 3)) - np.eye(3))
    m = cost_metrics(Y_TRUE, Y_PRED, unit)
    assert m["wer"] == pytest.approx(1 - m["accuracy"])
    assert m["total_cost"] == m["error_count"]


def test_absent_class_row_is_nan_and_flattens_to_none():
    # Class c never occurs: its pair error rates are undefined.
    m = cost_metrics([0, 0, 1], [1, 0, 2], COST, top_k=3)
    rates = m["pair_error_rate"]
    assert np.isnan(rates[2, 0]) and np.isnan(rates[2, 1]) and rates[2, 2] == 0.0
    flat = flat_metrics(m)
    assert flat["top1_pair_error_rate"] is None  # c->a
    assert flat["top2_pair_error_rate"] == pytest.approx(0.0)  # a->c
    json.dumps(flat, allow_nan=False)


def test_top_k_is_clamped_and_zero_allowed():
    m = cost_metrics(Y_TRUE, Y_PRED, COST, top_k=50)
    assert len(m["top_pairs"]) == 6
    m0 = cost_metrics(Y_TRUE, Y_PRED, COST, top_k=0)
    assert m0["top_pairs"] == [] and m0["top_pair_error_rate"] == []
    with pytest.raises(MetricsError, match="top_k"):
        cost_metrics(Y_TRUE, Y_PRED, COST, top_k=-1)


def test_metrics_from_confusion_errors():
    with pytest.raises(MetricsError, match="3 x 3"):
        metrics_from_confusion(np.zeros((2, 2), dtype=np.int64), COST)
    with pytest.raises(MetricsError, match="non-negative integer"):
        metrics_from_confusion(np.full((3, 3), 0.5), COST)
    with pytest.raises(MetricsError, match="empty"):
        metrics_from_confusion(np.zeros((3, 3), dtype=np.int64), COST)


def test_flat_metrics_keys_and_types():
    flat = flat_metrics(cost_metrics(Y_TRUE, Y_PRED, COST, top_k=2))
    assert flat == {
        "n": 10,
        "accuracy": pytest.approx(0.5),
        "wer": pytest.approx(1.5),
        "total_cost": pytest.approx(15.0),
        "error_count": 5,
        "top1_pair_error_rate": pytest.approx(1 / 3),
        "top1_pair_error_count": 1,
        "top2_pair_error_rate": pytest.approx(1 / 4),
        "top2_pair_error_count": 1,
    }
    assert all(type(v) in (int, float) for v in flat.values())


def test_summarize_three_values_by_hand():
    s = summarize([1.0, 2.0, 3.0])
    # mean 2, sample sd 1; t_{0.95, 2} = 2.919986 (t table); half width 2.919986 * sqrt(1 + 1/3).
    half = 2.919986 * math.sqrt(4 / 3)
    assert (s.mean, s.sd, s.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert s.lower == pytest.approx(2.0 - half, abs=1e-5)
    assert s.upper == pytest.approx(2.0 + half, abs=1e-5)


def test_summarize_single_and_invalid():
    assert summarize([4.2]) == Summary(mean=4.2, sd=0.0, lower=4.2, upper=4.2, n=1)
    with pytest.raises(MetricsError, match="non-empty"):
        summarize([])
    with pytest.raises(MetricsError, match="value 1 is nan"):
        summarize([1.0, math.nan])


def test_aggregate_replications():
    runs = [
        {"wer": 1.0, "accuracy": 0.9, "top1_pair_error_rate": None, "only_here": 3.0},
        {"wer": 2.0, "accuracy": 0.8, "top1_pair_error_rate": None},
        {"wer": 3.0, "accuracy": 0.7, "top1_pair_error_rate": None},
    ]
    out = aggregate_replications(runs)
    assert list(out) == ["wer", "accuracy", "top1_pair_error_rate"]
    assert out["wer"] == summarize([1.0, 2.0, 3.0])
    assert out["accuracy"].mean == pytest.approx(0.8)
    undefined = out["top1_pair_error_rate"]
    assert math.isnan(undefined.mean) and undefined.n == 3
    with pytest.raises(MetricsError, match="at least one run"):
        aggregate_replications([])
    with pytest.raises(MetricsError, match="non-numeric"):
        aggregate_replications([{"wer": "high"}])


def test_format_mean_sd():
    assert format_mean_sd(Summary(4.2, 0.03, 4.1, 4.3, 10)) == "4.20 (0.03)"
    assert format_mean_sd(Summary(0.042, 0.0003, 0.0, 0.1, 10), scale=100) == "4.20 (0.03)"
    assert format_mean_sd(Summary(18.0, 1.0, 0.0, 0.0, 5), digits=1) == "18.0 (1.0)"
