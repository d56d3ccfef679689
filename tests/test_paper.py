"""The paper's experiments (paper/dvc.yaml) end to end at toy size, and the pieces they are made of.

The stage scripts run in-process on the offline digits in a folder laid out as paper/ is (data,
models and results beside its params); their Ray sweeps are replaced by the same jobs trained one
after another in this process (pipeline.cluster.distributed.run_jobs is tested with Ray elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.paper.claims import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, pair_claims
from pipeline.paper.experiments import (
    confused_pairs,
    curve_summary,
    pair_error_rates,
    removed_share,
)
from pipeline.runs.checkpoints import RunStore
from pipeline.runs.jobs import run_name
from pipeline.runs.optim import OptimConfig
from pipeline.runs.train import train_func
from stages import (
    costs,
    fetch,
    paper_baselines,
    paper_claims,
    paper_convergence,
    paper_lambdas,
    paper_pairs,
    paper_table,
    paper_toy,
    split,
)

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = (paper_baselines, paper_pairs, paper_lambdas, paper_convergence, paper_table)


def tiny_paper_params() -> dict:
    params = yaml.safe_load((REPO / "paper" / "params.yaml").read_text())
    params.update(dataset="digits", data={**params["data"], "source": None})
    paper = params["paper"]
    paper.update(replications=2, finetune={"epochs": 2, "lr": 1e-3})
    paper["baselines"] = {"max_epochs": 4, "zero_loss": 1e-3}
    paper["pairs"].update(top=2)
    paper["pairs"]["csada"].update(steps=2)
    paper["lambdas"] = {"values": [0, 2], "csada": {"steps": 2}}
    paper["convergence"] = {"replications": 2, "csada": {"adv_weight": 2.0, "steps": 2}}
    paper["table"] = {"methods": ["csada", "ap"], "csada": {"steps": 2}}
    return params


def train_here(trained: list[str]):
    """run_jobs without Ray: each job trained in this process (or reused when finished before)."""

    def run_jobs(jobs, ray_config, root, experiment):
        stores = []
        for job in jobs:
            store = RunStore(str(root / "runs" / "ray" / run_name(job)))
            if not store.finished():
                train_func({"job": job.to_dict(), "store": store.location, "root": str(root), "device": "cpu"})
                trained.append(job.name)
            stores.append(store)
        return stores

    return run_jobs


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory):
    """The paper's experiments on digits at toy size, every stage once; yields (config, root, trained)."""
    root = tmp_path_factory.mktemp("paper")
    config = load_config(tiny_paper_params(), recipe_dir=REPO / "recipes", available_cpus=2)
    trained: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for stage in EXPERIMENTS:
            patch.setattr(stage, "run_jobs", train_here(trained))
        # The toy problem at a tenth of its epochs and one seed: the stage's logic, not Figure 2's numbers.
        patch.setattr(paper_toy, "SEEDS", (0,))
        fast = paper_toy.ToySettings(baseline_epochs=200, finetune_epochs=30)
        patch.setattr(paper_toy, "ToySettings", lambda: fast)
        for stage in (fetch, split, costs, *EXPERIMENTS, paper_toy, paper_claims):
            stage.main(config)
        yield config, root, list(trained)


