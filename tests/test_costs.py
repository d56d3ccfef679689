import math
import re
import types

import numpy as np
import pytest
import torch

from pipeline.method.costfiles import (
    CSV_CORNER,
    build_cost_matrix,
    expert_from_yaml,
    load_costs,
    read_csv,
    save_costs,
    write_csv,
)
from pipeline.method.costs import MAX_COST, CostMatrix, CostMatrixError

ABC = ["a", "b", "c"]
# Asymmetric on purpose: c(a, c) = 4 but c(c, a) = 5.
HAND = [[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [5.0, 3.0, 0.0]]


@pytest.fixture
def cm() -> CostMatrix:
    return CostMatrix(ABC, HAND)


# ---------------------------------------------------------------- construction and access


def test_basic_access(cm):
    assert cm.classes == ABC
    assert cm.num_classes == 3
    assert cm.values.dtype == np.float64
    np.testing.assert_array_equal(cm.values, HAND)
    assert cm.index("c") == 2


def test_values_are_read_only_and_private():
    source = np.array(HAND)
    cm = CostMatrix(ABC, source)
    source[0, 1] = 99.0
    assert cm.values[0, 1] == 1.0
    with pytest.raises(ValueError):
        cm.values[0, 1] = 7.0
    with pytest.raises(AttributeError):
        cm.classes = ["x", "y", "z"]
    returned = cm.classes
    returned[0] = "changed"
    assert cm.classes == ABC


def test_integer_class_names_become_strings():
    cm = CostMatrix(range(3), HAND)
    assert cm.classes == ["0", "1", "2"]


def test_equality_hash_repr(cm):
    same = CostMatrix(list(ABC), np.array(HAND))
    assert cm == same and hash(cm) == hash(same)
    assert cm != CostMatrix(["a", "b", "x"], HAND)
    other = np.array(HAND)
    other[0, 1] = 1.5
    assert cm != CostMatrix(ABC, other)
    assert cm != "not a cost matrix"
    text = repr(cm)
    assert "K=3" in text and "'a'" in text and "[1, 5]" in text
    big = CostMatrix.pareto([f"class{i}" for i in range(50)], seed=0)
    assert len(repr(big)) < 200


def test_as_tensor(cm):
    t = cm.as_tensor()
    assert t.dtype == torch.float32 and t.shape == (3, 3)
    assert torch.equal(cm.as_tensor(torch.float64), torch.tensor(HAND, dtype=torch.float64))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "classes, values, message",
    [
        (ABC, [0.0, 1.0, 2.0], "square 2-D"),
        (ABC, [[0, 1, 1], [1, 0, 1]], "square 2-D"),
        (["a", "b"], HAND, "3 x 3 but there are 2 classes"),
        (["a"], [[0.0]], "at least 2 classes"),
        (ABC, [[0, 1, 1], [1, 0, math.nan], [1, 1, 0]], "c('b', 'c') at [1, 2]"),
        (ABC, [[0, 1, 1], [1, 0, 1], [math.inf, 1, 0]], "c('c', 'a') at [2, 0]"),
        (ABC, [[0, -math.inf, 1], [1, 0, 1], [1, 1, 0]], "c('a', 'b') at [0, 1]"),
        (ABC, [[0, 1, 1], [1, 0, -0.5], [1, 1, 0]], "costs must be >= 0"),
        (ABC, [[0, 1, 1], [1, 2, 1], [1, 1, 0]], "c('b', 'b') at [1, 1]"),
        (ABC, np.zeros((3, 3)), "every cost is 0"),
        (["a", "b", "a"], HAND, "duplicate class name 'a'"),
        (["a", "", "c"], HAND, "non-empty"),
        (["a", "  ", "c"], HAND, "non-empty"),
        (["a", None, "c"], HAND, "must be a string"),
        ("abc", HAND, "sequence of names"),
        (ABC, [["0", "x", "1"], [1, 0, 1], [1, 1, 0]], "numeric"),
        (ABC, [[0, 1], [1, 0, 1], [1, 1, 0]], "numeric"),
    ],
)
def test_invalid_matrices(classes, values, message):
    with pytest.raises(CostMatrixError) as info:
        CostMatrix(classes, values)
    assert message in str(info.value)


def test_nan_message_names_rule():
    with pytest.raises(CostMatrixError, match="finite"):
        CostMatrix(["a", "b"], [[0, math.nan], [1, 0]])


