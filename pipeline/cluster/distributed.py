"""Ray at the edge: training jobs run as one Ray Tune experiment on a cluster joined once.

* :func:`connect` joins ``ray.address`` / ``RAY_ADDRESS`` when set (failing at once, in one line,
  when nothing answers there), else starts a local cluster of the stage's own, even where another
  one runs on the machine. A stage ends with one line when its cluster goes away
  (:func:`pipeline.cluster.lifeline.watch_cluster`); Ctrl-C ends it at once as interrupted.
* :func:`run_jobs` trains a list of jobs (the baseline alone, or every fine-tuning run) as one
  Tune experiment, one trial per job. A one-worker run trains inside its trial
  (``train_func`` with a Tune session: no TorchTrainer, no placement group of its own); a run
  with ``ray.num_workers > 1`` drives a ``TorchTrainer`` from its trial (DDP: gloo on CPU, NCCL on
  GPU).

Each job's run keeps its state under ``ray.storage_path/<job name>-<fingerprint>``
(:class:`~pipeline.runs.checkpoints.RunStore`): a job that finished before is not trained again (its
outcome is copied), an unfinished one resumes from its last checkpoint, whether it was stopped by
a crashed worker or a lost node (Ray Tune retries the trial, Ray Train restarts a DDP run's
workers: :mod:`pipeline.cluster.nodes`) or by a killed stage. Before any of that:

* a finished run is reused only when its outcome verifies (checksum and job), and a checkpoint is
  resumed only when it loads for the same job; otherwise it is discarded, with a line saying so;
* every pending job is checked without training (:func:`pipeline.runs.preflight.check_jobs`);
* the stage holds each run folder it trains, so that no other stage trains it at once
  (:func:`one_trainer_each`: a lock on a local folder, a lease on one in S3), and deletes what
  interrupted writes left in the local ones.

A run that fails with a user error (a :class:`~pipeline.errors.UserError`: bad data or a
checkpoint found only in the worker, a run that diverged) is not retried, since it would fail
again: the trial hands the message back and the stage ends with it as one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.cluster import lifeline
from pipeline.cluster.leases import leased_runs
from pipeline.cluster.progress import RUN, quiet_ray_logging, run_of, say, trial_progress
from pipeline.config import TRIAL_DRIVER_CPUS, RayConfig
from pipeline.errors import UserError
from pipeline.runs.checkpoints import RunStore
from pipeline.runs.jobs import TrainJob, run_name
from pipeline.runs.preflight import check_jobs
from pipeline.runs.runlocks import locked_runs
from pipeline.runs.train import train_func
from pipeline.validation import RAY_ADDRESS_WORDS, host_port

# Ray retries a failed trial (and Ray Train a failed worker group) this often, from the last checkpoint.
MAX_FAILURES = 2
# A run saves its state at most this often (and after its last epoch): a killed run loses at most
# this much training. CSADA_CHECKPOINT_INTERVAL_S changes it (0: after every epoch).
CHECKPOINT_INTERVAL_S = 60.0
# A local ray.storage_path keeps every finished run: one store serves several stages and both
# pipelines (paper/ shares the project's), so a run the current stage does not use may be one
# another stage needs (pruning the 200 oldest, as before, deleted the paper's baselines and most of
# its ablation). CSADA_KEEP_RUNS=N deletes, after each stage, the finished runs it did not use
# beyond the N most recently finished.
def keep_unused_runs(environ: Mapping[str, str]) -> int | None:
    """How many finished runs a stage did not use it keeps (CSADA_KEEP_RUNS); None: all of them."""
    return int(environ["CSADA_KEEP_RUNS"]) if environ.get("CSADA_KEEP_RUNS") else None


KEEP_UNUSED_RUNS = keep_unused_runs(os.environ)
# The metric a trial reports instead of raising when its run failed with a user error.
USER_ERROR = "user_error"
# Given an address where nothing answers, Ray retries for minutes; a head that does not accept a
# connection within this long is not there.
CONNECT_TIMEOUT_S = 5.0


class RunFailedError(UserError):
    """A training run stopped by a user error (its message), or several of them."""


class ClusterError(UserError):
    """A Ray cluster address where no cluster can be joined."""


def connect(ray_config: RayConfig, log_file: Path | None = None) -> None:
    """Join the cluster (once per process); Ray's own messages go to ``log_file``."""
    import ray

    # Ray Train's controller polls its workers every 2 s by default and each report waits for
    # that poll: with an epoch of a second or less that would triple the run time. Ray Train
    # forwards this variable from the driver to its controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # Tune's result loggers (CSV, JSON, TensorBoard per trial) cost time and say nothing that the
    # runs' own histories do not.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune's newer console output prints its configuration table even when told to be silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C raises KeyboardInterrupt, which the stage reports as an interruption (exit status
    # 130). Tune's own handler would instead stop the trials and return from the fit as if it
    # had ended, unfinished runs and all. The runs keep their checkpoints either way.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if log_file is not None:
        quiet_ray_logging(log_file)
    if ray.is_initialized():
        return
    address = ray_config.address or os.environ.get("RAY_ADDRESS") or "local"
    # The workers' output (each epoch's line) stays in Ray's session logs, not on the console.
    if address != "local":
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.INFO)
        except ConnectionError as error:  # "auto" with no cluster on this machine
            raise ClusterError(f"{_setting(address)} = {address!r}: {error}") from None
        lost = (f"the Ray cluster at {address} ({_setting(address)}) stopped answering; the runs keep their "
                "checkpoints: start the cluster again (or set ray.address: null for a local one) and run the "
                "stage again to resume")
    else:
        # "local", not no address: ray.init() without one joins the cluster `ray start` last
        # started on this machine (/tmp/ray/ray_current_cluster), someone else's, which may stop
        # at any time. A local cluster serves this machine only: all of its traffic, the
        # dashboard (and the State API behind it) when ray.dashboard asks for it, stays on loopback.
        ray.init(address="local", log_to_driver=False, logging_level=logging.INFO, include_dashboard=ray_config.dashboard,
                 dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
        lost = ("the stage's local Ray cluster stopped answering (were its processes killed, or the machine "
                "out of memory?); the runs keep their checkpoints: run the stage again to resume")
    # A Ray Client driver (ray://) talks to its client server, not to the GCS.
    head = address.split("://", 1)[1] if address.startswith("ray://") else ray.get_runtime_context().gcs_address
    lifeline.watch_cluster(head, lost)


def _setting(address: str) -> str:
    """Where ``address`` came from, for messages."""
    return "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") == address else "ray.address"


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once, in one line, when no head answers at ``address`` (host:port or
    ray://host:port); ``auto`` and ``local`` Ray resolves itself."""
    if address in RAY_ADDRESS_WORDS:
        return
    setting, parsed = _setting(address), host_port(address)
    if parsed is None:
        raise ClusterError(f"{setting} = {address!r} is not host:port of a running cluster's head (`ray start "
                           "--head` prints it), ray://host:port or auto; null starts a local cluster")
    host, port = parsed
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as error:
        raise ClusterError(f"{setting} = {address!r}: no host is named {host!r} ({error.strerror}); give the "
                           "head node's host:port, or null for a local cluster") from None
    if not lifeline.answers(host, port, timeout_s):
        raise ClusterError(f"{setting} = {address!r}: nothing answers at {host}:{port} within {timeout_s:g} s; "
                           f"start the cluster there (`ray start --head --port={port}`) or fix the address "
                           "(null starts a local cluster)")


def use_gpu(ray_config: RayConfig) -> bool:
    import ray

    if ray_config.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(ray_config.use_gpu)


def storage_root(ray_config: RayConfig, root: Path) -> str:
    """``ray.storage_path`` as Ray and the trials need it: a URI, or an absolute local path
    (a relative one is under the project ``root``; trials run in folders of their own)."""
    path = ray_config.storage_path
    return path if "://" in path else str((root / path).resolve())


def storage_location(storage: str, name: str) -> str:
    """The folder ``name`` under ``storage``; a URI keeps its query (an S3 endpoint) at the end."""
    path, query = storage.split("?", 1) if "?" in storage else (storage, "")
    return f"{path.rstrip('/')}/{name}" + (f"?{query}" if query else "")


def run_location(storage: str, job: TrainJob) -> str:
    """The run's folder under ``storage``."""
    return storage_location(storage, run_name(job))


def run_jobs(jobs: list[TrainJob], ray_config: RayConfig, root: Path, experiment: str) -> list[RunStore]:
    """Train ``jobs``, or reuse those whose runs finished before; the finished runs' stores.

    ``root`` is the project root the jobs' paths are relative to.
    """
    storage = storage_root(ray_config, root)
    stores = [RunStore(run_location(storage, job)) for job in jobs]
    local = "://" not in storage
    pending = [(job, store) for job, store in zip(jobs, stores) if not _reusable(job, store, experiment)]
    if len(pending) < len(jobs):
        say(f"{experiment}: {len(jobs) - len(pending)} of {len(jobs)} runs finished before: reused")
    if pending:
        to_train = [job for job, _ in pending]
        check_jobs(to_train, root)
        with one_trainer_each(storage, [run_name(job) for job in to_train], experiment):
            for job, store in pending:
                _check_state(job, store, experiment, clean=local)
            connect(ray_config, root / "runs" / "logs" / f"{experiment}.log")
            _fit(to_train, ray_config, root, storage, experiment)
        # Each outcome is checked against its checksum where it is used (RunStore.copy_outcome).
        unfinished = [run_name(job) for job, store in pending if not store.finished()]
        if unfinished:
            raise RunFailedError(f"run {unfinished[0]} ended without an outcome; run the stage again")
    if local and KEEP_UNUSED_RUNS is not None:
        prune_runs(Path(storage), keep={run_name(job) for job in jobs}, limit=KEEP_UNUSED_RUNS)
    return stores


def one_trainer_each(storage: str, names: list[str], stage: str) -> contextlib.AbstractContextManager[Any]:
    """Hold the run folders ``names`` under ``storage`` for ``stage`` while the block runs: a
    ``flock`` on a local folder (:mod:`pipeline.runs.runlocks`), a lease on an ``s3://`` one
    (:mod:`pipeline.cluster.leases`). Runs on any other store are not held: two drivers must not
    be pointed at the same runs there."""
    if "://" not in storage:
        return locked_runs([Path(storage) / name for name in names])
    if storage.startswith("s3://"):
        return leased_runs([storage_location(storage, name) for name in names], stage)
    return contextlib.nullcontext()


def _reusable(job: TrainJob, store: RunStore, experiment: str) -> bool:
    """Whether ``job``'s run finished and its outcome verifies; a corrupt one is discarded."""
    if not store.finished():
        return False
    problem = store.outcome_problem(job.to_dict())
    if problem is None:
        return True
    say(f"{experiment}: run {run_name(job)} finished before but {problem}: discarded, training it again")
    store.discard()
    return False


def _check_state(job: TrainJob, store: RunStore, experiment: str, clean: bool) -> None:
    """Discard a checkpoint that cannot be resumed; delete interrupted writes (local runs, locked)."""
    if clean:
        store.remove_partials()
    problem = store.state_problem(job.to_dict())
    if problem is not None:
        say(f"{experiment}: run {run_name(job)}: {problem}: discarded, training it from the start")
        store.discard()


@contextlib.contextmanager
def tune_experiment(storage: str, experiment: str) -> Iterator[str]:
    """The folder name of one Tune experiment of this process under ``storage``.

    Tune's experiment folder (its state files, the trials' folders, a TorchTrainer's) is Tune's
    own bookkeeping: nothing reads it once the fit returns, since each run's state lives in its
    run folder. So each stage invocation gets a folder of its own, removed when the fit ends,
    and a folder whose process died (a killed stage) is removed by the next invocation on this
    host. Only local storage is cleaned.
    """
    host = socket.gethostname()
    name = f".tune-{experiment}-{host}-{os.getpid()}"
    local = "://" not in storage
    if local:
        for folder in Path(storage).glob(f".tune-*-{host}-*"):
            pid = folder.name.rsplit("-", 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
    try:
        yield name
    finally:
        if local:
            shutil.rmtree(Path(storage) / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def prune_runs(storage: Path, keep: set[str], limit: int) -> list[str]:
    """Delete the finished run folders beyond the ``limit`` most recently finished, sparing
    ``keep`` and every unfinished run (it may be resumed). Returns the names deleted."""
    if not storage.is_dir():
        return []
    finished = [d for d in storage.iterdir() if d.name not in keep and (d / "outcome" / "history.json").is_file()]
    finished.sort(key=lambda d: (d / "outcome" / "history.json").stat().st_mtime, reverse=True)
    for old in finished[limit:]:
        shutil.rmtree(old, ignore_errors=True)
    return [old.name for old in finished[limit:]]


def _fit(jobs: list[TrainJob], ray_config: RayConfig, root: Path, storage: str, experiment: str) -> None:
    with tune_experiment(storage, experiment) as folder:
        _tune(jobs, ray_config, root, storage, experiment, folder)


def _tune(jobs: list[TrainJob], ray_config: RayConfig, root: Path, storage: str, experiment: str,
          folder: str) -> None:
    import ray.tune

    gpu = use_gpu(ray_config)
    if ray_config.use_gpu == "auto" and not gpu:
        say(f"{experiment}: ray.use_gpu is auto and the cluster has no GPU: training on CPU")
    one_worker = ray_config.num_workers == 1
    resources = ({"CPU": ray_config.cpus_per_worker, "GPU": 1 if gpu else 0} if one_worker
                 else {"CPU": TRIAL_DRIVER_CPUS})
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(_trial, resources),
        param_space=sweep_spec(jobs, ray_config, root, storage, folder, gpu),
        tune_config=ray.tune.TuneConfig(
            max_concurrent_trials=ray_config.max_concurrent_trials,
            # A trial process that finished its run trains the next one: no new process, no
            # second import of torch.
            reuse_actors=True,
            trial_name_creator=run_of,
            trial_dirname_creator=run_of,
        ),
        run_config=ray.tune.RunConfig(name=folder, storage_path=storage, verbose=0,
                                      callbacks=[trial_progress(jobs, experiment)],
                                      failure_config=ray.tune.FailureConfig(max_failures=MAX_FAILURES)),
    )
    results = tuner.fit()
    refused = [result.metrics[USER_ERROR] for result in results
               if result.error is None and USER_ERROR in (result.metrics or {})]
    if refused:
        more = f" (and {len(refused) - 1} more run(s) failed the same way)" if len(refused) > 1 else ""
        raise RunFailedError(refused[0] + more)
    failed = [result for result in results if result.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} training runs failed; first: {failed[0].error}")


def sweep_spec(jobs: list[TrainJob], ray_config: RayConfig, root: Path, storage: str, folder: str,
               gpu: bool) -> dict[str, Any]:
    """Tune's param space: one trial per job, whose config is ``{RUN: {"name": <the run's name>,
    "spec": <everything the trial needs, as one JSON string>}}``.

    Tune keeps each trial's config in the driver for the whole sweep, copies it into every result
    it records, and keeps a min/max/mean record of every number in it. A config that held the
    sweep's jobs and run folders cost the driver memory in proportion to runs x runs (200 runs:
    +21 MiB, against +10 MiB with one run's spec; bench/load_sweep.py); a string holds no numbers.
    (``tune.with_parameters`` would hand them over once, through an object the driver owns in the
    head's object store; a stage that lost its head then died of Ray's object recovery, exit 1,
    before it could say so: tests/test_fault_tolerance.py.)"""
    import ray.tune

    shared = {"ray": {k: getattr(ray_config, k) for k in RayConfig.__dataclass_fields__},
              "root": str(root.resolve()), "storage": storage, "use_gpu": gpu, "tune_folder": folder,
              "checkpoint_interval_s": float(os.environ.get("CSADA_CHECKPOINT_INTERVAL_S", CHECKPOINT_INTERVAL_S))}
    # Where each run lives is decided here, once: a trial that computed it again from code edited
    # since the stage started would train into a folder the stage never reads.
    trials = [{"name": job.name, "spec": json.dumps({**shared, "job": job.to_dict(), "store": run_location(storage, job)})}
              for job in jobs]
    return {RUN: ray.tune.grid_search(trials)}


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: train its job here, or drive a TorchTrainer for a multi-worker run."""
    import ray.tune

    spec = json.loads(config[RUN]["spec"])
    job = TrainJob.from_dict(spec["job"])
    ray_config = RayConfig(**spec["ray"])
    worker = {"job": spec["job"], "root": spec["root"], "store": spec["store"], "cpus": ray_config.cpus_per_worker,
              "checkpoint_interval_s": spec["checkpoint_interval_s"]}
    if ray_config.num_workers == 1:
        try:
            train_func({**worker, "session": "tune"})
        except UserError as error:  # deterministic: a retry would fail the same way
            ray.tune.report({USER_ERROR: str(error)})
    else:
        _torch_trainer(job, {**worker, "session": "train"}, ray_config,
                       storage_location(spec["storage"], spec["tune_folder"]), spec["use_gpu"]).fit()


def _train_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: ``train_func``, with a user error handed back as a metric, not retried."""
    import ray.train

    try:
        train_func(config)
    except UserError as error:  # every rank meets it: the same data, settings and weights
        ray.train.report({USER_ERROR: str(error)})


def _torch_trainer(job: TrainJob, config: dict[str, Any], ray_config: RayConfig, storage: str, gpu: bool):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = {"CPU": ray_config.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    return TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=ray_config.num_workers, use_gpu=gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"{run_name(job)}-ddp", storage_path=storage,
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),
                             callbacks=[TuneReportCallback()]),
    )


def on_gpu_worker(address: str | None, gpu: str | bool, log_file: Path, fn: Any, *args: Any) -> Any:
    """``fn(*args, device=...)`` on a GPU worker of the cluster at ``address`` when it has one
    (and ``gpu`` allows it); otherwise in this process, on its GPU if it has one. Without an
    address no cluster is started: a local run evaluates where it is."""
    import torch

    local = "cuda" if torch.cuda.is_available() else "cpu"
    if not address or gpu is False:
        return fn(*args, device=local)
    ray_config = RayConfig(address=address, use_gpu=gpu)
    connect(ray_config, log_file)
    if not use_gpu(ray_config):
        if gpu is True:  # with auto, evaluating here is what was asked for: no line (the training stages say it)
            say(f"ray.use_gpu is true and the cluster has no GPU: evaluating on this machine's {local}")
        return fn(*args, device=local)
    import ray

    return ray.get(ray.remote(num_gpus=1)(fn).remote(*args, device="cuda"))
