"""The real product end to end: `dvc repro`, `dvc exp run -S ...`, `dvc metrics diff`.

Runs in a temporary copy of the repository on a tiny configuration (few epochs, one
replication), with the stages' Ray work on the test session's shared cluster.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import run, tiny_repository

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def repo(tmp_path_factory, ray_cluster):
    work = tmp_path_factory.mktemp("e2e") / "repo"
    env = tiny_repository(work, ray_cluster)
    run(["git", "init", "-q", "-b", "main"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "tiny pipeline"], work, env)
    return work, env


def test_repro_writes_every_output_and_is_then_a_no_op(repo):
    work, env = repo
    result = run(["dvc", "repro"], work, env)
    assert "Evaluation of digits" in result.stdout  # the one-screen summary closes the run

    summary = json.loads((work / "results/metrics/summary.json").read_text())
    assert set(summary) == {"baseline", "csada", "ap", "sosr", "penalty"}
    for method in summary.values():
        assert set(method) == {"argmax", "expected_cost"}
        assert 0.0 <= method["argmax"]["wer"]["mean"] and 0.0 <= method["argmax"]["accuracy"]["mean"] <= 1.0
    report = (work / "results/report.md").read_text()
    for column in ("Baseline", "CSADA", "AP", "SOSR", "Penalty"):
        assert column in report
    assert (work / "models/digits/baseline/model.pt").is_file()
    assert len(list((work / "models/digits/finetune").glob("*/model.pt"))) == 4
    confusion = (work / "results/plots/confusion/csada.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + 357
    assert (work / "dvc.lock").is_file()

    status = run(["dvc", "status"], work, env)
    assert "up to date" in status.stdout
    again = run(["dvc", "repro"], work, env)
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout

    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "tiny results"], work, env)


def test_exp_run_with_a_changed_param_and_metrics_diff(repo):
    work, env = repo
    result = run(["dvc", "exp", "run", "-S", "finetune.csada.adv_weight=5"], work, env)
    # Only the fine-tuning and what follows it ran again; the baseline was reused.
    assert "Stage 'baseline' didn't change, skipping" in result.stdout
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["finetune"]["csada"]["adv_weight"] == 5

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], work, env).stdout)
    changed = diff["results/metrics/summary.json"]
    assert any(key.startswith("csada.") for key in changed)
    assert not any(key.startswith("baseline.") for key in changed)  # the baseline did not move

    shown = json.loads(run(["dvc", "exp", "show", "--json"], work, env).stdout)
    assert shown  # the experiment is listed for comparison


def test_same_params_and_seeds_give_identical_metrics_files(repo):
    """Retrain everything from scratch (no Ray run storage to reuse) and compare with the commit."""
    work, env = repo
    run(["git", "checkout", "-q", "-f", "HEAD"], work, env)  # undo the experiment in the workspace
    shutil.rmtree(work / "runs")
    run(["dvc", "repro", "-f"], work, env)
    for path in ("results/metrics/summary.json", "results/report.md", "results/plots/val_wer.csv"):
        committed = run(["git", "show", f"HEAD:{path}"], work, env).stdout
        assert (work / path).read_text() == committed, path
