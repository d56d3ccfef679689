"""What a training stage shows a person: one progress bar, one line per finished run, the warnings
that matter. Everything else Ray says goes to a log file.

:func:`trial_progress` makes a Ray Tune callback (it runs in the stage's process): the bar counts
epochs over all runs of the stage, with the runs done of the total and an ETA; a finished run
prints its selection metric and best epoch; a failed run, and Ray's retry of it, print a line each.
A node that leaves the cluster meanwhile prints one line for itself and the runs it took along
(:mod:`pipeline.cluster.nodes`); their retries print none of their own.
:func:`quiet_ray_logging` sends the driver's Ray loggers to ``log_file`` instead of the console.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.cluster import lifeline
from pipeline.cluster.nodes import NodeWatch
from pipeline.console import console_width, wrap
from pipeline.runs.jobs import TrainJob

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data")
# The project's own detail that a person reads only when looking closer (the search's trials).
PROGRESS_LOG = "pipeline.progress"
# A Tune trial's whole config: {RUN: {"name": the run's name, "spec": what it trains, as JSON}}
# (pipeline.cluster.distributed.sweep_spec).
RUN = "run"
_LOG = logging.getLogger(PROGRESS_LOG)
# How often the sweep asks the cluster's head which nodes are alive (the call holds up Tune's loop:
# half a second on a busy machine). The head declares a node dead only after it missed several
# health checks (15 s or more by default); a run that restarted asks at once, and knocks at each
# node's raylet besides (PROBE_TIMEOUT_S each), so that the node it lost is named before the run's
# next epoch is counted.
NODE_POLL_S = 5.0
PROBE_TIMEOUT_S = 2.0


def quiet_ray_logging(log_file: Path) -> None:
    """Ray's own messages (start-up, Tune's bookkeeping, retries in detail) and the project's
    :data:`PROGRESS_LOG` go to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in (*RAY_LOGGERS, PROGRESS_LOG):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    _cluster_messages_to_log()


def _cluster_messages_to_log() -> None:
    """Ray's driver prints the cluster's error messages (a node marked dead, a worker killed for
    lack of memory) straight to stdout, past the logging module, whatever ``log_to_driver`` says:
    they go to the log file with Ray's other messages (a lost node gets its own line:
    :mod:`pipeline.cluster.nodes`)."""
    import ray._private.worker as ray_worker

    printed = ray_worker.print_to_stdstream
    if getattr(printed, "to_log", False):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":  # the error listener's mark; workers' output is not ours to move
            printed(data, ignore_prefix)
            return
        for line in data.get("lines", []):
            logging.getLogger("ray").warning("(raylet) %s", line)

    to_log.to_log = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def say(line: str) -> None:
    """A line on the console, wrapped to its width, that does not break the progress bar."""
    from tqdm import tqdm

    for part in wrap(line):
        tqdm.write(part, file=sys.stdout)
    sys.stdout.flush()


def trial_progress(jobs: list[TrainJob], stage: str) -> Any:
    """The Tune callback that shows the progress of ``jobs``. Ray Tune is imported here, where it
    is about to run, not with this module: a stage that reuses every run never pays for it."""
    import ray.tune

    return type("TrialProgress", (_TrialProgress, ray.tune.Callback), {})(jobs, stage)


def run_of(trial: Any) -> str:
    """The name of the run a Tune trial of :func:`pipeline.cluster.distributed.run_jobs` trains."""
    return trial.config[RUN]["name"]


