"""DVC stage 'export': the recommended model, ready to use, in models/<dataset>/recommended/.

Writes the folder of :mod:`pipeline.predict.spec` (``model.pt``, a state dict, and
``model.json``, everything needed to use it) for the one model :mod:`pipeline.predict.export`
hands back, after checking that it decides every test image as the evaluate stage did; its
abstention threshold is calibrated on part of the test split (``predict.max_cost``,
``predict.calibration_fraction``), and what the threshold does on the rest goes to
results/abstention.json and results/figures/abstention.png for the report. Scores where the
evaluate stage scores (a GPU worker of the cluster when there is one), so the numbers agree.
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.cluster.distributed import on_gpu_worker
from pipeline.config import Config
from pipeline.datasets.prepare import load_prepared
from pipeline.method.costfiles import load_costs
from pipeline.method.metrics import cost_metrics
from pipeline.predict.export import calibrate, check_decisions, exported_spec, run_folder
from pipeline.predict.predictor import BATCH_SIZE, Predictions, Predictor, build_network
from pipeline.predict.spec import parse_model_json, write_model_folder
from pipeline.reporting.evaluation import EXPORTED_DECISIONS, RECOMMENDATION_FILE, SUMMARY_FILE
from pipeline.reporting.figures import abstention_figure
from pipeline.reporting.outputs import write_json
from pipeline.runs.checkpoints import MODEL_FILE, load_checkpoint
from pipeline.runs.jobs import TrainJob
from pipeline.stage import run_stage

ABSTENTION_FILE = "abstention.json"
ABSTENTION_FIGURE = "figures/abstention.png"


def exported_predictions(checkpoint: Path, cost_file: Path, recommendation: dict, temperature: float,
                         max_cost: float, device: str = "cpu") -> tuple[dict, Predictions, np.ndarray]:
    """``model.json``'s content (threshold unset) for the run of ``checkpoint``, its predictions on
    the test split, in order, and the labels. A GPU worker may run this: plain values in and out."""
    state = load_checkpoint(checkpoint)
    job = TrainJob.from_dict(state["job"])
    data = load_prepared(job.dataset, Path(job.raw_dir), Path(job.manifest), augment=False,
                         label_column=job.label_column)
    cost = load_costs(cost_file)
    cost.check_classes(data.classes)
    spec = exported_spec(job, data, cost, recommendation=recommendation, temperature=temperature,
                         max_cost=max_cost, epoch=int(state["epoch"]))
    predictor = Predictor(spec, build_network(spec, state["model"], checkpoint), device)
    labels = []

    def inputs():
        for x, y in DataLoader(data.split("test"), batch_size=BATCH_SIZE, shuffle=False):
            labels.append(y)
            yield x

    predictions = predictor.score(inputs())
    return spec.to_json(weights_sha256=""), predictions, torch.cat(labels).numpy()


def main(config: Config) -> str:
    root, results = Path.cwd(), config.paths.evaluation
    recommendation = json.loads((results / RECOMMENDATION_FILE).read_text())
    exported = recommendation["exported"]
    folder = run_folder(exported, recommendation["method"], config.paths.baseline, config.paths.finetune)
    temperature = json.loads((results / SUMMARY_FILE).read_text())["temperatures"][exported["run"]]
    model_json, predictions, labels = on_gpu_worker(
        config.ray.address, config.ray.use_gpu, root / "runs" / "logs" / "export.log", exported_predictions,
        root / folder / MODEL_FILE, root / config.paths.cost, recommendation, temperature, config.predict.max_cost)
    spec, _ = parse_model_json(model_json, "the export")
    evaluated = [line.split(",")[1] for line in (results / EXPORTED_DECISIONS).read_text().splitlines()[1:]]
    test_wer = cost_metrics(labels, predictions.decisions, spec.cost, top_k=0)["wer"]
    check_decisions(predictions.decided_classes, evaluated, test_wer, exported["test_wer"],
                    str(results / EXPORTED_DECISIONS))
    spec, record, (abstained, per_case) = calibrate(spec, predictions, labels,
                                                    fraction=config.predict.calibration_fraction, seed=config.seed)
    write_model_folder(config.paths.recommended, spec, load_checkpoint(folder / MODEL_FILE)["model"])
    write_json(record, results / ABSTENTION_FILE)
    abstention_figure(abstained, per_case, record, results / ABSTENTION_FIGURE)
    held, threshold = record["held_out"], record["threshold"]
    abstains = "never abstains" if threshold is None else f"abstains at expected cost >= {threshold:.4g}"
    return (f"{exported['run']} ({spec.decision_rule}) -> {config.paths.recommended}; {abstains} "
            f"({100 * held['abstention_rate']:.1f}% of held-out cases; cost {held['cost_per_case']:.4g} "
            f"per case, max {config.predict.max_cost:g})")


if __name__ == "__main__":
    run_stage("export", main)