def test_every_experiment_writes_its_outputs_from_its_runs(paper_project):
    config, root, trained = paper_project
    results = root / "results"
    pairs = json.loads((results / "pairs.json").read_text())
    assert set(pairs["baselines"]) == {"fit", "zero_loss"} and len(pairs["pairs"]) == 2
    for entry in pairs["baselines"].values():
        assert set(entry["methods"]) == {"penalty", "csada"}
        assert entry["epochs"] <= 4 and "reached" in entry
    table = (results / "pairs.csv").read_text().splitlines()
    assert len(table) == 1 + 2 * 2 * 2 * 2  # baselines x pairs x methods x replications
    lambdas = json.loads((results / "lambdas.json").read_text())
    assert lambdas["lambdas"] == [0.0, 2.0] and lambdas["wer"]["n"] == 2
    assert lambdas["wer"]["mean"][0] == pytest.approx(lambdas["baseline_wer"])  # lambda 0 is the baseline
    convergence = json.loads((results / "convergence.json").read_text())
    assert len(convergence["train_loss"]["mean"]) == 2 and len(convergence["test_wer"]["mean"]) == 3
    assert convergence["test_wer"]["mean"][0] == pytest.approx(convergence["baseline_wer"])
    summary = json.loads((results / "table.json").read_text())["summary"]
    assert set(summary) == {"baseline", "csada", "ap"} and summary["ap"]["argmax"]["wer"]["n"] == 2
    toy = json.loads((results / "toy.json").read_text())
    assert set(toy) >= {"table1", "harder"}
    for name in ("pairs_fit", "pairs_zero_loss", "lambdas", "convergence", "figure2", "figure2_harder"):
        assert (results / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    page = (results / "paper.md").read_text()
    for figure in ("pairs_zero_loss.png", "lambdas.png", "convergence.png", "figure2.png"):
        assert f"(figures/{figure})" in page
    assert page.count("| **") >= 7 and "PMI" in page
    metrics = json.loads((results / "metrics.json").read_text())["paper"]
    assert metrics["pairs"]["zero_loss"]["csada"]["removed"] == pairs["baselines"]["zero_loss"]["methods"]["csada"][
        "removed_share"]["mean"]
    assert metrics["lambdas"]["baseline_wer"] == lambdas["baseline_wer"] and set(metrics["table"]) == set(summary)
    # Every fine-tuning run of the experiments trained its fixed epochs and kept the last one.
    assert len(trained) == 2 + 2 * 2 * 2 * 2 + 2 + 2 + 2 * 2


def test_the_experiments_reuse_finished_runs(paper_project, monkeypatch):
    config, root, _ = paper_project
    monkeypatch.chdir(root)
    again: list[str] = []
    monkeypatch.setattr(paper_pairs, "run_jobs", train_here(again))
    before = (root / "results" / "pairs.json").read_text()
    paper_pairs.main(config)
    assert again == [] and (root / "results" / "pairs.json").read_text() == before


def test_experiment_runs_keep_their_last_epoch_and_the_baselines_stop_when_they_fit(paper_project):
    config, root, _ = paper_project
    fit = json.loads((root / "models/digits/paper/baselines/fit/history.json").read_text())
    history = fit["history"]
    assert fit["best_epoch"] == history[-1]["epoch"]  # "last", not the lowest validation loss
    reached = [e["fit_accuracy"] >= 1.0 for e in history]
    assert not any(reached[:-1])  # it trained on only while it did not fit
    assert reached[-1] or len(history) == config.paper.baseline_max_epochs


def test_a_run_that_stops_on_fit_trains_no_further_after_a_resume(tmp_path):
    from pipeline.runs.jobs import TrainJob
    from tests.conftest import prepare_toy

    paths = prepare_toy(tmp_path)
    optim = OptimConfig(epochs=60, lr=0.01, batch_size=32, stop_train_loss=1e-3)
    job = TrainJob(name="fit", dataset="toy", raw_dir=paths["raw_dir"], manifest=paths["manifest"], cost_csv=None,
                   model="mlp", model_options={}, pretrained=False, method="erm", method_options={},
                   optim=vars(optim), seed=0, select_metric="last")
    store = tmp_path / "run"
    train_func({"job": job.to_dict(), "store": str(store), "root": str(tmp_path), "device": "cpu"})
    history = json.loads((store / "outcome" / "history.json").read_text())["history"]
    assert 1 < len(history) < 60 and history[-1]["fit_loss"] < 1e-3
    assert all(e["fit_loss"] >= 1e-3 for e in history[:-1])
    # A rerun finds the checkpoint of the epoch that met the criterion: nothing more is trained.
    train_func({"job": job.to_dict(), "store": str(store), "root": str(tmp_path), "device": "cpu"})
    assert len(json.loads((store / "outcome" / "history.json").read_text())["history"]) == len(history)


def test_a_job_that_tracks_the_test_split_scores_it_every_epoch(tmp_path):
    from pipeline.runs.jobs import TrainJob
    from tests.conftest import prepare_toy

    paths = prepare_toy(tmp_path)
    job = TrainJob(name="t", dataset="toy", raw_dir=paths["raw_dir"], manifest=paths["manifest"],
                   cost_csv=paths["cost_csv"], model="mlp", model_options={}, pretrained=False, method="penalty",
                   method_options={}, optim={"epochs": 2, "lr": 0.01, "batch_size": 32}, seed=0,
                   select_metric="last", track_test=True)
    train_func({"job": job.to_dict(), "store": str(tmp_path / "run"), "root": str(tmp_path), "device": "cpu"})
    history = json.loads((tmp_path / "run" / "outcome" / "history.json").read_text())["history"]
    assert all({"test_wer", "test_accuracy", "test_loss"} <= set(epoch) for epoch in history)
    assert "fit_loss" not in history[0]  # the training split is scored only for a stopping criterion


def test_confused_pairs_are_the_most_frequent_errors_first():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([1, 1, 0, 2, 1, 0, 0, 0, 1])
    assert confused_pairs(predicted, labels, 3, top=2) == [(2, 0), (0, 1)]
    assert confused_pairs(predicted, labels, 3, top=0) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    rates = pair_error_rates(predicted, labels, 3)
    assert rates[2, 0] == pytest.approx(0.75) and rates[0, 1] == pytest.approx(2 / 3) and np.isnan(rates[1, 1])


def test_removed_share_sums_errors_over_the_pairs_per_replication():
    share = removed_share([4, 6], [[1, 1], [3, 0]])
    assert share["mean"] == pytest.approx(1 - (2 / 10 + 3 / 10) / 2)
    assert share["lower"] < share["mean"] < share["upper"] and share["n"] == 2
    assert removed_share([2, 0], [[3, 1], [3, 1]])["mean"] == pytest.approx(-1.0)  # more errors than before
    assert removed_share([0, 0], [[1, 0]])["mean"] is None


def test_curve_summary_is_mean_and_prediction_interval_per_point():
    curve = curve_summary(np.array([[1.0, 2.0], [3.0, 2.0]]))
    assert curve["mean"] == [2.0, 2.0] and curve["n"] == 2
    assert curve["lower"][0] < 1.0 and curve["upper"][0] > 3.0 and curve["lower"][1] == curve["upper"][1] == 2.0


def _pairs(penalty_share, csada_share, reached=True):
    def entry(share):
        return {"removed_share": {"mean": share[0], "lower": share[1], "upper": share[2], "n": 3},
                "test_accuracy": 0.9, "critical_errors": 1.0, "accuracy_change": 0.0}

    baseline = {"epochs": 10, "train_accuracy": 1.0, "train_loss": 1e-4, "reached": reached, "test_accuracy": 0.9,
                "critical_errors": 10, "methods": {"penalty": entry(penalty_share), "csada": entry(csada_share)}}
    return {"pairs": [["a", "b"]], "replications": 3, "baselines": {"fit": baseline, "zero_loss": baseline}}


def test_pair_claims_follow_their_stated_rules():
    verdicts = [row[3] for row in pair_claims(_pairs((0.05, -0.1, 0.2), (0.6, 0.4, 0.8)))]
    assert verdicts == [REPRODUCED, REPRODUCED, REPRODUCED]
    verdicts = [row[3] for row in pair_claims(_pairs((0.5, 0.3, 0.7), (0.2, 0.1, 0.3)))]
    assert verdicts == [NOT_REPRODUCED, NOT_REPRODUCED, NOT_REPRODUCED]  # penalty works, CSADA removes less
    assert pair_claims(_pairs((0.05, -0.1, 0.2), (0.6, 0.4, 0.8), reached=False))[2][3] == NOT_TESTABLE
    costly = _pairs((0.05, -0.1, 0.2), (0.6, 0.4, 0.8))
    costly["baselines"]["zero_loss"]["methods"]["csada"]["accuracy_change"] = -0.05  # removed by losing accuracy
    assert [row[3] for row in pair_claims(costly)] == [REPRODUCED, NOT_REPRODUCED, NOT_REPRODUCED]


def test_the_paper_params_are_valid_and_bad_values_are_named():
    config = load_config(REPO / "paper" / "params.yaml", available_cpus=2)
    assert config.dataset == "images" and config.paper.top_pairs == 10
    assert [m.name for m in config.paper.pair_methods] == ["penalty", "csada"]
    csada = config.paper.pair_methods[1]
    assert csada.options["adv_weight"] == 10.0 and csada.optim.epochs == 4  # paper.finetune over the recipe
    bad = tiny_paper_params()
    bad["paper"]["lambdas"]["values"] = [0, -1]
    with pytest.raises(ConfigError, match=r"paper.lambdas.values = -1 is invalid"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
    bad = tiny_paper_params()
    bad["paper"]["pairs"]["csada"]["tau"] = 1
    with pytest.raises(ConfigError, match=r"unknown key paper.pairs.csada.tau"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
    bad = tiny_paper_params()
    bad["baseline"] = {"stop_train_accuracy": 1.5}
    with pytest.raises(ConfigError, match=r"baseline.stop_train_accuracy = 1.5 is invalid"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
