"""The real product end to end: `dvc repro`, `dvc exp run -S ...`, `dvc metrics diff`.

Runs in a temporary copy of the repository on a tiny configuration (few epochs, one
replication), with the stages' Ray work on the test session's shared cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def _copy_repository(destination: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if name.startswith("results/") or not source.is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _tiny(params: dict) -> dict:
    recipe = params["recipes"]["digits"]
    recipe["baseline"]["epochs"] = 3
    for method in ("csada", "ap", "sosr", "penalty"):
        recipe[method]["epochs"] = 2
    params["finetune"]["replications"] = 1
    return params


def run(command: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory, ray_cluster):
    work = tmp_path_factory.mktemp("e2e") / "repo"
    work.mkdir()
    _copy_repository(work)
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(_tiny(yaml.safe_load(params_path.read_text())), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": ray_cluster,
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }
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