def test_error_is_a_value_error():
    assert issubclass(CostMatrixError, ValueError)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".csv", ".yaml", ".yml", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    cm = CostMatrix.pareto(["x", "y", "z", "w"], seed=3)  # floats with many digits
    path = tmp_path / f"costs{suffix}"
    save_costs(cm, path)
    loaded = load_costs(path)
    assert loaded == cm
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize("fmt", ["csv", "yaml", "json"])
def test_explicit_readers_and_writers(tmp_path, cm, fmt):
    path = tmp_path / f"m.{fmt}"
    save_costs(cm, path)
    assert load_costs(path) == cm
    if fmt == "csv":
        assert read_csv(path) == cm


def test_csv_layout(tmp_path, cm):
    path = tmp_path / "c.csv"
    write_csv(cm, path)
    assert path.read_text().splitlines() == [
        f"{CSV_CORNER},a,b,c",
        "a,0.0,1.0,4.0",
        "b,2.0,0.0,1.0",
        "c,5.0,3.0,0.0",
    ]


def test_csv_hand_written_with_spaces_and_blank_line(tmp_path, cm):
    path = tmp_path / "c.csv"
    path.write_text("y\\z, a, b, c\na, 0, 1, 4\nb, 2, 0, 1\n\nc, 5, 3, 0\n")
    assert read_csv(path) == cm


@pytest.mark.parametrize(("text", "says"), [
    ("t;a;b\na;0;1\nb;1;0\n", "its header is split by ';'; cost CSVs are comma-separated"),
    ("t\ta\tb\na\t0\t1\nb\t1\t0\n", "its header is split by '\\t'"),
])
def test_a_csv_with_another_delimiter_is_named_as_such(tmp_path, text, says):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(CostMatrixError, match=re.escape(f"{path}: {says}")):
        load_costs(path)


def test_a_missing_cost_file_is_named(tmp_path):
    with pytest.raises(CostMatrixError, match=re.escape(f"cost file {tmp_path / 'gone.csv'} not found")):
        load_costs(tmp_path / "gone.csv")


def test_yaml_shape_and_integer_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("classes: [0, 1]\ncosts:\n  - [0, 2.5]\n  - [1, 0]\n")
    cm = load_costs(path)
    assert cm.classes == ["0", "1"] and cm.values[0, 1] == 2.5


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.csv", "t,a,b\nb,0,1\na,1,0\n", "row 1 is named 'b', expected 'a'"),
        ("bad.csv", "t,a,b\na,0,1\nb,1,0\nc,1,1\n", "expected no further row"),
        ("bad.csv", "t,a,b\na,0,1\nb,1\n", "row 2 has 2 cells"),
        ("bad.csv", "t,a,b\na,0,oops\nb,1,0\n", "c('a', 'b') at [0, 1] is 'oops'"),
        ("bad.csv", "t,a,b\na,0,1\n", "square"),
        ("bad.csv", "t,a,b\na,0,-1\nb,1,0\n", "c('a', 'b') at [0, 1]"),
        ("bad.csv", "", "empty CSV"),
        ("bad.yaml", "classes: [a, b]\ncosts: [[0, 1], [1, 0]]\nextra: 1\n", "unknown keys ['extra']"),
        ("bad.yaml", "classes: [a, b]\n", "missing required keys ['costs']"),
        ("bad.yaml", "- 1\n- 2\n", "expected a mapping"),
        ("bad.yaml", "classes: [a, b\n", "not valid YAML"),
        ("bad.yml", "classes: [a, b]\ncosts: [[0, 1], [-1, 0]]\n", "c('b', 'a') at [1, 0]"),
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.json", '{"classes": ["a", "b"], "costs": [[0, 0], [0, 0]]}', "every cost is 0"),
    ],
)
def test_file_errors_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CostMatrixError) as info:
        load_costs(path)
    assert message in str(info.value)
    assert name in str(info.value)


def test_unknown_suffix_lists_valid_ones(tmp_path, cm):
    with pytest.raises(CostMatrixError) as info:
        save_costs(cm, tmp_path / "costs.txt")
    assert "'.txt'" in str(info.value) and "'.csv'" in str(info.value) and "'.yml'" in str(info.value)
    with pytest.raises(CostMatrixError):
        load_costs(tmp_path / "costs.npy")


# ---------------------------------------------------------------- Pareto


def test_pareto_is_deterministic_and_supported_on_scale():
    names = [str(i) for i in range(10)]
    first, again = CostMatrix.pareto(names, seed=7), CostMatrix.pareto(names, seed=7)
    assert first == again
    assert first != CostMatrix.pareto(names, seed=8)
    off = first.values[~np.eye(10, dtype=bool)]
    assert np.all(np.diag(first.values) == 0) and off.min() >= 1.0
    scaled = CostMatrix.pareto(names, scale=2.0, seed=7)
    np.testing.assert_allclose(scaled.values, 2.0 * first.values)


