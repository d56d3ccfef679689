"""The real product end to end: `dvc repro`, `dvc exp run -S ...`, `dvc metrics diff`, `dvc exp show`.

Runs in a temporary copy of the repository on a tiny configuration (few epochs, one
replication), with the stages' Ray work on the test session's shared cluster.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import TINY_METHODS, run, tiny_repository

# One xdist worker runs these one after the other on its own Ray cluster, beside the other slow tests.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]

METHODS = {"baseline", *TINY_METHODS}
RULES = {"argmax", "expected_cost", "calibrated_expected_cost"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, ray_cluster):
    work = tmp_path_factory.mktemp("e2e") / "repo"
    env = tiny_repository(work, ray_cluster)
    run(["git", "init", "-q", "-b", "main"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "tiny pipeline"], work, env)
    return work, env


def test_repro_writes_every_output_quietly_and_is_then_a_no_op(repo):
    work, env = repo
    result = run(["dvc", "repro"], work, env)
    console = (result.stdout + result.stderr).splitlines()
    assert len(console) <= 80, "\n".join(console)  # nine stages, a line per method searched and per run
    assert "Evaluation of digits" in result.stdout  # the one-screen summary closes the run
    runs = len(TINY_METHODS)
    assert sum(f"[1/{runs}]" in line or f"[{runs}/{runs}]" in line for line in console) == 2  # a line per run
    assert sum(line.startswith("search ") for line in console) == runs  # a line per searched method
    assert "best so far" in (work / "runs/logs/search.log").read_text()  # the trials' progress, in the log
    assert not [line for line in console if "Trial" in line or "TrainingReport" in line or "╭" in line]

    headline = json.loads((work / "results/metrics/headline.json").read_text())
    recommended = headline.pop("recommended")
    assert set(headline) == METHODS
    values = [v for rules in headline.values() for metrics in rules.values() for v in metrics.values()]
    assert len(values) == len(METHODS) * 3  # models x (WER under argmax and calibrated expected cost, accuracy)
    recommendation = json.loads((work / "results/recommendation.json").read_text())
    assert recommended["test_wer"] == recommendation["test_wer"]
    assert recommendation["val_wer"] <= recommendation["baseline"]["val_wer"]  # never worse on validation
    assert set(recommendation["paired_difference"]) == {"mean", "lower", "upper", "n", "includes_zero"}
    chosen = json.loads((work / "models/search/chosen.json").read_text())["methods"]
    assert set(chosen) == METHODS - {"baseline"}
    assert all(entry["searched"] and 1 <= entry["trials"] <= 2 for entry in chosen.values())
    summary = json.loads((work / "results/summary.json").read_text())["methods"]
    for method in summary.values():
        assert set(method) == RULES
        assert 0.0 <= method["argmax"]["wer"]["mean"] and 0.0 <= method["argmax"]["accuracy"]["mean"] <= 1.0
    report = (work / "results/report.md").read_text()
    for column in ("Baseline", "CSADA", "AP", "## Recommendation", "## Abstention", "## Hyperparameter search"):
        assert column in report
    for figure in ("wer", "confusion", "curves", "abstention"):
        assert (work / f"results/figures/{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "models/baseline/model.pt").is_file()
    assert sorted(p.name for p in (work / "models/digits/recommended").iterdir()) == ["model.json", "model.pt"]
    assert len(list((work / "models/finetune").glob("*/model.pt"))) == len(TINY_METHODS)
    confusion = (work / "results/plots/confusion/baseline.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + 357
    # One manifest per stage of this pipeline; the paper's experiments (paper/, a DVC project of
    # their own) write theirs in paper/code/.
    stages = set(yaml.safe_load((work / "dvc.yaml").read_text())["stages"]) - {"code"}
    assert (work / "dvc.lock").is_file()
    assert sorted(p.name for p in (work / "code").iterdir()) == sorted(f"{stage}.txt" for stage in stages)

    status = run(["dvc", "status"], work, env)  # this project's pipeline alone: paper/ is a project of its own
    assert "up to date" in status.stdout  # a second `dvc repro` has nothing to run
    assert "paper" not in status.stdout + status.stderr

    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-q", "-m", "tiny results"], work, env)


def test_the_exported_model_decides_what_the_evaluate_stage_decided_here_and_on_ray(repo, tmp_path):
    import numpy as np
    import pandas as pd

    from pipeline.method.costfiles import load_costs
    from pipeline.method.metrics import cost_metrics

    work, env = repo
    # The test images as the digits data set reads them: scikit-learn's counts 0..16 divided by
    # 16 (pixels in [0, 1]), in the test split's order, with their labels.
    raw = np.load(work / "data/raw/digits/digits.npz")
    manifest = pd.read_parquet(work / "data/split/digits.parquet")
    ids = np.sort(manifest.loc[manifest["split"] == "test", "sample_id"].to_numpy())
    np.savez(tmp_path / "test.npz", x=(raw["images"][ids] / 16).astype(np.float32), y=raw["target"][ids])
    here = {key: value for key, value in env.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "pipeline.predict", "models/digits/recommended", str(tmp_path / "test.npz")]
    said = run([*command, "--out", str(tmp_path / "here.csv")], work, here).stderr.strip().splitlines()[-1]
    on_ray = run([*command, "--out", str(tmp_path / "ray.csv")], work, env).stderr  # RAY_ADDRESS: Ray Data
    assert "(on Ray)" in on_ray
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "here.csv").read_text()

    predicted = pd.read_csv(tmp_path / "here.csv", dtype=str)
    evaluated = pd.read_csv(work / "results/tables/exported_decisions.csv", dtype=str)
    assert len(predicted) == len(evaluated) == len(ids)
    assert predicted["label"].tolist() == evaluated["actual"].tolist()
    assert predicted["decision"].tolist() == evaluated["decision"].tolist()  # every decision the same
    cost = load_costs(work / "data/costs/digits.csv")
    index = {name: i for i, name in enumerate(cost.classes)}
    wer = cost_metrics(predicted["label"].map(index).to_numpy(), predicted["decision"].map(index).to_numpy(), cost,
                       top_k=0)["wer"]
    exported = json.loads((work / "results/recommendation.json").read_text())["exported"]
    model = json.loads((work / "models/digits/recommended/model.json").read_text())
    assert wer == exported["test_wer"] == model["selection"]["exported"]["test_wer"]  # to the last digit
    assert f"WER {exported['test_wer']!r} deciding all" in said
    threshold = model["decision"]["abstention"]["threshold"]
    abstained = predicted["abstained"] == "true"
    if threshold is not None:
        assert abstained.tolist() == (predicted["expected_cost"].astype(float) >= threshold).tolist()

    # The export is a DVC model artifact: once a version is tagged, found by name, no network.
    run(["git", "tag", "-a", "recommended-model@v1.0.0", "-m", "the tiny pipeline's model"], work, env)
    try:
        shown = run([sys.executable, "-c", "import dvc.api, json; print(json.dumps("
                     "dvc.api.artifacts_show('recommended-model')))"], work, env).stdout
        head = run(["git", "rev-parse", "HEAD"], work, env).stdout.strip()
        assert json.loads(shown) == {"rev": head, "path": "models/digits/recommended"}
        run(["dvc", "artifacts", "get", ".", "recommended-model", "-o", str(tmp_path / "got")], work, env)
        for name in ("model.json", "model.pt"):
            assert (tmp_path / "got" / name).read_bytes() == (work / "models/digits/recommended" / name).read_bytes()
    finally:
        run(["git", "tag", "-d", "recommended-model@v1.0.0"], work, env)


def test_exp_run_with_an_added_override_metrics_diff_and_exp_show(repo):
    work, env = repo
    result = run(["dvc", "exp", "run", "-S", "+finetune.csada.adv_weight=5"], work, env)
    # Only the search, the fine-tuning and what follows them ran again; the baseline was reused,
    # and so were the searches of the methods whose settings did not change.
    assert "Stage 'baseline' didn't change, skipping" in result.stdout
    assert "search ap: the same search ran before: reused" in result.stdout
    assert "search csada: the same search ran before" not in result.stdout
    chosen = json.loads((work / "models/search/chosen.json").read_text())["methods"]["csada"]
    assert chosen["settings"]["options"]["adv_weight"] == 5 and "adv_weight" not in chosen["space"]  # pinned
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["finetune"]["csada"] == {"adv_weight": 5}

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], work, env).stdout)
    changed = diff["results/metrics/headline.json"]
    assert any(key.startswith("csada.") for key in changed)
    assert not any(key.startswith("baseline.") for key in changed)  # the baseline did not move

    shown = run(["dvc", "exp", "show", "--csv"], work, env).stdout
    header = next(csv.reader(io.StringIO(shown)))
    assert len(header) <= 80 and not [column for column in header if "paper" in column], header
    assert header[5:7] == ["recommended.method", "recommended.rule"]
    assert "finetune.csada.adv_weight" in header  # what the user changed is a column


def test_an_edit_to_the_report_code_reruns_only_the_report(repo):
    work, env = repo
    run(["git", "checkout", "-q", "-f", "HEAD"], work, env)  # undo the experiment in the workspace ...
    run(["dvc", "checkout", "-q", "--force", "dvc.yaml"], work, env)  # ... and its models
    with open(work / "pipeline/reporting/report.py", "a") as handle:
        handle.write("\n# an edit to how the report is rendered\n")
    result = run(["dvc", "repro"], work, env)
    ran = sorted(line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage"))
    assert ran == ["code", "report"]
    run(["git", "checkout", "-q", "-f", "HEAD"], work, env)


def test_retraining_from_scratch_gives_the_committed_model(repo):
    """Retrain the baseline (no run storage to reuse): the model is the committed one byte for
    byte, so dvc.lock does not change and nothing downstream re-runs. (That every run, fine-tuning
    included, is deterministic is tests/test_train.py's.)"""
    work, env = repo
    run(["git", "checkout", "-q", "-f", "HEAD"], work, env)
    run(["dvc", "checkout", "-q", "--force", "dvc.yaml"], work, env)
    shutil.rmtree(work / "runs")
    run(["dvc", "repro", "-f", "-s", "baseline"], work, env)
    assert run(["git", "diff", "--stat", "dvc.lock"], work, env).stdout == ""
    assert "up to date" in run(["dvc", "status"], work, env).stdout


def test_an_edited_cost_file_reruns_the_costs_stage_and_a_file_elsewhere_is_refused(repo):
    work, env = repo
    run(["git", "checkout", "-q", "-f", "HEAD"], work, env)
    run(["dvc", "checkout", "-q", "--force", "dvc.yaml"], work, env)
    classes = [str(c) for c in range(10)]
    rows = [",".join(["true\\predicted", *classes])] + [
        ",".join([a, *("0" if a == b else "1" for b in classes)]) for a in classes]
    (work / "costs" / "mine.csv").write_text("\n".join(rows) + "\n")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["costs"].update(kind="file", file="costs/mine.csv")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "costs"], work, env)
    assert "up to date" in run(["dvc", "status", "costs"], work, env).stdout
    rows[1] = rows[1].replace(",1", ",2", 1)  # one cost edited: c(0, 1) = 2
    (work / "costs" / "mine.csv").write_text("\n".join(rows) + "\n")
    status = run(["dvc", "status", "costs"], work, env).stdout
    assert "changed deps" in status and "modified:           costs" in status  # DVC sees the edit
    run(["dvc", "repro", "costs"], work, env)
    assert "2.0" in (work / "data/costs/digits.csv").read_text()  # ... and the matrix follows it

    params["costs"]["file"] = "../mine.csv"  # outside the project: DVC would not see it change
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = subprocess.run(["dvc", "repro", "costs"], cwd=work, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "error in stage costs: params.yaml: costs.file = '../mine.csv' is outside costs/" in refused.stderr
    (work / "costs" / "mine.csv").unlink()
    run(["git", "checkout", "-q", "-f", "HEAD"], work, env)
    run(["dvc", "checkout", "-q", "--force", "dvc.yaml"], work, env)
