"""The exported model in use (pipeline.predict): the folder, the predictor, its inputs, the command
line and its errors, and the Ray Data path, on a small model written here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cluster.scoring import BatchScorer
from pipeline.method.costs import CostMatrix
from pipeline.method.decision import decide
from pipeline.method.losses import MethodContext
from pipeline.method.registry import build_method
from pipeline.models.registry import build_model
from pipeline.predict import ModelFolderError, load_predictor
from pipeline.predict.cli import main
from pipeline.predict.inputs import InputError
from pipeline.predict.spec import MODEL_JSON, WEIGHTS_FILE, ExportedModel, Normalization, write_model_folder

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b", "c")
COST = CostMatrix(CLASSES, [[0, 1, 4], [1, 0, 1], [2, 1, 0]])
SPEC = ExportedModel(dataset="test", classes=CLASSES, model="mlp", model_options={"hidden": 16}, method="erm",
                     method_options={}, input_shape=(1, 8, 8), normalization=Normalization((0.4,), (0.25,), (0.0, 1.0)),
                     decision_rule="calibrated_expected_cost", temperature=0.7, cost=COST, max_cost=0.5, threshold=None)
IMAGES = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)


def network(spec: ExportedModel, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec.model, num_classes=len(spec.classes), input_shape=spec.input_shape, **spec.model_options)
    model = build_method(spec.method, spec.method_options, MethodContext(cost=COST.as_tensor())).prepare_model(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4)  # confident enough that the decisions vary between images
    return model.eval()


def exported(folder: Path, spec: ExportedModel = SPEC, state: dict | None = None) -> tuple[Path, torch.nn.Module]:
    model = network(spec)
    write_model_folder(folder, spec, model.state_dict() if state is None else state)
    return folder, model


@pytest.fixture
def model(tmp_path):
    return exported(tmp_path / "model")


def by_hand(model: torch.nn.Module, spec: ExportedModel, images: np.ndarray):
    """Standardise as the digits data set does (float64, then float32), score, apply the rule."""
    x = ((images.astype(np.float64) / 255 - 0.4) / 0.25).astype(np.float32)[:, None]
    logits = model(torch.from_numpy(x)).detach()
    probabilities = torch.softmax(logits.double() / spec.temperature, dim=1).numpy()
    return decide(spec.decision_rule, logits, COST, spec.temperature).numpy(), probabilities


def test_the_predictor_decides_by_the_exported_rule_on_standardised_inputs(model):
    folder, net = model
    predictions = load_predictor(folder, "cpu").predict(IMAGES)
    decisions, probabilities = by_hand(net, SPEC, IMAGES)
    assert len(set(decisions.tolist())) == 3  # the images are decided differently: the check means something
    assert predictions.decisions.tolist() == decisions.tolist()
    np.testing.assert_allclose(predictions.probabilities, probabilities, rtol=1e-5)
    np.testing.assert_allclose(predictions.expected_costs, probabilities @ COST.values, rtol=1e-5)
    # The calibrated rule decides the class of least expected cost; nothing abstains without a threshold.
    assert (predictions.expected_costs.argmin(axis=1) == predictions.decisions).all()
    assert not predictions.abstained.any()
    record = predictions.records()[0]
    assert record["decision"] == CLASSES[decisions[0]] and set(record["expected_costs"]) == set(CLASSES)


def test_every_image_layout_and_pixel_type_gives_the_same_predictions(model, tmp_path):
    folder, _ = model
    predictor = load_predictor(folder, "cpu")
    reference = predictor.predict(IMAGES)
    paths = []
    for i, image in enumerate(IMAGES[:5]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    for images in (IMAGES[:, None], IMAGES[..., None], torch.from_numpy(IMAGES)):  # the same pixels: the same numbers
        predictions = predictor.predict(images)
        assert predictions.decisions.tolist() == reference.decisions.tolist()
        np.testing.assert_array_equal(predictions.probabilities, reference.probabilities)
    floats = predictor.predict(IMAGES.astype(np.float32) / 255)  # rounded to float32 first: nearly the same
    assert floats.decisions.tolist() == reference.decisions.tolist()
    np.testing.assert_allclose(floats.probabilities, reference.probabilities, rtol=1e-4, atol=1e-7)
    files = predictor.predict([str(p) for p in paths])
    assert files.decisions.tolist() == reference.decisions[:5].tolist()


@pytest.mark.parametrize(("images", "message"), [
    (IMAGES[:, :7], r"the images has shape \(40, 7, 8\); the model takes \(N, 1, 8, 8\) channels first, "
                    r"\(N, 8, 8, 1\) channels last or \(N, 8, 8\)"),
    (np.repeat(IMAGES[:, None], 3, axis=1), r"has shape \(40, 3, 8, 8\)"),
    (IMAGES.astype(np.float32), r"float values must lie in \[0, 1\]; got min 0, max 255 \(divide 0..255 pixels by 255"),
    (IMAGES.astype(np.int32) * 2, r"integer pixels must be 0..255; got min 0, max 510"),
    (IMAGES > 128, r"have dtype bool"),
    (IMAGES[:0], r"holds no images"),
])
def test_inputs_of_the_wrong_geometry_or_values_are_refused(model, images, message):
    with pytest.raises(InputError, match=message):
        load_predictor(model[0], "cpu").predict(images)


def test_an_image_file_of_another_size_is_refused_not_resized(model, tmp_path):
    Image.fromarray(np.zeros((8, 10), dtype=np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match=r"wide.png is 10x8 pixels \(width x height\); the model takes 8x8"):
        load_predictor(model[0], "cpu").predict([str(tmp_path / "wide.png")])


def _damage(folder: Path, how: str) -> None:
    if how == "no model.json":
        (folder / MODEL_JSON).unlink()
    elif how == "broken json":
        (folder / MODEL_JSON).write_text("{")
    elif how == "weights changed":
        with open(folder / WEIGHTS_FILE, "ab") as handle:
            handle.write(b"\0")
    elif how == "no weights":
        (folder / WEIGHTS_FILE).unlink()
    elif how == "unknown rule":
        data = json.loads((folder / MODEL_JSON).read_text())
        data["decision"]["rule"] = "median"
        (folder / MODEL_JSON).write_text(json.dumps(data))
    elif how == "cost classes":
        data = json.loads((folder / MODEL_JSON).read_text())
        data["decision"]["cost_matrix"]["classes"] = ["a", "c", "b"]
        (folder / MODEL_JSON).write_text(json.dumps(data))


@pytest.mark.parametrize(("how", "message"), [
    ("no model.json", r"holds no model.json; it is not an exported model folder"),
    ("broken json", r"model.json is not valid JSON"),
    ("weights changed", r"model.pt is not the file model.json was written with \(sha256 differs\)"),
    ("no weights", r"holds no model.pt"),
    ("unknown rule", r"decision.rule 'median' is unknown; known: argmax, calibrated_expected_cost, expected_cost"),
    ("cost classes", r"cost matrix classes do not match"),
])
def test_a_damaged_model_folder_fails_by_name(model, how, message):
    _damage(model[0], how)
    with pytest.raises(ModelFolderError, match=message):
        load_predictor(model[0], "cpu")


def test_weights_that_do_not_fit_the_architecture_fail_by_name(tmp_path):
    other = network(dataclasses.replace(SPEC, model_options={"hidden": 32}))
    folder, _ = exported(tmp_path / "model", SPEC, other.state_dict())  # model.json says hidden 16
    with pytest.raises(ModelFolderError, match=r"the weights do not fit the architecture mlp \{'hidden': 16\}"):
        load_predictor(folder, "cpu")
    with pytest.raises(ModelFolderError, match=r"model folder .*elsewhere does not exist"):
        load_predictor(tmp_path / "elsewhere")


def test_a_method_that_changes_the_output_layer_is_rebuilt_with_it(tmp_path):
    sosr = dataclasses.replace(SPEC, method="sosr", decision_rule="argmax")
    folder, net = exported(tmp_path / "model", sosr)
    assert any(key.startswith("cost_layer") for key in net.state_dict())  # SOSR's regression head
    predictions = load_predictor(folder, "cpu").predict(IMAGES)
    assert predictions.decisions.tolist() == by_hand(net, sosr, IMAGES)[0].tolist()


def test_cases_whose_decision_is_expected_to_cost_at_least_the_threshold_are_abstained_on(tmp_path):
    costs = load_predictor(exported(tmp_path / "m1")[0], "cpu").predict(IMAGES).decision_costs
    threshold = float(np.sort(costs)[len(costs) // 2])  # one case sits exactly at the threshold: abstained
    folder, _ = exported(tmp_path / "m2", dataclasses.replace(SPEC, threshold=threshold))
    predictions = load_predictor(folder, "cpu").predict(IMAGES)
    assert predictions.abstained.tolist() == (costs >= threshold).tolist()
    assert 0 < predictions.abstained.sum() < len(IMAGES)


def test_the_export_refuses_decisions_that_differ_from_the_evaluate_stages():
    from pipeline.predict.export import ExportError, check_decisions

    check_decisions(["a", "b"], ["a", "b"], 0.5, 0.5, "exported_decisions.csv")
    with pytest.raises(ExportError, match=r"decides 1 test image\(s\) differently from exported_decisions.csv "
                                          r"\(e.g. index \[1\]; test WER 0.5 vs 0.5\)"):
        check_decisions(["a", "c"], ["a", "b"], 0.5, 0.5, "exported_decisions.csv")
    with pytest.raises(ExportError, match=r"test WER 0.5 vs 0.5000000000000001"):
        check_decisions(["a", "b"], ["a", "b"], 0.5, 0.5000000000000001, "exported_decisions.csv")  # to the last digit
    with pytest.raises(ExportError, match=r"has 1 images but exported_decisions.csv records 2"):
        check_decisions(["a"], ["a", "b"], 0.5, 0.5, "exported_decisions.csv")


def test_feature_vectors_are_standardised_per_feature(tmp_path):
    table = dataclasses.replace(SPEC, input_shape=(2,), normalization=Normalization((1.0, -2.0), (2.0, 0.5), None))
    folder, net = exported(tmp_path / "model", table)
    points = np.array([[0.0, 0.0], [3.0, -1.0], [-5.0, 2.0]])
    predictions = load_predictor(folder, "cpu").predict(points)
    logits = net(torch.from_numpy(((points - [1.0, -2.0]) / [2.0, 0.5]).astype(np.float32))).detach()
    assert predictions.decisions.tolist() == decide(table.decision_rule, logits, COST, table.temperature).tolist()
    with pytest.raises(InputError, match=r"has shape \(3, 3\); the model takes \(N, 2\) feature vectors"):
        load_predictor(folder, "cpu").predict(np.zeros((3, 3)))


# ------------------------------------------------------------------------------ the command line


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_the_cli_writes_one_row_per_image_of_an_archive(model, tmp_path, capsys):
    folder, _ = model
    labels = np.arange(len(IMAGES)) % 3
    np.savez(tmp_path / "test.npz", x=IMAGES, y=labels)
    main([str(folder), str(tmp_path / "test.npz"), "--out", str(tmp_path / "out.csv"), "--no-ray"])
    rows = _rows(tmp_path / "out.csv")
    assert rows[0] == ["source", "label", "decision", "expected_cost", "abstained", "top1", "top1_probability",
                       "top2", "top2_probability", "top3", "top3_probability"]
    predictions = load_predictor(folder, "cpu").predict(IMAGES)
    assert [r[0] for r in rows[1:]] == [f"test.npz[{i}]" for i in range(len(IMAGES))]
    assert [r[1] for r in rows[1:]] == [CLASSES[i] for i in labels]
    assert [r[2] for r in rows[1:]] == predictions.decided_classes
    assert [float(r[3]) for r in rows[1:]] == pytest.approx(predictions.decision_costs.tolist(), rel=1e-5)
    assert {r[4] for r in rows[1:]} == {"false"}
    for row, probabilities in zip(rows[1:], predictions.probabilities):
        shown = [float(p) for p in row[6::2]]
        assert shown == sorted(shown, reverse=True) and sorted(row[5::2]) == list(CLASSES)
        assert shown[0] == pytest.approx(probabilities.max(), abs=1e-6)
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"predict: {len(IMAGES)} images: {len(IMAGES)} decided, 0 to a person (never abstains); "
                           "on the labels: WER ")


def test_the_cli_reads_a_folder_at_any_depth_and_a_single_image(model, tmp_path):
    folder, _ = model
    (tmp_path / "in" / "deeper").mkdir(parents=True)
    names = ["in/b.png", "in/a.png", "in/deeper/c.png"]
    for name, image in zip(names, IMAGES):
        Image.fromarray(image).save(tmp_path / name)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    main([str(folder), str(tmp_path / "in"), "--out", str(tmp_path / "out.csv"), "--no-ray"])
    rows = _rows(tmp_path / "out.csv")
    assert [r[0] for r in rows[1:]] == ["a.png", "b.png", "deeper/c.png"]
    expected = load_predictor(folder, "cpu").predict([str(tmp_path / n) for n in ("in/a.png", "in/b.png", "in/deeper/c.png")])
    assert [r[1] for r in rows[1:]] == expected.decided_classes
    main([str(folder), str(tmp_path / "in/a.png"), "--out", str(tmp_path / "one.csv"), "--no-ray"])
    assert _rows(tmp_path / "one.csv")[1] == rows[1]


def _bad_input(tmp_path: Path, what: str) -> Path:
    if what == "missing":
        return tmp_path / "nowhere.npz"
    if what == "not an npz":
        (tmp_path / "x.npz").write_text("text")
        return tmp_path / "x.npz"
    if what == "npz keys":
        np.savez(tmp_path / "x.npz", images=IMAGES)
        return tmp_path / "x.npz"
    if what == "npz geometry":
        np.savez(tmp_path / "x.npz", x=IMAGES[:, :6])
        return tmp_path / "x.npz"
    if what == "npz labels":
        np.savez(tmp_path / "x.npz", x=IMAGES, y=np.full(len(IMAGES), 3))
        return tmp_path / "x.npz"
    (tmp_path / "in").mkdir()
    Image.fromarray(IMAGES[0]).save(tmp_path / "in" / "a.png")
    if what == "damaged image":
        (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    elif what == "image geometry":
        Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(tmp_path / "in" / "b.png")
    return tmp_path / "in"


@pytest.mark.parametrize(("what", "message"), [
    ("missing", r"input .*nowhere.npz does not exist"),
    ("not an npz", r"cannot read .*x.npz as an .npz archive"),
    ("npz keys", r"x.npz has keys \['images'\]; it needs x"),
    ("npz geometry", r"x.npz: x has shape \(40, 6, 8\); the model takes"),
    ("npz labels", r"y must hold one class index in 0..2 per image"),
    ("damaged image", r"cannot read image b.png"),
    ("image geometry", r"b.png is 9x9 pixels \(width x height\); the model takes 8x8"),
])
def test_cli_errors_are_one_line_with_exit_status_2(model, tmp_path, capsys, what, message):
    source = _bad_input(tmp_path, what)
    with pytest.raises(SystemExit) as stopped:
        main([str(model[0]), str(source), "--out", str(tmp_path / "out.csv"), "--no-ray"])
    assert stopped.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: predict: "), err
    assert __import__("re").search(message, err[0]), err[0]
    assert not (tmp_path / "out.csv").exists()  # nothing half-written


def test_in_a_fresh_process_predicting_imports_neither_ray_nor_dvc(model, tmp_path):
    folder, _ = model
    np.savez(tmp_path / "test.npz", x=IMAGES)
    # The API, then the command line as `python -m pipeline.predict` runs it (its __main__), in-process path.
    script = ("import runpy, sys\n"
              "import numpy as np\n"
              "from pipeline.predict import load_predictor\n"
              f"load_predictor({str(folder)!r}).predict(np.load({str(tmp_path / 'test.npz')!r})['x'])\n"
              f"sys.argv = ['predict', {str(folder)!r}, {str(tmp_path / 'test.npz')!r}, '--out', {str(tmp_path / 'out.csv')!r}]\n"
              "runpy.run_module('pipeline.predict', run_name='__main__')\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'dvc')))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(_rows(tmp_path / "out.csv")) == 1 + len(IMAGES)


def test_the_export_is_a_dvc_model_artifact_that_artifacts_show_finds(tmp_path):
    # dvc.yaml declares it; a registered version (a git tag name@vX.Y.Z) makes it findable by name.
    import dvc.api
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"],
                    ["git", "tag", "-a", "recommended-model@v1.0.0", "-m", "x"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert dvc.api.artifacts_show("recommended-model", repo=str(tmp_path)) == {
        "rev": head, "path": "models/digits/recommended"}  # ${dataset} resolved from params.yaml
    declared = Repo(str(tmp_path)).artifacts.read()["dvc.yaml"]["recommended-model"]
    assert (declared.type, declared.path) == ("model", "models/digits/recommended")


# ------------------------------------------------------------------------------ the Ray Data path


def test_the_ray_actor_scores_a_batch_as_the_predictor_does_and_flags_unusable_rows(model, tmp_path):
    folder, _ = model
    scorer, predictor = BatchScorer(str(folder), "cpu"), load_predictor(folder, "cpu")
    reference = predictor.predict(IMAGES[:4])
    out = scorer({"index": np.array([2, 0, 3, 1]), "pixels": IMAGES[[2, 0, 3, 1]]})  # a group comes in any order
    assert out["index"].tolist() == [0, 1, 2, 3] and not any(out["error"])
    assert predictor.decisions(torch.from_numpy(out["logits"])).decisions.tolist() == reference.decisions.tolist()
    Image.fromarray(IMAGES[0]).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8)).save(tmp_path / "tall.png")
    files = {"index": np.array([7, 8]), "bytes": np.array([(tmp_path / "a.png").read_bytes(), (tmp_path / "tall.png").read_bytes()],
                                                          dtype=object), "source": np.array(["a.png", "tall.png"])}
    out = scorer(files)
    assert out["index"].tolist() == [7, 8]
    assert predictor.decisions(torch.from_numpy(out["logits"][:1])).decisions[0] == reference.decisions[0]
    assert out["error"][0] == "" and "tall.png is 8x9 pixels" in out["error"][1]


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_scoring_a_folder_on_ray_writes_the_same_csv_as_in_process(model, tmp_path, ray_cluster, monkeypatch, capsys):
    import ray

    folder, _ = model
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i, image in enumerate(IMAGES[:12]):
        Image.fromarray(image).save(tmp_path / "in" / ("sub" if i % 2 else "") / f"{i:02d}.png")
    monkeypatch.chdir(tmp_path)  # Ray's own messages go to runs/logs/predict.log here
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)  # the Ray path, as when a user has a cluster
    command = [str(folder), str(tmp_path / "in"), "--batch-size", "5"]  # batches that straddle the folders
    try:
        main([*command, "--out", "ray.csv"])
    finally:
        ray.shutdown()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("(on Ray) -> ray.csv")
    main([*command, "--out", "here.csv", "--no-ray"])
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "here.csv").read_text()
    assert (tmp_path / "runs/logs/predict.log").is_file()