def test_pareto_distribution_is_classical_pareto():
    k = 60  # 3540 off-diagonal draws
    off = CostMatrix.pareto(range(k), seed=0).values[~np.eye(k, dtype=bool)]
    # Classical Pareto(x_m=1, alpha=1.5): median 2**(1/1.5) ~ 1.587 (the Lomax variant
    # would give ~0.587), and log(X) ~ Exponential with mean 1/alpha = 2/3.
    assert np.median(off) == pytest.approx(2 ** (1 / 1.5), abs=0.08)
    assert np.log(off).mean() == pytest.approx(2 / 3, abs=0.05)


@pytest.mark.parametrize("kwargs", [{"shape": 0.0}, {"shape": -1.0}, {"scale": 0.0}, {"scale": math.inf}])
def test_pareto_invalid_parameters(kwargs):
    with pytest.raises(CostMatrixError):
        CostMatrix.pareto(ABC, seed=0, **kwargs)


# ---------------------------------------------------------------- single pair and expert


def test_single_pair():
    cm = CostMatrix.single_pair(ABC, "c", "a", cost=3.0)
    expected = np.zeros((3, 3))
    expected[2, 0] = 3.0
    np.testing.assert_array_equal(cm.values, expected)
    with pytest.raises(CostMatrixError, match="two different classes"):
        CostMatrix.single_pair(ABC, "a", "a")
    with pytest.raises(CostMatrixError, match="every cost is 0"):
        CostMatrix.single_pair(ABC, "a", "b", cost=0.0)


PMI = ["50111-0434", "00591-0461", "53489-0156", "68382-0227", "53746-0544", "00378-0208"]
PMI_PAIRS = [
    {"true": "50111-0434", "predicted": "00591-0461", "cost": 10},
    {"true": "53489-0156", "predicted": "68382-0227", "cost": 10},
    {"true": "53746-0544", "predicted": "00378-0208", "cost": 10},
    {"true": "68382-0227", "predicted": "53489-0156", "cost": 8},
]


def _pmi_expected() -> np.ndarray:
    expected = np.ones((6, 6)) - np.eye(6)
    expected[0, 1] = expected[2, 3] = expected[4, 5] = 10.0
    expected[3, 2] = 8.0
    return expected


def test_expert_four_pairs_in_every_spelling(tmp_path):
    from_list = CostMatrix.expert(PMI, PMI_PAIRS)
    np.testing.assert_array_equal(from_list.values, _pmi_expected())
    as_dict = {(p["true"], p["predicted"]): p["cost"] for p in PMI_PAIRS}
    assert CostMatrix.expert(PMI, as_dict) == from_list
    as_tuples = [(p["true"], p["predicted"], p["cost"]) for p in PMI_PAIRS]
    assert CostMatrix.expert(PMI, as_tuples) == from_list
    path = tmp_path / "expert.yaml"
    # The key `true:` is left unquoted on purpose: PyYAML reads it as the boolean True.
    lines = ["default: 1.0", "pairs:"]
    lines += [f"  - {{true: '{p['true']}', predicted: '{p['predicted']}', cost: {p['cost']}}}" for p in PMI_PAIRS]
    path.write_text("\n".join(lines) + "\n")
    assert expert_from_yaml(path, PMI) == from_list


