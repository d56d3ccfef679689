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
from pipeline.paper.claims import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    PARTLY,
    REPRODUCED,
    ZERO_WIDTH,
    convergence_claims,
    lambda_claims,
    pair_claims,
)
from pipeline.paper.experiments import (
    attack_epochs,
    attack_shares,
    confused_pairs,
    critical_counts,
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
    paper_ablation,
    paper_baselines,
    paper_claims,
    paper_convergence,
    paper_lambdas,
    paper_pairs,
    paper_table,
    paper_toy,
    split,
)

# One xdist process runs this module, so that the toy-size paper project (paper_project, about two
# minutes of training) is built once: spread over both processes, each built its own.
pytestmark = pytest.mark.xdist_group("paper")

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = (paper_baselines, paper_pairs, paper_ablation, paper_lambdas, paper_convergence, paper_table)
VERDICT, PRODUCT = "authors-lr10x", "product"


SHORT = {"epochs": 2, "steps": 2}


def tiny_paper_params() -> dict:
    params = yaml.safe_load((REPO / "paper" / "params.yaml").read_text())
    params.update(dataset="digits", data={**params["data"], "source": None})
    paper = params["paper"]
    paper.update(replications=2, variants=[{"protocol": "authors", "lr_scale": 10}, {"protocol": "product"}])
    paper["baselines"] = {"max_epochs": 4, "zero_loss": 1e-3}
    paper["pairs"].update(top=2, csada=SHORT, penalty={"epochs": 2})
    paper["lambdas"] = {"values": [0, 2], "csada": SHORT}
    paper["convergence"] = {"replications": 2, "csada": SHORT}
    paper["table"] = {"methods": ["csada", "ap"], "csada": SHORT, "ap": {"epochs": 2}}
    paper["ablation"] = {"pairs": 1, "seeds": 1, "csada": SHORT, "erm": {"epochs": 2}}
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


def test_every_experiment_writes_its_outputs_from_its_runs_under_every_variant(paper_project):
    config, root, trained = paper_project
    results = root / "results"
    pairs = json.loads((results / "pairs.json").read_text())
    assert set(pairs["baselines"]) == {"fit", "zero_loss"} and len(pairs["pairs"]) == 2
    assert set(pairs["variants"]) == {VERDICT, PRODUCT} and pairs["verdict_variant"] == VERDICT
    # The fit baseline (section 1.1's check) runs under the verdict's variant only.
    assert set(pairs["variants"][VERDICT]["baselines"]) == {"fit", "zero_loss"}
    assert set(pairs["variants"][PRODUCT]["baselines"]) == {"zero_loss"}
    for entry in pairs["variants"][VERDICT]["baselines"].values():
        assert set(entry["methods"]) == {"penalty", "csada"}
    assert all(pairs["baselines"][b]["epochs"] <= 4 and "reached" in pairs["baselines"][b] for b in ("fit", "zero_loss"))
    # Every output records the settings its runs resolved to.
    authors = pairs["variants"][VERDICT]["settings"]["csada"]
    assert (authors["optimizer"], authors["lr"], authors["momentum"], authors["batch_size"]) == ("sgd", 1e-3, 0.0, 256)
    assert (authors["bn"], authors["passes"], authors["step_rule"], authors["normalization"]) == (
        "frozen", "separate", "gradient", "attacked_mean")
    assert pairs["variants"][PRODUCT]["settings"]["csada"]["optimizer"] == "adam"
    assert len((results / "pairs.csv").read_text().splitlines()) == 1 + (2 + 1) * 2 * 2 * 2  # (baseline, variant) x pairs x methods x reps
    lambdas = json.loads((results / "lambdas.json").read_text())
    assert lambdas["lambdas"] == [0.0, 2.0] and lambdas["variants"][VERDICT]["wer"]["n"] == 2
    assert lambdas["variants"][PRODUCT]["wer"]["mean"][0] == pytest.approx(lambdas["baseline_wer"])  # lambda 0
    assert lambdas["variants"][VERDICT]["settings"]["lr"] == pytest.approx(5e-6)  # the paper's 5e-7, times 10
    convergence = json.loads((results / "convergence.json").read_text())["variants"][VERDICT]
    assert len(convergence["train_loss"]["mean"]) == 2 and len(convergence["test_wer"]["mean"]) == 3
    summary = json.loads((results / "table.json").read_text())["variants"][VERDICT]["summary"]
    assert set(summary) == {"baseline", "csada", "ap"} and summary["ap"]["argmax"]["wer"]["n"] == 2
    ablation = json.loads((results / "ablation.json").read_text())
    assert set(ablation["arms"]) == {"pair/authors", "pair/adam", "pair/sign_steps", "pair/bn_train", "pair/unbiased",
                                     "pair/erm", "pareto/tau3", "pareto/tau1", "pareto/errors_tau3", "pareto/erm"}
    assert ablation["arms"]["pair/sign_steps"]["settings"]["step_rule"] == "steepest"
    assert ablation["arms"]["pair/authors"]["attack"] and not ablation["arms"]["pair/erm"]["attack"]
    attack = (results / "attack.csv").read_text().splitlines()
    assert attack[0].split(",")[-4:] == ["attacked", "reached_z", "rejected", "skipped"] and len(attack) > 1
    toy = json.loads((results / "toy.json").read_text())
    assert set(toy) >= {"table1", "harder"}
    for name in ("pairs_fit", "pairs_zero_loss", "lambdas", "convergence", "figure2", "figure2_harder", "ablation"):
        assert (results / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    page = (results / "paper.md").read_text()
    for figure in ("pairs_zero_loss.png", "lambdas.png", "convergence.png", "figure2.png", "ablation.png"):
        assert f"(figures/{figure})" in page
    assert "Qiyuan Chen, Raed Al Kontar, Maher Nouiehed, X. Jessie Yang and Corey Lester" in page
    assert "Qiao" not in page and "PMI" in page
    claim_rows = [line for line in page.splitlines() if "| **" in line]
    assert len(claim_rows) >= 7
    for row in claim_rows:  # the rule comes before the verdict, and the settings beside ours
        cells = row.split(" | ")
        verdict = next(i for i, cell in enumerate(cells) if cell.startswith("**"))
        assert any("rule" in cell or "cannot be downloaded" in cell for cell in cells[:verdict])
    assert sum("*settings:* " in row for row in claim_rows) >= 4
    metrics = json.loads((results / "metrics.json").read_text())["paper"]
    assert metrics["variant"] == VERDICT
    assert metrics["pairs"]["zero_loss"]["csada"]["removed"] == pairs["variants"][VERDICT]["baselines"]["zero_loss"][
        "methods"]["csada"]["removed_share"]["mean"]
    assert metrics["lambdas"]["baseline_wer"] == lambdas["baseline_wer"] and set(metrics["table"]) == set(summary)
    # Runs: 2 baselines, 24 pair runs, 2 x 2 lambda, 2 x 2 convergence, 2 x 2 x 2 table, and the ablation's
    # 5 pair arms besides "authors" (the pair sweep's own run, reused) and its 4 cost arms, each trained once.
    assert len(trained) == len(set(trained)) == 2 + 24 + 4 + 4 + 8 + 5 + 4


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


def test_removed_share_is_the_mean_share_with_a_bootstrap_interval_that_stays_below_100_percent():
    before = torch.tensor([1, 1, 1, 1, 0, 1, 0, 1, 1, 1] * 20)  # 160 critical errors
    after = [torch.tensor([0, 1, 0, 0, 0, 0, 0, 0, 1, 0] * 20), torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 0, 1] * 20)]
    share = removed_share(before, after)
    assert share["mean"] == pytest.approx(1 - (40 + 40) / 2 / 160)
    assert share["lower"] < share["mean"] < share["upper"] <= 1.0 and share["n"] == 2 and not share["zero_width"]
    everything = removed_share(before, [torch.zeros_like(before)] * 3)
    assert everything["mean"] == everything["lower"] == everything["upper"] == 1.0 and everything["zero_width"]
    assert removed_share(torch.tensor([1, 0, 0]), [torch.tensor([2, 1, 0])])["mean"] == pytest.approx(-2.0)
    assert removed_share(torch.zeros(3), [torch.ones(3)])["mean"] is None


