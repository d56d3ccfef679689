"""Ray at the edge: ``train_func`` wrapped in a TorchTrainer (DDP), and a Tune sweep of them.

* ``connect`` joins ``ray.address`` / ``RAY_ADDRESS`` when set, else starts a local cluster.
* ``run_training`` runs one job as a TorchTrainer with ``num_workers`` DDP workers (gloo on
  CPU, NCCL on GPU; GPUs are used when the cluster has them and ``use_gpu`` is ``auto``).
* ``run_sweep`` runs many jobs as one Ray Tune experiment whose trials each drive a
  TorchTrainer (the Ray Train V2 pattern).

Each Ray Train run is named after its job and the job's fingerprint, under
``ray.storage_path``: running the same job again finds its checkpoints and resumes from the
last finished epoch, and a job whose settings changed starts afresh in a new directory.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import RayConfig
from pipeline.fileio import atomic_write_text
from pipeline.runner import CHECKPOINT_FILE, TrainJob, load_checkpoint, save_checkpoint, train_func

# Tune's trial driver only waits on its TorchTrainer; it must not hold a CPU the workers need.
DRIVER_CPUS = 0.01


@dataclass(frozen=True)
class TrainOutcome:
    """A finished run: its history and the state of the selected epoch."""

    job: TrainJob
    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, Any]


def connect(ray_config: RayConfig) -> None:
    import ray

    # Ray Train's controller polls its workers every 2 s by default and each report waits for
    # that poll: with an epoch of a second or less that would triple the run time. Ray Train
    # forwards this variable from the driver to its controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    if ray.is_initialized():
        return
    if ray_config.address:
        ray.init(address=ray_config.address, log_to_driver=True)
    else:
        # A local cluster serves this machine only: keep all of its traffic on loopback.
        ray.init(include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1")


def _use_gpu(ray_config: RayConfig) -> bool:
    import ray

    if ray_config.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(ray_config.use_gpu)


def storage_path(ray_config: RayConfig) -> str:
    """Ray wants an absolute local path or a URI (s3://...)."""
    path = ray_config.storage_path
    return path if "://" in path else str(Path(path).resolve())


def run_name(job: TrainJob) -> str:
    return f"{job.name}-{job.fingerprint()}"


def _trainer(job: TrainJob, ray_config: RayConfig, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = _use_gpu(ray_config)
    resources = {"CPU": ray_config.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_func,
        train_loop_config={"job": job.to_dict()},
        scaling_config=ScalingConfig(num_workers=ray_config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name(job),
            storage_path=storage_path(ray_config),
            # The latest checkpoint carries the best epoch's weights too (see runner.train_func):
            # it is all a restarted worker or the stage needs.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=2),
            callbacks=callbacks or [],
        ),
    )


def _outcome(job: TrainJob, result) -> TrainOutcome:
    """Read the selected epoch's state back from the run's checkpoints."""
    if result.error is not None:
        raise RuntimeError(f"training run {job.name} failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.name} finished without a checkpoint")
    latest = _read_state(result.checkpoint)
    best = latest["best"]
    return TrainOutcome(job, list(latest["history"]), int(best["epoch"]), {"model": best["model"]})


def _read_state(checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        return load_checkpoint(Path(directory) / CHECKPOINT_FILE)


def finished_outcome_dir(job: TrainJob, ray_config: RayConfig) -> Path | None:
    """Where a finished run of exactly this job keeps its outputs (local storage only)."""
    if "://" in ray_config.storage_path:
        return None
    return Path(storage_path(ray_config)) / run_name(job) / "outcome"


def _train_or_reuse(job: TrainJob, ray_config: RayConfig, destination: Path, callbacks: list | None = None) -> bool:
    """Write the job's model.pt and history.json to ``destination``; True if it had to train.

    A job that already finished (same settings, same input files) is not trained again: its
    outputs are copied from the run's storage. An unfinished one resumes from its last epoch.
    """
    finished = finished_outcome_dir(job, ray_config)
    if finished is not None and (finished / "model.pt").is_file() and (finished / "history.json").is_file():
        destination.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "history.json"):
            shutil.copyfile(finished / name, destination / name)
        print(f"[{job.name}] already finished in {finished.parent}: reusing its outputs", flush=True)
        return False
    outcome = _outcome(job, _trainer(job, ray_config, callbacks).fit())
    if finished is not None:
        write_outcome(outcome, finished)
    write_outcome(outcome, destination)
    return True


def run_training(job: TrainJob, ray_config: RayConfig, destination: Path) -> bool:
    """One job as a TorchTrainer on the connected cluster; its outputs go to ``destination``."""
    connect(ray_config)
    return _train_or_reuse(job, ray_config, destination)


def _sweep_trial(config: dict[str, Any]) -> None:
    """A Tune trial: drive one TorchTrainer and forward its per-epoch metrics to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    job = TrainJob.from_dict(config["job"])
    ray_config = RayConfig(**config["ray"])
    trained = _train_or_reuse(job, ray_config, Path(config["output_dir"]) / job.name, [TuneReportCallback()])
    ray.tune.report({"done": 1, "trained": int(trained)})


def write_outcome(outcome: TrainOutcome, destination: Path) -> None:
    """``model.pt`` (the selected epoch's weights only) and ``history.json`` into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        {"model": outcome.best_state["model"], "epoch": outcome.best_epoch, "job": outcome.job.to_dict()},
        destination / "model.pt",
    )
    summary = {"job": outcome.job.to_dict(), "best_epoch": outcome.best_epoch, "history": outcome.history}
    atomic_write_text(destination / "history.json", json.dumps(summary, indent=1, sort_keys=True))


def run_sweep(jobs: list[TrainJob], ray_config: RayConfig, output_dir: Path, experiment: str) -> None:
    """All jobs as one Tune experiment; each finished job's outputs land in ``output_dir/<job.name>``."""
    import ray.tune

    connect(ray_config)
    by_name = {job.name: job.to_dict() for job in jobs}
    ray_settings = {k: getattr(ray_config, k) for k in RayConfig.__dataclass_fields__}
    # Tune runs each trial in a working directory of its own: a relative path must be made
    # absolute here, on the driver, or each trial would keep its runs in its own directory.
    ray_settings["storage_path"] = storage_path(ray_config)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(_sweep_trial, {"CPU": DRIVER_CPUS}),
        param_space={
            "job": ray.tune.grid_search(list(by_name.values())),
            "ray": ray_settings,
            "output_dir": str(output_dir.resolve()),
        },
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=ray_config.max_concurrent_trials),
        run_config=ray.tune.RunConfig(name=experiment, storage_path=storage_path(ray_config), verbose=1),
    )
    results = tuner.fit()
    failed = [result for result in results if result.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} fine-tuning trials failed; first: {failed[0].error}")