class _TrialProgress:
    """Progress of one stage's runs (see the module doc); mixed into ``ray.tune.Callback``."""

    def __init__(self, jobs: list[TrainJob], stage: str) -> None:
        from tqdm import tqdm

        self.jobs = {job.name: job for job in jobs}
        self.best: dict[str, tuple[float, int]] = {}
        self.started: dict[str, float] = {}
        self.finished = 0
        epochs = sum(job.optim["epochs"] + job.optim.get("head_only_epochs", 0) for job in jobs)
        # A bar on a terminal; where the output is a file or a pipe the per-run lines say it all.
        self.bar = tqdm(total=epochs, unit="epoch", desc=f"{stage}: 0/{len(jobs)} runs", file=sys.stdout,
                        mininterval=1.0, ncols=console_width(), disable=not sys.stdout.isatty(),
                        bar_format="{desc} {bar} {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}]")
        self.stage, self.clock = stage, time.monotonic()
        self.nodes, self.nodes_polled = NodeWatch(), -NODE_POLL_S

    def _poll_nodes(self, probe: bool = False) -> None:
        """Tell the node watch which nodes are alive: by the head's word, and with ``probe`` (now,
        however recent the last poll) only those whose raylet accepts a connection."""
        if not probe and time.monotonic() - self.nodes_polled < NODE_POLL_S:
            return
        import ray

        self.nodes_polled = time.monotonic()
        try:
            nodes = [node for node in ray.nodes() if node["Alive"]]
        except Exception:  # noqa: BLE001 - a head that stopped answering ends the stage (pipeline.cluster.lifeline)
            return
        self.nodes.nodes({node["NodeID"]: node["NodeManagerAddress"] for node in nodes if not probe or
                          lifeline.answers(node["NodeManagerAddress"], node["NodeManagerPort"], PROBE_TIMEOUT_S)})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._poll_nodes()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.monotonic())
        self.nodes.started(run_of(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        job = self.jobs.get(run_of(trial))
        if job is None or _shown_metric(job) not in result:
            return
        self.bar.update(1)
        value, epoch, resumes = result[_shown_metric(job)], int(result["epoch"]), int(result.get("resumes", 0))
        if self.nodes.resumed_since(job.name, resumes):  # restarted (by Tune or by Ray Train): a node lost?
            self._poll_nodes(probe=True)
        _say_all(self.nodes.epoch(job.name, epoch, resumes))
        # A run that keeps its last epoch (the paper's protocol) shows its latest one.
        if job.name not in self.best or value < self.best[job.name][0] or job.select_metric == "last":
            self.best[job.name] = (value, epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = run_of(trial)
        job = self.jobs[name]
        _say_all(self.nodes.ended(name))
        if "user_error" in (trial.last_result or {}):  # pipeline.cluster.distributed.USER_ERROR
            say(f"  {name}: failed, not retried (the stage ends with its error)")
            return
        self.finished += 1
        self.bar.set_description_str(f"{self.stage}: {self.finished}/{len(self.jobs)} runs")
        seconds = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        metric = _shown_metric(job).replace("val_", "validation ").replace("wer", "WER")
        done = f"[{self.finished}/{len(self.jobs)}] {name}"
        if name in self.best:
            value, epoch = self.best[name]
            total = job.optim["epochs"] + job.optim.get("head_only_epochs", 0)
            done += f": {metric} {value:.4f} at epoch {epoch + 1} of {total} ({seconds:.0f} s)"
        else:  # resumed after its last epoch: nothing new was reported
            done += f": finished ({seconds:.0f} s)"
        left = len(self.jobs) - self.finished
        if left:
            elapsed = time.monotonic() - self.clock
            done += f"; about {elapsed / self.finished * left:.0f} s to go"
        say(f"  {done}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _say_all(self.nodes.ended(run_of(trial)))
        say(f"  {run_of(trial)}: FAILED ({_first_line(trial)})")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = run_of(trial)
        _LOG.info("%s: its trial failed; Ray Tune retries it from its last checkpoint", name)
        self._poll_nodes(probe=True)  # its node, if lost, is named before the run resumes
        if not self.nodes.retried(name):  # else the lost node's line tells it
            say(f"  {name}: a worker failed ({_first_line(trial)}); Ray retries it from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        _say_all(self.nodes.flush())
        self.bar.close()


def _say_all(lines: list[str]) -> None:
    for line in lines:
        say(f"  {line}")


def _shown_metric(job: Any) -> str:
    """The metric a run's line shows: the one it selects its epoch by, or for a run that keeps
    its last epoch, validation WER when it has costs and validation loss when not."""
    if job.select_metric != "last":
        return job.select_metric
    return "val_wer" if job.cost_csv is not None else "val_loss"


def _first_line(trial: Any) -> str:
    error = getattr(trial, "error_msg", None) or ""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:120] if lines else "see the log"