def test_critical_counts_charge_each_sample_to_the_pairs_it_is_an_error_of():
    labels, predicted = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 0, 2, 0])
    assert critical_counts(predicted, labels, [(0, 1), (1, 2)]).tolist() == [1, 0, 1, 0]
    assert critical_counts(predicted, labels, [(2, 1)]).tolist() == [0, 0, 0, 0]


def test_attack_diagnostics_are_shares_of_the_attacked_samples():
    history = [{"epoch": 0, "train_n_attacked": 10.0, "train_n_succeeded": 2.0, "train_n_rejected": 3.0,
                "train_n_skipped": 5.0}, {"epoch": 1, "train_n_attacked": 30.0, "train_n_succeeded": 18.0,
                                          "train_n_rejected": 6.0, "train_n_skipped": 6.0}]
    assert attack_epochs(history)[1] == {"epoch": 2, "attacked": 30.0, "reached_z": 0.6, "rejected": 0.2,
                                         "skipped": 0.2}
    assert attack_shares(history) == {"reached_z": 0.5, "rejected": 0.225, "skipped": 0.275}
    assert attack_shares([{"epoch": 0, "train_ce": 1.0}]) == {} and attack_epochs([{"epoch": 0}]) == []


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
    assert config.dataset == "images" and config.paper.top_pairs == 5
    assert [v.label for v in config.paper.variants] == ["authors-lr10x", "authors", "product"]
    assert [m.name for m in config.paper.pair_methods["authors"]] == ["penalty", "csada"]
    penalty, csada = config.paper.pair_methods["authors"]
    # Section 5.1 and MNIST/mnist_compare.py: SGD without momentum, weight decay 1e-4, batch 256, 10 epochs, lr 1e-4.
    assert (csada.optim.optimizer, csada.optim.lr, csada.optim.momentum, csada.optim.weight_decay,
            csada.optim.batch_size, csada.optim.epochs, csada.optim.augment) == ("sgd", 1e-4, 0.0, 1e-4, 256, 10, True)
    assert {k: csada.options[k] for k in ("adv_weight", "temperature", "eps", "steps", "step_size")} == {
        "adv_weight": 10.0, "temperature": 1.0, "eps": 10.0, "steps": 5, "step_size": 0.05}
    assert penalty.options == {"normalization": "class"}
    assert config.paper.pair_methods["authors-lr10x"][1].optim.lr == pytest.approx(1e-3)
    # Table 4's CSADA from the text (lambda 2, eps 10, K 10), AP's 60 epochs and decay.
    table = {m.name: m for m in config.paper.table_methods["authors"]}
    assert (table["csada"].options["adv_weight"], table["csada"].options["eps"], table["csada"].options["steps"],
            table["csada"].optim.lr) == (2.0, 10.0, 10, 5e-7)
    assert (table["ap"].optim.epochs, table["ap"].optim.lr_gamma, table["ap"].options["alpha"]) == (60, 0.33, 5.0)
    # The product protocol is the recipe's.
    assert config.paper.pair_methods["product"][1].optim.optimizer == "adam"
    assert config.paper.pair_methods["product"][1].options["step_rule"] == "gradient"  # the recipe, after the ablation
    bad = tiny_paper_params()
    bad["paper"]["lambdas"]["values"] = [0, -1]
    with pytest.raises(ConfigError, match=r"paper.lambdas.values = -1 is invalid"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
    bad = tiny_paper_params()
    bad["paper"]["pairs"]["csada"] = {"tau": 1}
    with pytest.raises(ConfigError, match=r"unknown key paper.pairs.csada.tau"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
    bad = tiny_paper_params()
    bad["paper"]["variants"] = [{"protocol": "theirs"}]
    with pytest.raises(ConfigError, match=r"paper.variants\[0\].protocol = 'theirs' is invalid; valid: authors, product"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
    bad = tiny_paper_params()
    bad["paper"]["finetune"] = {"lr": 1e-4}  # no global key overrides the experiments any more
    with pytest.raises(ConfigError, match=r"unknown key paper.finetune"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)
    bad = tiny_paper_params()
    bad["baseline"] = {"stop_train_accuracy": 1.5}
    with pytest.raises(ConfigError, match=r"baseline.stop_train_accuracy = 1.5 is invalid"):
        load_config(bad, recipe_dir=REPO / "recipes", available_cpus=2)



def _lambdas(means, uppers):
    return {"lambdas": [0.0, 1.0, 10.0], "baseline_wer": 0.10,
            "wer": {"mean": [0.10, *means], "lower": [0.10, *(m - 0.01 for m in means)], "upper": [0.10, *uppers]}}


def test_the_lambda_claim_needs_a_dip_below_the_baseline():
    assert lambda_claims(_lambdas([0.05, 0.20], [0.08, 0.25]))[0][3] == REPRODUCED  # a significant dip, then above
    assert lambda_claims(_lambdas([0.09, 0.12], [0.11, 0.15]))[0][3] == PARTLY  # the U's shape, the dip within noise
    # Rising from the first lambda on is not the U: the best lambda is still worse than the baseline.
    assert lambda_claims(_lambdas([0.19, 0.35], [0.20, 0.45]))[0][3] == NOT_REPRODUCED


def _convergence(loss, wer, upper):
    return {"baseline_wer": 0.10, "train_loss": {"mean": loss},
            "test_wer": {"mean": [0.10, wer], "lower": [0.10, wer - 0.01], "upper": [0.10, upper], "n": 5}}


def test_the_convergence_claim_needs_the_wer_to_fall_with_the_objective():
    assert convergence_claims(_convergence([3.0, 2.0], 0.05, 0.08))[0][3] == REPRODUCED
    assert convergence_claims(_convergence([3.0, 2.0], 0.09, 0.12))[0][3] == PARTLY  # below, within noise
    assert convergence_claims(_convergence([3.0, 2.0], 0.22, 0.23))[0][3] == NOT_REPRODUCED  # objective down, WER up


def test_a_zero_width_interval_is_marked_in_its_cell_and_explained_under_the_table(paper_project):
    zero = _pairs((1.0, 1.0, 1.0), (0.6, 0.4, 0.8))
    zero["baselines"]["zero_loss"]["methods"]["penalty"]["removed_share"]["zero_width"] = True
    penalty_row = pair_claims(zero)[0][2]
    assert penalty_row.endswith(f"100% [100%, 100%]{ZERO_WIDTH}; accuracy 90.00% -> 90.00%")
    assert ZERO_WIDTH not in pair_claims(zero)[1][2]  # CSADA's interval has a width
    _, root, _ = paper_project
    page = (root / "results" / "paper.md").read_text()
    assert "zero width: every resample" not in page  # the reason, once under a table, not in every cell
    claims = page[page.index("## Claims"):page.index("## What moves CSADA")]
    table = claims.split("Intervals:")[0]
    assert claims.count(f"{ZERO_WIDTH} Zero width") == (1 if ZERO_WIDTH in table else 0)  # once, where needed
