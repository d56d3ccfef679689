"""train_func without Ray: checkpoints, resumption, determinism, the selected epoch, the outcome."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipeline.datasets import ArrayDataset
from pipeline.method.costfiles import save_costs
from pipeline.method.costs import CostMatrix
from pipeline.method.registry import FINETUNE_METHODS
from pipeline.runs.checkpoints import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    OUTCOME_DIR,
    RunStore,
    save_checkpoint,
)
from pipeline.runs.jobs import TrainJob
from pipeline.runs.optim import OptimConfig
from pipeline.runs.sessions import LocalSession
from pipeline.runs.train import Progress, loader_options, train_func, validation_metrics
from tests.conftest import prepare_toy

CSADA_OPTIONS = dict(adv_weight=1.0, temperature=1.0, eps=1.5, steps=3, step_size=0.05, pairs="stochastic")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("project")
    return root, prepare_toy(root)


def job(project, method="csada", epochs=3, **changes) -> TrainJob:
    _, inputs = project
    base = TrainJob(
        name=f"toy-{method}", dataset="toy", model="mlp", model_options={}, pretrained=False, method=method,
        method_options=CSADA_OPTIONS if method == "csada" else {},
        optim=dataclasses.asdict(OptimConfig(epochs=epochs, optimizer="adam", lr=0.01, batch_size=32)),
        seed=7, select_metric="val_wer", **inputs,
    )
    return dataclasses.replace(base, **changes)


def train(project, job_: TrainJob, store: Path, session=None, **config) -> RunStore:
    root, _ = project
    train_func({"job": job_.to_dict(), "store": str(store), "root": str(root), "device": "cpu", **config},
               session=session)
    return RunStore(str(store))


class Interrupted(Exception):
    pass


class StopAfter(LocalSession):
    """A host that dies once ``epoch`` has been reported, as a killed worker would."""

    def __init__(self, epoch: int) -> None:
        super().__init__("cpu")
        self.epoch = epoch

    def report(self, metrics):
        super().report(metrics)
        if metrics["epoch"] == self.epoch:
            raise Interrupted


def test_a_finished_run_leaves_its_latest_state_and_its_outcome(project, tmp_path):
    store = train(project, job(project), tmp_path / "run")
    assert store.finished()
    state = store.load_state()
    assert [row["epoch"] for row in state["history"]] == [0, 1, 2]
    assert {"val_loss", "val_wer", "val_accuracy", "train_loss", "train_adv", "train_n_attacked"} <= set(state["history"][0])
    summary = json.loads((tmp_path / "run" / OUTCOME_DIR / HISTORY_FILE).read_text())
    assert summary["history"] == state["history"] and summary["best_epoch"] == state["best"]["epoch"]
    outcome = torch.load(tmp_path / "run" / OUTCOME_DIR / MODEL_FILE, weights_only=True)
    assert outcome["job"] == job(project).to_dict() and outcome["epoch"] == state["best"]["epoch"]
    for key, value in state["best"]["model"].items():
        assert torch.equal(outcome["model"][key], value)
    assert not any("/" in str(v) and str(v).startswith("/") for v in outcome["job"].values())  # no absolute path


def test_the_selected_epoch_is_the_best_by_the_selection_metric_not_the_first(project, tmp_path):
    # ERM from scratch: validation loss falls epoch after epoch, so the best epoch is a late one.
    baseline = job(project, method="erm", epochs=6, select_metric="val_loss", cost_csv=None)
    state = train(project, baseline, tmp_path / "run").load_state()
    losses = [row["val_loss"] for row in state["history"]]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    assert best > 0 and state["best"]["epoch"] == best


def test_progress_keeps_the_strictly_best_epoch_and_the_earlier_of_a_tie():
    progress = Progress()
    weights = {"w": torch.zeros(1)}
    for epoch, value in enumerate([0.5, 0.3, 0.3, 0.4]):
        progress.record({"epoch": epoch, "val_wer": value}, {"w": torch.full((1,), float(epoch))}, "val_wer")
    assert progress.best["epoch"] == 1 and progress.best["metric"] == 0.3
    assert torch.equal(progress.best["model"]["w"], torch.ones(1))  # a copy of that epoch's weights
    assert weights["w"].item() == 0


def test_validation_wer_charges_the_true_class_row():
    cost = torch.tensor([[0.0, 1.0, 10.0], [2.0, 0.0, 3.0], [7.0, 5.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([1, 2, 0, 2]), 3).float() * 5  # predictions 1, 2, 0, 2
    metrics = validation_metrics(logits, labels, cost)
    # c(0, 1) + c(1, 2) + c(2, 0) + 0 = 1 + 3 + 7; transposed it would be 2 + 5 + 10
    assert metrics["val_wer"] == pytest.approx(11 / 4)
    assert metrics["val_accuracy"] == pytest.approx(0.25)


def test_a_killed_run_resumes_after_its_last_checkpoint_and_matches_an_uninterrupted_one(project, tmp_path):
    # Costs on every pair, so that CSADA's pair draws matter too.
    root, _ = project
    save_costs(CostMatrix.pareto(["red", "green", "blue"], seed=1), root / "pareto.csv")
    resumable = job(project, epochs=4, cost_csv="pareto.csv")
    complete = train(project, resumable, tmp_path / "complete").load_state()
    with pytest.raises(Interrupted):
        train(project, resumable, tmp_path / "interrupted", session=StopAfter(1))
    assert not RunStore(str(tmp_path / "interrupted")).finished()
    resumed = train(project, resumable, tmp_path / "interrupted").load_state()
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    assert [row["resumes"] for row in resumed["history"]] == [0, 0, 1, 1]  # epochs 0-1 were not redone
    for key, value in complete["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    assert resumed["history"] == [{**row, "resumes": resumed["history"][i]["resumes"]}
                                  for i, row in enumerate(complete["history"])]


def test_checkpoints_follow_the_time_cadence_and_the_last_epoch(project, tmp_path):
    store_dir = tmp_path / "run"
    seen = []

    class Watch(LocalSession):
        def report(self, metrics):
            saved = RunStore(str(store_dir)).load_state()
            seen.append(None if saved is None else saved["epoch"])

    train(project, job(project, epochs=3), store_dir, session=Watch("cpu"), checkpoint_interval_s=3600)
    assert seen == [None, None, 2]  # nothing within the interval; the last epoch always
    seen.clear()
    store_dir = tmp_path / "every"
    train(project, job(project, epochs=3), store_dir, session=Watch("cpu"))
    assert seen == [0, 1, 2] and (store_dir / CHECKPOINT_FILE).is_file()  # interval 0: every epoch


def test_same_job_twice_gives_identical_results(project, tmp_path):
    first = train(project, job(project), tmp_path / "a").load_state()
    second = train(project, job(project), tmp_path / "b").load_state()
    assert first["history"] == second["history"]
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key])


@pytest.fixture(scope="module")
def baseline_checkpoint(project, tmp_path_factory) -> str:
    root, _ = project
    store = tmp_path_factory.mktemp("base")
    train(project, job(project, method="erm", epochs=3, select_metric="val_loss", cost_csv=None), store)
    save_checkpoint({"model": RunStore(str(store)).load_state()["best"]["model"]}, root / "base.pt")
    return "base.pt"


def test_fine_tuning_starts_from_the_given_checkpoint(project, baseline_checkpoint, tmp_path):
    tuned = train(project, job(project, method="sosr", epochs=1, init_checkpoint=baseline_checkpoint),
                  tmp_path / "sosr").load_state()
    assert "cost_layer.weight" in tuned["model"]  # SOSR's regression head on top of the baseline
    assert tuned["history"][0]["val_accuracy"] > 0.9  # it started from the trained baseline, not from scratch


@pytest.mark.parametrize("method", FINETUNE_METHODS)
def test_every_fine_tuning_method_moves_the_model(project, baseline_checkpoint, tmp_path, method):
    root, _ = project
    start = torch.load(root / baseline_checkpoint, weights_only=True)["model"]
    tuned = train(project, job(project, method=method, epochs=1, init_checkpoint=baseline_checkpoint),
                  tmp_path / method).load_state()["model"]
    tuned = {key.removeprefix("backbone."): value for key, value in tuned.items()}  # SOSR wraps the model
    moved = [key for key, value in start.items() if not torch.equal(tuned[key], value)]
    assert moved == list(start), f"{method} left {sorted(set(start) - set(moved))} where the baseline had them"


def test_cost_matrix_for_other_classes_is_refused(project, tmp_path):
    root, _ = project
    save_costs(CostMatrix.single_pair(["a", "b", "c"], "a", "b"), root / "wrong.csv")
    with pytest.raises(ValueError, match="class"):
        train(project, job(project, cost_csv="wrong.csv"), tmp_path / "run")


def test_loader_options_follow_the_workers_share_of_the_machine():
    in_memory = ArrayDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    files = torch.utils.data.TensorDataset(torch.zeros(4, 2))  # stands for images decoded from files
    assert loader_options(in_memory, 4, torch.device("cpu")) == {"num_workers": 0, "persistent_workers": False,
                                                                  "pin_memory": False}
    assert loader_options(files, 3, torch.device("cpu")) == {"num_workers": 2, "persistent_workers": True,
                                                             "pin_memory": False}
    assert loader_options(files, 1, torch.device("cuda"))["pin_memory"] is True
    assert loader_options(files, 1, torch.device("cpu"))["num_workers"] == 0  # the one CPU trains


def test_error_aware_pair_weights_come_from_the_starting_models_validation_errors(project, baseline_checkpoint,
                                                                                   tmp_path, monkeypatch):
    """The run hands the method its starting model's validation outputs once, before training,
    and resuming computes the same (from the starting checkpoint, not the resumed state)."""
    from pipeline.method.csada import CSADA

    seen = []
    original = CSADA.start_training

    def spy(self, val_logits, val_labels):
        seen.append((val_logits.argmax(1).clone(), val_labels.clone()))
        original(self, val_logits, val_labels)

    monkeypatch.setattr(CSADA, "start_training", spy)
    options = {**CSADA_OPTIONS, "pair_weights": "errors"}
    train(project, job(project, epochs=1, method_options=options, init_checkpoint=baseline_checkpoint),
          tmp_path / "errors")
    train(project, job(project, epochs=1, init_checkpoint=baseline_checkpoint), tmp_path / "cost")
    assert len(seen) == 1  # only the error-aware run asked
    predictions, labels = seen[0]
    assert len(labels) > 0 and (predictions == labels).float().mean() > 0.9  # the trained baseline's outputs
