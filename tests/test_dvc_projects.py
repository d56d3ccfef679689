"""The two DVC projects as a user meets them: the root (dvc.yaml, the main pipeline) and paper/
(paper/dvc.yaml, the paper's experiments, a DVC project of its own). At the root `dvc exp show`
fits in 80 columns and opens with the recommendation beside the baseline; each project's
`dvc metrics` and `dvc plots` keep to its own pipeline.

DVC itself reads a git copy of the repository's files with their committed results; nothing is
trained.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN, run

MAX_COLUMNS = 80
# `dvc exp show --csv` opens with these, then the metrics in results/metrics/headline.json's order.
BOOKKEEPING = ["Experiment", "rev", "typ", "Created", "parent"]
FIRST_METRICS = ["recommended.method", "recommended.rule", "recommended.test_wer", "recommended.test_accuracy",
                 "baseline.argmax.wer", "baseline.argmax.accuracy"]


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The repository's files (what git tracks or would track, results included) in a new git
    repository with one commit; returns its folder and the environment to run dvc in."""
    work = tmp_path_factory.mktemp("projects") / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    run(["git", "init", "-q", "-b", "main"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "the repository"], work, env)
    return work, env


def exp_show(folder: Path, env: dict[str, str]) -> list[dict[str, str]]:
    """`dvc exp show --csv` in ``folder``: one dict per row, in the header's column order."""
    rows = list(csv.reader(io.StringIO(run(["dvc", "exp", "show", "--csv"], folder, env).stdout)))
    return [dict(zip(rows[0], row)) for row in rows[1:]]


def test_exp_show_at_the_root_fits_80_columns_and_opens_with_the_recommendation(copy):
    work, env = copy
    workspace = exp_show(work, env)[0]
    columns = list(workspace)
    assert len(columns) <= MAX_COLUMNS, columns
    assert columns[:len(BOOKKEEPING)] == BOOKKEEPING
    assert columns[len(BOOKKEEPING):len(BOOKKEEPING) + len(FIRST_METRICS)] == FIRST_METRICS
    assert not [column for column in columns if "paper" in column], "the paper's experiments are paper/'s own"
    # The columns hold the recommendation of results/recommendation.json and its baseline.
    recommendation = json.loads((work / "results/recommendation.json").read_text())
    assert (workspace["recommended.method"], workspace["recommended.rule"]) == (
        recommendation["method"], recommendation["decision_rule"])
    assert float(workspace["recommended.test_wer"]) == recommendation["test_wer"]
    assert float(workspace["baseline.argmax.wer"]) == recommendation["baseline"]["test_wer"]
    assert float(workspace["baseline.argmax.accuracy"]) == recommendation["baseline"]["test_accuracy"]


def test_paper_is_a_dvc_project_of_its_own_with_its_own_metrics_and_plots(copy):
    work, env = copy
    paper = work / "paper"
    assert run(["dvc", "root"], paper, env).stdout.strip() == "."
    for folder, metrics, pipeline in ((work, "results/metrics/headline.json", work / "dvc.yaml"),
                                      (paper, "results/metrics.json", paper / "dvc.yaml")):
        shown = json.loads(run(["dvc", "metrics", "show", "--json"], folder, env).stdout)
        assert list(shown[""]["data"]) == [metrics]
        plots = json.loads(run(["dvc", "plots", "diff", "--json"], folder, env).stdout)["data"]
        declared = yaml.safe_load(pipeline.read_text())["plots"]
        assert set(plots) == {plot if isinstance(plot, str) else next(iter(plot)) for plot in declared}
    # The paper's columns are in its own `dvc exp show`, and none of the main pipeline's.
    columns = list(exp_show(paper, env)[0])
    assert "paper.table.csada" in columns and "recommended.method" not in columns
    assert "code/baseline.txt" not in columns  # a dependency of the main pipeline's alone
