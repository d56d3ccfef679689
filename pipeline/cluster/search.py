"""Choose each fine-tuning method's hyperparameters on validation: Optuna's TPE and successive
halving, each method's trials one at a time, the methods side by side on Ray.

For every method, Optuna's TPE sampler proposes settings from :data:`SEARCH_SPACES` (the
recipe's values, with the user's overrides, are the first trial), and successive halving
(:mod:`pipeline.cluster.halving`, ASHA's rule) stops trials whose validation score falls behind
the earlier trials' at its rungs. Each trial fine-tunes the baseline and scores every epoch

    search_score = val_wer                                   if val_accuracy >= floor
                   val_wer + max_cost * (1 + floor - acc)    otherwise

with ``floor`` = the baseline's validation accuracy minus ``search.max_accuracy_drop``: a setting
that loses more accuracy than allowed scores worse than every setting that does not (WER never
exceeds the largest cost). The chosen setting is the trial and epoch of lowest score; its epoch
count becomes the method's ``epochs``. Keys the user set in ``finetune.<method>`` are pinned, not
searched. All trials of a method share one seed (common random numbers: settings are compared on
the same data order), which the replications of the finetune stage do not use.

A method's trials run one after the other in one Ray worker (:func:`search_method`); up to
``ray.max_concurrent_trials`` methods run at a time (:func:`run_searches`). So what TPE proposes
and what halving stops never depend on which trial reports first: the same inputs give the same
trials and the same choice on every run. The one exception is the time budget: a method's search
stops at ``search.max_trials`` trials or when its share of ``search.time_budget_s`` is spent
(unused time passes to the methods after it), and where the budget ends a search, how far it got
depends on the machine's speed: its trials say ``out_of_time`` and chosen.json says so. DVC
caches the result, so a re-run of the pipeline reuses it; change a ``search`` setting to search
again.

Validation WER of one run is noisy (about 10% per epoch on a few thousand images): the search
narrows the settings, and the recommendation (pipeline.reporting.evaluation) then compares methods on the
mean over fresh replications, never on the search's single runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.cluster.halving import Decision, SuccessiveHalving, rungs
from pipeline.cluster.progress import PROGRESS_LOG, say
from pipeline.codedeps import code_digest
from pipeline.config import MethodConfig, RayConfig, SearchConfig
from pipeline.errors import UserError
from pipeline.method.registry import METHODS
from pipeline.runs.jobs import TrainJob, run_name
from pipeline.runs.sessions import LocalSession

# Successive halving keeps the best third at each rung; the first rung is a quarter of the epochs.
REDUCTION_FACTOR = 3
_LOG = logging.getLogger(PROGRESS_LOG)  # runs/logs/search.log


class SearchError(UserError):
    """A search space or a search result that cannot be used."""


@dataclass(frozen=True)
class Dimension:
    """One searched value: ``log`` (log-uniform float) or ``int`` (uniform integer) in [low, high]."""

    kind: str
    low: float
    high: float

    def widened(self, start: float) -> Dimension:
        """The range stretched to hold ``start`` (the recipe's value is always a valid trial)."""
        return Dimension(self.kind, min(self.low, start), max(self.high, start))

    def described(self) -> list[Any]:
        """As chosen.json records it: ``[kind, low, high]``."""
        return [self.kind, self.low, self.high]


@dataclass(frozen=True)
class Choice:
    """One searched setting among named values (a categorical dimension)."""

    values: tuple[str, ...]

    def widened(self, start: str) -> Choice:
        """The values with ``start`` among them (the recipe's value is always a valid trial)."""
        return self if start in self.values else Choice((*self.values, start))

    def described(self) -> list[Any]:
        """As chosen.json records it: ``["choice", value, ...]``."""
        return ["choice", *self.values]


LEARNING_RATE = Dimension("log", 1e-5, 3e-3)
# What is searched per method: the learning rate and the method's own strength settings. The
# epoch count is not sampled: every trial runs the configured epochs (ASHA stops the poor ones)
# and the best trial's best epoch becomes the chosen count.
# CSADA's pair weights: by cost alone (the paper) or by cost times the baseline's smoothed
# validation error rate of the pair (errors: augmentation where costly errors happen).
SEARCH_SPACES: dict[str, dict[str, Dimension | Choice]] = {
    "csada": {"lr": LEARNING_RATE, "adv_weight": Dimension("log", 0.1, 20.0),
              "temperature": Dimension("log", 0.25, 10.0), "eps": Dimension("log", 0.1, 10.0),
              "steps": Dimension("int", 2, 15), "pair_weights": Choice(("cost", "errors"))},
    "ap": {"lr": LEARNING_RATE, "alpha": Dimension("log", 0.1, 20.0)},
    "sosr": {"lr": LEARNING_RATE},
    "penalty": {"lr": LEARNING_RATE},
    "soft_labels": {"lr": LEARNING_RATE, "beta": Dimension("log", 0.5, 50.0)},
    "logit_adjusted": {"lr": LEARNING_RATE},
}


def starting_point(method: MethodConfig) -> dict[str, float | int | str]:
    """The method's configured value of every key of its search space (options, then optim). A
    searched choice the recipe leaves out (``pair_weights``) starts at the method's own default;
    a searched range must be set in the recipe, which says where the search starts."""
    space = SEARCH_SPACES.get(method.name, {})
    defaults = {f.name: f.default for f in dataclasses.fields(METHODS[method.name].cls)
                if isinstance(space.get(f.name), Choice) and f.default is not dataclasses.MISSING
                } if method.name in METHODS else {}
    values = {**defaults, **dataclasses.asdict(method.optim), **dict(method.options)}
    missing = [key for key in space if key not in values]
    if missing:
        raise SearchError(f"finetune.{method.name}: the search starts from the recipe's values, and "
                          f"{', '.join(missing)} is not set; add it to the recipe's {method.name} section")
    return {key: values[key] for key in space}


def search_space(method: MethodConfig) -> dict[str, Dimension | Choice]:
    """The searched dimensions: :data:`SEARCH_SPACES` minus pinned keys, widened to the start."""
    start = starting_point(method)
    return {key: dim.widened(start[key]) for key, dim in SEARCH_SPACES.get(method.name, {}).items()
            if key not in method.pinned}


def accuracy_floor(baseline_history: Mapping[str, Any], max_drop: float) -> float:
    """The baseline's validation accuracy at its selected epoch, minus ``max_drop``."""
    best = baseline_history["best_epoch"]
    entries = [e for e in baseline_history["history"] if e.get("epoch") == best and "val_accuracy" in e]
    if not entries:
        raise SearchError(f"the baseline's history has no val_accuracy at its selected epoch {best}; "
                          "re-run the baseline stage")
    return float(entries[-1]["val_accuracy"]) - max_drop


def search_score(val_wer: float, val_accuracy: float, floor: float, max_cost: float) -> float:
    """Validation WER, or worse than any feasible WER when accuracy falls below ``floor``."""
    if val_accuracy >= floor:
        return val_wer
    return val_wer + max_cost * (1.0 + floor - val_accuracy)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the search saw it: its values and the best epoch it reached."""

    number: int
    values: dict[str, float | int | str]
    epochs_run: int
    best_epoch: int | None  # 0-based; None when the trial failed before its first epoch
    score: float  # inf for a failed trial
    val_wer: float | None
    val_accuracy: float | None
    feasible: bool
    stopped_early: bool  # by successive halving
    out_of_time: bool = False  # stopped after an epoch because the time budget ran out
    error: str | None = None


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord:
    """The trial of lowest score; ties go to the earlier trial (the recipe's values first)."""
    usable = [t for t in trials if t.best_epoch is not None and math.isfinite(t.score)]
    if not usable:
        errors = sorted({t.error for t in trials if t.error})
        raise SearchError(f"every one of the {len(trials)} search trials failed"
                          + (f"; first error: {errors[0]}" if errors else ""))
    return min(usable, key=lambda t: (t.score, t.number))


def chosen_settings(method: MethodConfig, trial: TrialRecord | None) -> dict[str, Any]:
    """``{"options": ..., "optim": ...}``: the method's settings with the trial's values and its
    best epoch as the epoch count (the whole run up to it, head-only epochs included); the
    configured settings as they are without a trial."""
    optim = dataclasses.asdict(method.optim)
    options = dict(method.options)
    if trial is None:
        return {"options": options, "optim": optim}
    for key, value in trial.values.items():
        (optim if key in optim else options)[key] = value
    if "epochs" not in method.pinned and trial.best_epoch is not None:
        optim["epochs"] = max(1, trial.best_epoch + 1 - method.optim.head_only_epochs)
    return {"options": options, "optim": optim}


def apply_choice(method: MethodConfig, chosen: Mapping[str, Any]) -> MethodConfig:
    """``method`` with the settings the search chose (``chosen_settings``'s shape)."""
    optim = dataclasses.replace(method.optim, **chosen["optim"])
    return dataclasses.replace(method, optim=optim, options=dict(chosen["options"]))


# ---------------------------------------------------------------------- running a search


class TrialStopped(Exception):
    """Ends a trial between epochs: successive halving stopped it, or the time budget ran out."""

    def __init__(self, out_of_time: bool) -> None:
        super().__init__("out of time" if out_of_time else "stopped by successive halving")
        self.out_of_time = out_of_time


class ScoredSession(LocalSession):
    """A trial's session: scores each epoch, keeps the best so far, and asks ``judge`` (given the
    epochs run and the best score) whether to go on; ``judge`` raises :class:`TrialStopped`."""

    def __init__(self, floor: float, max_cost: float, judge: Callable[[int, float], None]) -> None:
        super().__init__()
        self.floor, self.max_cost, self.judge = floor, max_cost, judge
        self.best: dict[str, float] | None = None
        self.epochs_run = 0

    def report(self, metrics: dict[str, float]) -> None:
        super().report(metrics)
        score = search_score(metrics["val_wer"], metrics["val_accuracy"], self.floor, self.max_cost)
        if self.best is None or score < self.best["score"]:
            self.best = {"score": score, "epoch": metrics["epoch"], "val_wer": metrics["val_wer"],
                         "val_accuracy": metrics["val_accuracy"]}
        self.epochs_run = int(metrics["epoch"]) + 1
        self.judge(self.epochs_run, self.best["score"])


@dataclass(frozen=True)
class SearchTask:
    """One method's search, as a cluster runs it: everything but its share of the time."""

    method: MethodConfig
    base: TrainJob
    floor: float
    max_cost: float
    search: SearchConfig
    root: str  # the project root, absolute: trials read the job's files relative to it
    seed: int


def search_method(task: SearchTask, budget_s: float) -> list[TrialRecord]:
    """Run one method's search in this process, one trial at a time; every trial's record, in
    the order they were proposed (the recipe's values first).

    Optuna's TPE sampler proposes each trial knowing every earlier one; successive halving
    (:mod:`pipeline.cluster.halving`) judges each trial against the earlier ones. With the same
    inputs the trials, their stops and the choice are the same on every run, unless the time
    budget ends the search: a trial running at the deadline stops after its epoch
    (``out_of_time``) and no further trial starts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study on the console
    method, space = task.method, search_space(task.method)
    deadline = time.monotonic() + budget_s
    total_epochs = method.optim.head_only_epochs + method.optim.epochs
    halving = SuccessiveHalving(rungs(total_epochs, max(1, total_epochs // 4), REDUCTION_FACTOR), REDUCTION_FACTOR)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=task.seed))
    if space:
        study.enqueue_trial({k: v for k, v in starting_point(method).items() if k in space})
    distributions = {key: _distribution(dim) for key, dim in space.items()}
    records: list[TrialRecord] = []
    # Nothing to search (every key pinned): the one trial is the configured setting.
    for number in range(task.search.max_trials if space else 1):
        if number > 0 and time.monotonic() >= deadline:
            break  # the recipe's values always run; no other trial starts after the deadline
        proposal = study.ask(distributions)
        record = run_trial(task, number, dict(proposal.params), halving, deadline)
        halving.end(number, record.epochs_run)
        if math.isfinite(record.score):
            study.tell(proposal, record.score)
        else:
            study.tell(proposal, state=optuna.trial.TrialState.FAIL)
        records.append(record)
    return records


def run_trial(task: SearchTask, number: int, values: dict[str, Any], halving: SuccessiveHalving,
              deadline: float) -> TrialRecord:
    """Fine-tune the task's base with ``values`` here, in a scratch run folder, until the last
    epoch, a stop by ``halving``, the ``deadline`` or an error (recorded, not raised)."""
    from pipeline.runs.train import train_func

    base = task.base.to_dict()
    optim, options = dict(base["optim"]), dict(base["method_options"])
    for key, value in values.items():
        (optim if key in optim else options)[key] = value
    total_epochs = optim.get("head_only_epochs", 0) + optim["epochs"]

    def judge(epochs_run: int, best_score: float) -> None:
        decision = halving.judge(number, epochs_run, best_score)
        if decision is Decision.WAIT:  # a bug: trials run one at a time never wait for another
            raise RuntimeError(f"trial {number} waits on an earlier trial at epoch {epochs_run}")
        if decision is Decision.STOP:
            raise TrialStopped(out_of_time=False)
        if epochs_run < total_epochs and time.monotonic() >= deadline:
            raise TrialStopped(out_of_time=True)

    session = ScoredSession(task.floor, task.max_cost, judge)
    stopped, error = None, None
    with tempfile.TemporaryDirectory(prefix="csada-search-") as scratch:
        try:
            train_func({"job": {**base, "optim": optim, "method_options": options}, "root": task.root,
                        "store": scratch, "checkpoint_interval_s": math.inf}, session=session)
        except TrialStopped as stop:
            stopped = stop
        except Exception as failure:  # noqa: BLE001 - a failed trial is a result of the search
            error = _first_line(failure)
    best = session.best
    return TrialRecord(
        number=number, values=values, epochs_run=session.epochs_run,
        best_epoch=int(best["epoch"]) if best else None, score=best["score"] if best else math.inf,
        val_wer=best["val_wer"] if best else None, val_accuracy=best["val_accuracy"] if best else None,
        feasible=best is not None and best["val_accuracy"] >= task.floor,
        stopped_early=stopped is not None and not stopped.out_of_time,
        out_of_time=stopped is not None and stopped.out_of_time, error=error)


def _distribution(dim: Dimension | Choice) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dim, Choice):
        return CategoricalDistribution(dim.values)
    if dim.kind == "int":
        return IntDistribution(int(dim.low), int(dim.high))
    return FloatDistribution(dim.low, dim.high, log=True)


def run_searches(tasks: Sequence[SearchTask], *, budget_s: float, ray_config: RayConfig,
                 gpu: bool) -> Iterator[tuple[int, list[TrialRecord], float]]:
    """Each task's search as one Ray task (one worker, its trials one after the other), at most
    ``ray.max_concurrent_trials`` methods at a time: ``(index, records, seconds)`` per task, in
    the order of ``tasks``. Methods are searched side by side, never a method's trials, so the
    searches do not depend on which finishes first. Each method gets an equal share of the
    time left when it starts; what a method leaves unused passes to those after it."""
    import ray

    remote = ray.remote(num_cpus=ray_config.cpus_per_worker, num_gpus=1 if gpu else 0)(_timed_search)
    slots = max(1, min(ray_config.max_concurrent_trials, len(tasks)))
    deadline = time.monotonic() + budget_s
    running: dict[Any, int] = {}  # a Ray task's result -> its index in ``tasks``
    finished: dict[int, tuple[list[TrialRecord], float]] = {}  # done, not yet handed back
    handed_back = 0

    def one_finished() -> Iterator[tuple[int, list[TrialRecord], float]]:
        nonlocal handed_back
        ready, _ = ray.wait(list(running), num_returns=1)
        finished[running.pop(ready[0])] = ray.get(ready[0])
        while handed_back in finished:
            yield (handed_back, *finished.pop(handed_back))
            handed_back += 1

    pending = list(range(len(tasks)))
    while pending:
        if len(running) >= slots:
            yield from one_finished()
        index = pending.pop(0)
        waves_left = math.ceil((len(tasks) - index) / slots)
        running[remote.remote(tasks[index], max(1.0, (deadline - time.monotonic()) / waves_left))] = index
    while running:
        yield from one_finished()


def _timed_search(task: SearchTask, budget_s: float) -> tuple[list[TrialRecord], float]:
    started = time.monotonic()
    return search_method(task, budget_s), time.monotonic() - started


def search_key(base: TrainJob, space: Mapping[str, Dimension | Choice], search: SearchConfig, floor: float,
               max_cost: float, seed: int) -> str:
    """What a method's search depends on, hashed: its base run (settings, inputs and training code,
    through the run's fingerprint), its space and start, the search settings, the floor and costs.
    A search with the same key is reused, so changing one method's override searches that method
    again, not all of them. The search code itself (this module and what it imports) is part of it."""
    text = json.dumps({"run": run_name(base), "space": {k: dataclasses.astuple(d) for k, d in space.items()},
                       "search": dataclasses.asdict(search), "floor": floor, "max_cost": max_cost, "seed": seed,
                       "code": code_digest(__name__)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def records_to_json(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(r), "score": r.score if math.isfinite(r.score) else None} for r in records]


def records_from_json(data: Sequence[Mapping[str, Any]]) -> list[TrialRecord]:
    return [TrialRecord(**{**entry, "score": math.inf if entry["score"] is None else entry["score"]}) for entry in data]


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


def log_trials(method: str, records: Sequence[TrialRecord], samples: int, seconds: float) -> None:
    """The log gets a line per trial that beats the best so far; the console a line per failed trial."""
    best = math.inf
    for record in records:
        where = f"search {method} [{record.number + 1}/{samples}]"
        if record.error is not None:
            say(f"  {where} a trial FAILED ({record.error})")
        if math.isfinite(record.score) and record.score < best:
            best = record.score
            below = "" if record.feasible else " (below the bound)"
            _LOG.info("%s best so far: validation WER %.4f, accuracy %.4f%s at epoch %d", where, record.val_wer,
                      record.val_accuracy, below, record.best_epoch + 1)
    _LOG.info("search %s: %d trials in %.1f s", method, len(records), seconds)
