"""What each DVC stage does, as one function per stage taking the validated ``Config``.

``stages/<name>.py`` only calls ``run_stage("<name>")``: read params.yaml once, validate it,
run the step, and turn a user error (bad params, missing data, a cost file for other classes)
into a one-line message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Config, ConfigError, load_config
from pipeline.costs import CostMatrix, CostMatrixError


# -- fetch, split, costs -------------------------------------------------------------------


def fetch(config: Config) -> None:
    from pipeline.prepare import fetch_dataset

    summary = fetch_dataset(
        config.dataset, config.paths.raw, source=config.data.source, download=config.data.download,
        seed=config.seed, label_column=config.data.label_column, verify_checksums=config.data.verify_checksums,
    )
    print(f"fetch: {config.dataset} ready in {config.paths.raw} ({summary.get('num_samples', '?')} samples)")


def split(config: Config) -> None:
    from pipeline.prepare import make_manifest, write_manifest

    manifest = make_manifest(
        config.dataset, config.paths.raw, seed=config.seed, val_fraction=config.data.val_fraction,
        label_column=config.data.label_column,
    )
    write_manifest(manifest, config.paths.manifest)
    counts = manifest["split"].value_counts().to_dict()
    print(f"split: {config.paths.manifest}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test")))


def build_cost_matrix(config: Config, classes: list[str]) -> CostMatrix:
    """The cost matrix params.yaml asks for, checked against the data set's class names."""
    settings = config.costs
    if settings.kind == "pareto":
        cost = CostMatrix.pareto(classes, shape=settings.pareto_shape, scale=settings.pareto_scale,
                                 seed=settings.pareto_seed)
    elif settings.kind == "single_pair":
        cost = CostMatrix.single_pair(classes, settings.true_class, settings.predicted_class, cost=settings.pair_cost)
    elif settings.kind == "expert":
        cost = CostMatrix.expert_from_yaml(settings.expert_file, classes)
    else:
        cost = CostMatrix.load(settings.file)
    cost.check_classes(classes)
    return cost


def costs(config: Config) -> None:
    from pipeline.prepare import read_manifest

    manifest = read_manifest(config.paths.manifest)
    classes = list(manifest.drop_duplicates("label").sort_values("label")["class_name"])
    cost = build_cost_matrix(config, classes)
    config.paths.cost.parent.mkdir(parents=True, exist_ok=True)
    cost.save(config.paths.cost)
    top = ", ".join(f"{a} -> {b}" for a, b in cost.top_pairs(min(3, len(classes) * (len(classes) - 1))))
    print(f"costs: {config.costs.kind} matrix over {len(classes)} classes in {config.paths.cost}; costliest: {top}")


# -- training ----------------------------------------------------------------------------


def baseline(config: Config) -> None:
    from pipeline.distributed import run_training
    from pipeline.runner import baseline_job

    job = baseline_job(config)
    print(f"baseline: {config.model} on {config.dataset}, {config.baseline.epochs} epochs, "
          f"{config.ray.num_workers} Ray Train worker(s)", flush=True)
    staging = config.paths.baseline.with_name(f".{config.paths.baseline.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    run_training(job, config.ray, staging)
    _swap(staging, config.paths.baseline)
    best = json.loads((config.paths.baseline / "history.json").read_text())["best_epoch"]
    print(f"baseline: best epoch {best + 1} by validation loss -> {config.paths.baseline}/model.pt")


def finetune(config: Config) -> None:
    from pipeline.distributed import run_sweep
    from pipeline.runner import finetune_jobs

    init = config.paths.baseline / "model.pt"
    jobs = finetune_jobs(config, init)
    print(f"finetune: {len(jobs)} trials ({', '.join(m.name for m in config.methods)} x "
          f"{config.replications} replications) as one Ray Tune sweep", flush=True)
    staging = config.paths.finetune.with_name(f".{config.paths.finetune.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run_sweep(jobs, config.ray, staging, experiment=f"{config.dataset}-finetune")
    missing = [job.name for job in jobs if not (staging / job.name / "model.pt").exists()]
    if missing:
        raise RuntimeError(f"finetune: trials finished without output: {', '.join(missing)}")
    _swap(staging, config.paths.finetune)
    print(f"finetune: {len(jobs)} models in {config.paths.finetune}")


def _swap(staging: Path, destination: Path) -> None:
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, destination)


# -- evaluation and report ------------------------------------------------------------------


def _trained_runs(config: Config) -> list[tuple[str, int | None, Path]]:
    runs: list[tuple[str, int | None, Path]] = [("baseline", None, config.paths.baseline)]
    for method in config.methods:
        for replication in range(config.replications):
            runs.append((method.name, replication, config.paths.finetune / f"{config.dataset}-{method.name}-r{replication}"))
    return runs


def evaluate(config: Config) -> None:
    import torch

    from pipeline.evaluation import RunPredictions, write_evaluation
    from pipeline.methods import build_method
    from pipeline.models import build_model
    from pipeline.prepare import load_prepared
    from pipeline.runner import load_checkpoint, load_model_state
    from pipeline.train import predict_logits

    data = load_prepared(config.dataset, config.paths.raw, config.paths.manifest, augment=False,
                         label_column=config.data.label_column)
    cost = CostMatrix.load(config.paths.cost)
    cost.check_classes(data.classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = torch.utils.data.DataLoader(data.split("test"), batch_size=256, shuffle=False)
    predictions = []
    for method_name, replication, directory in _trained_runs(config):
        model = build_model(config.model, num_classes=data.num_classes, input_shape=data.input_shape,
                            **config.model_options)
        if method_name != "baseline":
            model = build_method(method_name, cost.as_tensor()).prepare_model(model)  # SOSR's head
        state = load_checkpoint(directory / "model.pt")
        load_model_state(model, state, directory / "model.pt")
        logits, labels = predict_logits(model.to(device), loader, device=device)
        history = json.loads((directory / "history.json").read_text())["history"]
        predictions.append(RunPredictions(method=method_name, replication=replication, logits=logits,
                                          labels=labels, history=history))
        print(f"evaluate: {directory.name}: test accuracy {(logits.argmax(1) == labels).float().mean():.4f}")
    write_evaluation(predictions, cost, config.paths.evaluation, top_k=config.top_k)


def report(config: Config) -> None:
    from pipeline.report import one_screen_summary, render_report, write_report

    summary = json.loads((config.paths.evaluation / "metrics" / "summary.json").read_text())
    cost = CostMatrix.load(config.paths.cost)
    text = render_report(summary, cost, dataset=config.dataset, top_k=config.top_k,
                         extra={"replications": config.replications, "model": config.model})
    write_report(text, config.paths.report)
    print(one_screen_summary(summary, cost, dataset=config.dataset, top_k=config.top_k, paths={
        "report": str(config.paths.report),
        "metrics": str(config.paths.evaluation / "metrics"),
        "tables": str(config.paths.evaluation / "tables"),
        "plots": str(config.paths.evaluation / "plots"),
        "models": str(config.paths.baseline.parent),
    }))


STEPS: dict[str, Callable[[Config], None]] = {
    "fetch": fetch, "split": split, "costs": costs, "baseline": baseline,
    "finetune": finetune, "evaluate": evaluate, "report": report,
}


def run_stage(name: str, params: str = "params.yaml") -> None:
    """Entry point of ``stages/<name>.py``."""
    from pipeline.datasets.common import DatasetError

    started = time.perf_counter()
    try:
        STEPS[name](load_config(params))
    except (ConfigError, DatasetError, CostMatrixError) as error:
        print(f"error in stage {name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{name}: done in {time.perf_counter() - started:.1f} s")
