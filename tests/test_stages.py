"""The stage scripts' own logic, in-process on the toy problem: no DVC, no Ray.

fetch, split and costs run as they do under `dvc repro`; the baseline and fine-tuning runs are
trained with `train_func` directly and put where those stages put their outcomes; evaluate and
report then run on them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.datasets.prepare import load_prepared
from pipeline.method.costfiles import load_costs
from pipeline.reporting.report import RULE_TITLES, identical_note
from pipeline.runs.checkpoints import RunStore
from pipeline.runs.jobs import run_name
from pipeline.runs.train import train_func
from stages import baseline, costs, evaluate, export, fetch, finetune, report, search, split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory):
    """A toy project after every stage up to finetune; yields (config, root)."""
    root = tmp_path_factory.mktemp("toy")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(dataset="toy", finetune={**params["finetune"], "replications": 1})
    params["baseline"] = {"epochs": 3}
    params["finetune"].update({m: {"epochs": 1} for m in params["finetune"]["methods"]})
    params["search"] = {"max_trials": 0}  # the recipe's settings as they are: no Ray here
    config = load_config(params, recipe_dir=REPO / "recipes", available_cpus=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for stage in (fetch, split, costs):
            stage.main(config)
        for jobs, destination in ((lambda: [baseline.baseline_job(config)], None),
                                  (lambda: finetune.finetune_jobs(config), "finetune")):
            for job in jobs():
                store = root / "runs" / run_name(job)
                train_func({"job": job.to_dict(), "store": str(store), "root": str(root), "device": "cpu"})
                target = config.paths.baseline if destination is None else config.paths.finetune / job.name
                RunStore(str(store)).copy_outcome(root / target)
            if destination is None:
                search.main(config)  # needs the baseline; finetune needs its chosen.json
        index = [{"name": j.name, "method": j.method, "replication": j.replication} for j in finetune.finetune_jobs(config)]
        (root / config.paths.finetune / finetune.RUNS_INDEX).write_text(json.dumps(index))
    return config, root


def test_evaluation_scores_every_model_on_the_test_split(toy_project, monkeypatch):
    config, root = toy_project
    monkeypatch.chdir(root)
    runs = evaluate.trained_runs(config.paths.baseline, config.paths.finetune)
    assert [(m, r) for m, r, _ in runs] == [("baseline", None), ("csada", 0), ("ap", 0), ("sosr", 0), ("penalty", 0),
                                            ("soft_labels", 0), ("logit_adjusted", 0)]
    data = load_prepared("toy", config.paths.raw, config.paths.manifest, augment=False)
    cost = load_costs(config.paths.cost)
    predictions = evaluate.split_predictions(runs, data, cost, "test")
    test_x = data.split("test").x
    for run in predictions:
        assert torch.equal(run.labels, data.split("test").y)  # the test split, in order, not validation
        assert run.logits.shape == (len(test_x), 3)
    baseline_model = evaluate.trained_model(config.paths.baseline, data, cost.as_tensor())
    torch.testing.assert_close(predictions[0].logits, baseline_model.eval()(test_x))


def test_a_top_k_beyond_the_pairs_is_refused_before_any_model_is_scored(toy_project, monkeypatch):
    config, root = toy_project
    monkeypatch.chdir(root)
    monkeypatch.setattr(evaluate, "on_gpu_worker", lambda *args: pytest.fail("scored models before checking"))
    with pytest.raises(ConfigError, match=r"recipes/toy.yaml: evaluate.top_k = 1000 is invalid; the 3 classes "
                                          r"have 6 ordered pairs: at most that many"):
        evaluate.main(dataclasses.replace(config, top_k=1000))


def test_evaluate_and_report_write_their_outputs(toy_project, monkeypatch, capsys):
    config, root = toy_project
    monkeypatch.chdir(root)
    evaluate.main(config)
    summary = json.loads((root / "results/summary.json").read_text())["methods"]
    headline = json.loads((root / "results/metrics/headline.json").read_text())
    assert headline["baseline"]["argmax"] == {key: summary["baseline"]["argmax"][key]["mean"] for key in ("wer", "accuracy")}
    recommended = headline.pop("recommended")
    assert list(recommended) == ["method", "rule", "test_wer", "test_accuracy"]
    assert list(headline) == ["baseline", "csada", "ap", "sosr", "penalty", "soft_labels", "logit_adjusted"]
    assert sum(len(rules[rule]) for rules in headline.values() for rule in rules) == 7 * 3  # argmax WER and accuracy, calibrated expected-cost WER
    recommendation = json.loads((root / "results/recommendation.json").read_text())
    assert recommendation["val_wer"] <= min(v for k, v in recommendation["val_wer_by_choice"].items()
                                            if k.startswith("baseline/"))
    assert set(summary) == {"baseline", "csada", "ap", "sosr", "penalty", "soft_labels", "logit_adjusted"}
    assert summary["baseline"]["argmax"]["n"]["mean"] == 1500  # the toy's 500 test points per class
    said = capsys.readouterr().out
    # The baseline's validation errors, counted here from its model: recorded, and warned about below 20.
    data = load_prepared("toy", config.paths.raw, config.paths.manifest, augment=False)
    model = evaluate.trained_model(config.paths.baseline, data, load_costs(config.paths.cost).as_tensor()).eval()
    val = data.split("val")
    errors = int((model(val.x).argmax(1) != val.y).sum())
    assert (recommendation["baseline_val_errors"], recommendation["val_samples"]) == (errors, len(val.y))
    assert ("evaluate: warning: the baseline makes only" in said) == (errors < 20), (errors, said)
    export.main(config)  # the report shows the exported model's abstention
    report.main(config)
    assert "Evaluation of toy" in capsys.readouterr().out
    text = (root / "results/report.md").read_text()
    assert "# Cost-sensitive evaluation: toy" in text and "## Recommendation" in text
    assert "## Hyperparameter search" in text and "not searched (search.max_trials is 0)" in text
    assert ("**Warning: a small validation split.**" in text) == (errors < 20)  # the toy's baseline: 0 of 150
    # One epoch from the toy's baseline changes few decisions, if any: some methods predict alike.
    same = json.loads((root / "results/summary.json").read_text())["identical_predictions"]
    assert same, "no identical predictions on the toy: this check needs a fixture that has some"
    for rule, groups in same.items():
        for group in groups:
            assert identical_note(group) in text.split(RULE_TITLES[rule], 1)[1].split("\n## ", 1)[0]
    assert "## Abstention" in text and "figures/abstention.png" in text


def test_no_output_holds_an_absolute_path(toy_project, monkeypatch):
    config, root = toy_project
    monkeypatch.chdir(root)
    evaluate.main(config)  # here too: under pytest-xdist this test may run without the one above
    export.main(config)
    for path in [*(root / "models").rglob("history.json"), root / config.paths.finetune / finetune.RUNS_INDEX]:
        assert str(root) not in path.read_text(), path
    assert str(root) not in (root / config.paths.recommended / "model.json").read_text()
    for path in (root / "models").rglob("model.pt"):
        if path.parent == root / config.paths.recommended:
            continue  # the export: a bare state dict, its description in model.json
        job = torch.load(path, weights_only=True)["job"]
        assert not any(isinstance(v, str) and v.startswith("/") for v in job.values()), path


def test_a_search_makes_the_same_trials_every_time_and_says_when_its_time_budget_ended_it(toy_project, monkeypatch):
    from pipeline.cluster.search import accuracy_floor, search_method
    from pipeline.config import SearchConfig

    config, root = toy_project
    monkeypatch.chdir(root)
    ap = next(m for m in config.methods if m.name == "ap")
    ap = dataclasses.replace(ap, optim=dataclasses.replace(ap.optim, epochs=4))  # rungs at epochs 1 and 3
    config = dataclasses.replace(config, methods=(ap,), search=SearchConfig(max_trials=5))
    floor = accuracy_floor(json.loads((config.paths.baseline / "history.json").read_text()), 0.005)
    max_cost = float(load_costs(config.paths.cost).values.max())
    [(task, _)] = search.search_tasks(config, root, floor, max_cost)

    first, second = search_method(task, budget_s=1e9), search_method(task, budget_s=1e9)
    assert first == second  # values proposed, epochs run, stops and scores: the same, trial for trial
    assert len(first) == 5 and first[0].values == {"lr": ap.optim.lr, "alpha": ap.options["alpha"]}
    assert not any(r.out_of_time for r in first)
    assert search.method_entry(ap, first, 5)["budget_reached"] is False

    # A budget already spent: the recipe's trial still runs, one epoch, and the entry says why.
    [cut] = search_method(task, budget_s=0.0)
    assert cut.number == 0 and cut.out_of_time and cut.epochs_run == 1 and not cut.stopped_early
    entry = search.method_entry(ap, [cut], 5)
    assert entry["budget_reached"] is True and "search.time_budget_s ended this search" in entry["note"]
