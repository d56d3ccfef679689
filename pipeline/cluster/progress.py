"""What a training stage shows a person: one progress bar, one line per finished run, the warnings
that matter. Everything else Ray says goes to a log file.

:func:`trial_progress` makes a Ray Tune callback (it runs in the stage's process): the bar counts
epochs over all runs of the stage, with the runs done of the total and an ETA; a finished run
prints its selection metric and best epoch; a failed run, and Ray's retry of it, print a line each.
:func:`quiet_ray_logging` sends the driver's Ray loggers to ``log_file`` instead of the console.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.console import console_width, wrap
from pipeline.runs.jobs import TrainJob

RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data")
# The project's own detail that a person reads only when looking closer (the search's trials).
PROGRESS_LOG = "pipeline.progress"


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

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.monotonic())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        job = self.jobs.get(trial.config["job"]["name"])
        if job is None or _shown_metric(job) not in result:
            return
        self.bar.update(1)
        value, epoch = result[_shown_metric(job)], int(result["epoch"])
        # A run that keeps its last epoch (the paper's protocol) shows its latest one.
        if job.name not in self.best or value < self.best[job.name][0] or job.select_metric == "last":
            self.best[job.name] = (value, epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial.config["job"]["name"]
        job = self.jobs[name]
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
        say(f"  {trial.config['job']['name']}: FAILED ({_first_line(trial)})")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        say(f"  {trial.config['job']['name']}: a worker failed ({_first_line(trial)}); "
            f"Ray retries it from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.bar.close()


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