def test_expert_default_cost():
    cm = CostMatrix.expert(ABC, {("a", "b"): 10}, default=0.5)
    np.testing.assert_array_equal(cm.values, [[0, 10, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


@pytest.mark.parametrize(
    "pairs, message",
    [
        ({("a", "zz"): 1}, "unknown class 'zz'"),
        ({("b", "b"): 1}, "two different classes"),
        ([("a", "b", 1), ("a", "b", 2)], "more than once"),
        ([{"true": "a", "predicted": "b"}], "missing required keys ['cost']"),
        ([{"true": "a", "predicted": "b", "cost": 1, "why": "x"}], "unknown keys ['why']"),
        ({("a", "b"): -2}, "must be finite and >= 0"),
        ({("a", "b"): "high"}, "must be a number"),
        ({"a": 1}, "must be a (true, predicted) tuple"),
        (["a-b"], "expected {true"),
        ("a,b,1", "must be a mapping"),
    ],
)
def test_expert_errors(pairs, message):
    with pytest.raises(CostMatrixError) as info:
        CostMatrix.expert(ABC, pairs)
    assert message in str(info.value)


def test_expert_from_yaml_requires_pairs(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("default: 1.0\n")
    with pytest.raises(CostMatrixError, match="missing required keys"):
        expert_from_yaml(path, ABC)


# ---------------------------------------------------------------- weights, top pairs, classes


def test_pair_weights_hand_examples():
    cm = CostMatrix(ABC, [[0, 1, 2], [3, 0, 1], [1, 1, 0]])
    # tau = 1: sum of costs = 9.
    np.testing.assert_allclose(cm.pair_weights(1.0), np.array([[0, 1, 2], [3, 0, 1], [1, 1, 0]]) / 9)
    # tau = 3: cubes 1, 8, 27, 1, 1, 1 sum to 39.
    np.testing.assert_allclose(cm.pair_weights(3), np.array([[0, 1, 8], [27, 0, 1], [1, 1, 0]]) / 39)
    for tau in (0.5, 1, 3, 10):
        w = cm.pair_weights(tau)
        assert w.sum() == pytest.approx(1.0) and np.all(np.diag(w) == 0)


def test_pair_weights_zero_costs_stay_zero_and_no_overflow():
    cm = CostMatrix(ABC, [[0, MAX_COST, 0], [1e-3, 0, 0], [0, 0, 0]])
    w = cm.pair_weights(5)
    assert np.isfinite(w).all() and w[0, 1] == pytest.approx(1.0) and w[0, 2] == 0.0


@pytest.mark.parametrize("cost", [1e13, 1e308])
def test_costs_too_large_for_float_sums_are_refused_with_the_cell(cost):
    # 1e308 would pass as finite, then overflow every WER sum and the methods' float32 weights.
    with pytest.raises(CostMatrixError, match=r"c\('a', 'b'\) at \[0, 1\] = .*: costs must be at most 1e\+12"):
        CostMatrix(ABC, [[0, cost, 0], [1, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("tau", [0, -1, math.nan, math.inf, True])
def test_pair_weights_invalid_temperature(cm, tau):
    with pytest.raises(CostMatrixError, match="temperature"):
        cm.pair_weights(tau)


def test_top_pairs_order_and_ties():
    cm = CostMatrix(ABC, [[0, 2, 5], [5, 0, 2], [1, 5, 0]])
    # Three pairs cost 5; they keep row-major order, then the two 2s, then the 1.
    assert cm.top_pairs(6) == [("a", "c"), ("b", "a"), ("c", "b"), ("a", "b"), ("b", "c"), ("c", "a")]
    assert cm.top_pair_indices(2) == [(0, 2), (1, 0)]
    assert all(type(i) is int for pair in cm.top_pair_indices(6) for i in pair)


def test_top_pairs_hand(cm):
    assert cm.top_pairs(3) == [("c", "a"), ("a", "c"), ("c", "b")]


@pytest.mark.parametrize("k", [0, -1, 7, 2.0])
def test_top_pairs_invalid_k(cm, k):
    with pytest.raises(CostMatrixError, match=r"\[1, 6\]"):
        cm.top_pairs(k)


def test_check_classes(cm):
    cm.check_classes(["a", "b", "c"])
    with pytest.raises(CostMatrixError, match=r"missing from the cost matrix: \['d'\]"):
        cm.check_classes(["a", "b", "c", "d"])
    with pytest.raises(CostMatrixError, match=r"not in the dataset: \['c'\]"):
        cm.check_classes(["a", "b"])
    with pytest.raises(CostMatrixError, match="order differs at position 1: dataset has 'c'"):
        cm.check_classes(["a", "c", "b"])


def test_a_cost_file_in_another_class_order_is_read_in_the_datas_order(tmp_path):
    """The header names every class, so its order is only a layout: each cost keeps its pair."""
    path = tmp_path / "costs" / "mine.csv"
    path.parent.mkdir()
    path.write_text("true\\predicted,c,a,b\nc,0,5,3\na,4,0,1\nb,1,2,0\n")
    settings = types.SimpleNamespace(kind="file", file=str(path))
    cost = build_cost_matrix(settings, ABC)
    assert cost.classes == ABC
    assert cost.values.tolist() == HAND
    assert cost == CostMatrix(ABC, HAND)
    with pytest.raises(CostMatrixError, match=r"missing from the cost matrix: \['d'\]"):
        build_cost_matrix(settings, ["a", "b", "c", "d"])


def test_in_order_leaves_a_matrix_of_other_classes_for_check_classes_to_name(cm):
    assert cm.in_order(["a", "b"]) is cm
    assert cm.in_order(ABC) is cm
    flipped = cm.in_order(["b", "a", "c"])
    assert flipped.classes == ["b", "a", "c"]
    assert flipped.values[0, 1] == cm.values[1, 0] and flipped.values[0, 2] == cm.values[1, 2]
