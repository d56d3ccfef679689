"""Choose each fine-tuning method's hyperparameters on validation, with Ray Tune.

For every method the search runs one Tune experiment: Optuna's TPE sampler proposes settings from
:data:`SEARCH_SPACES` (the recipe's values, with the user's overrides, are the first trial), and
an ASHA scheduler stops trials whose validation score falls behind at its rungs. Each trial
fine-tunes the baseline on one worker and reports, every epoch,

    search_score = val_wer                                   if val_accuracy >= floor
                   val_wer + max_cost * (1 + floor - acc)    otherwise

with ``floor`` = the baseline's validation accuracy minus ``search.max_accuracy_drop``: a setting
that loses more accuracy than allowed scores worse than every setting that does not (WER never
exceeds the largest cost). The chosen setting is the trial and epoch of lowest score; its epoch
count becomes the method's ``epochs``. Keys the user set in ``finetune.<method>`` are pinned, not
searched. All trials of a method share one seed (common random numbers: settings are compared on
the same data order), which the replications of the finetune stage do not use.

The search stops at ``search.max_trials`` trials per method or when its share of
``search.time_budget_s`` is spent (unused time passes to the next method). It is as
deterministic as the machine's timing allows: with a time budget or concurrent trials, which
trials finish first decides what TPE proposes next. DVC caches the result, so a re-run of the
pipeline reuses it; change a ``search`` setting to search again.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cluster.distributed import tune_experiment
from pipeline.cluster.progress import say
from pipeline.codedeps import code_digest
from pipeline.config import MethodConfig, RayConfig, SearchConfig
from pipeline.errors import UserError
from pipeline.runs.jobs import TrainJob, run_name
from pipeline.runs.sessions import TuneSession

SCORE = "search_score"
_LOG = logging.getLogger("ray.tune.search.progress")  # a Ray logger: it writes to runs/logs/search.log


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


LEARNING_RATE = Dimension("log", 1e-5, 3e-3)
# What is searched per method: the learning rate and the method's own strength settings. The
# epoch count is not sampled: every trial runs the configured epochs (ASHA stops the poor ones)
# and the best trial's best epoch becomes the chosen count.
SEARCH_SPACES: dict[str, dict[str, Dimension]] = {
    "csada": {"lr": LEARNING_RATE, "adv_weight": Dimension("log", 0.1, 20.0),
              "temperature": Dimension("log", 0.25, 10.0), "eps": Dimension("log", 0.1, 10.0),
              "steps": Dimension("int", 2, 15)},
    "ap": {"lr": LEARNING_RATE, "alpha": Dimension("log", 0.1, 20.0)},
    "sosr": {"lr": LEARNING_RATE},
    "penalty": {"lr": LEARNING_RATE},
    "soft_labels": {"lr": LEARNING_RATE, "beta": Dimension("log", 0.5, 50.0)},
    "logit_adjusted": {"lr": LEARNING_RATE},
}


def starting_point(method: MethodConfig) -> dict[str, float | int]:
    """The method's configured value of every key of its search space (options, then optim)."""
    values = {**dataclasses.asdict(method.optim), **dict(method.options)}
    space = SEARCH_SPACES.get(method.name, {})
    missing = [key for key in space if key not in values]
    if missing:
        raise SearchError(f"finetune.{method.name}: the search starts from the recipe's values, and "
                          f"{', '.join(missing)} is not set; add it to the recipe's {method.name} section")
    return {key: values[key] for key in space}


def search_space(method: MethodConfig) -> dict[str, Dimension]:
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
    values: dict[str, float | int]
    epochs_run: int
    best_epoch: int | None  # 0-based; None when the trial failed before its first epoch
    score: float  # inf for a failed trial
    val_wer: float | None
    val_accuracy: float | None
    feasible: bool
    stopped_early: bool
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


# ---------------------------------------------------------------------- Ray Tune


class ScoredSession(TuneSession):
    """A Tune trial's session that adds the search score, and the best epoch so far, to each report."""

    def __init__(self, floor: float, max_cost: float, device: str | None = None) -> None:
        super().__init__(device)
        self.floor, self.max_cost = floor, max_cost
        self.best: dict[str, float] | None = None

    def report(self, metrics: dict[str, float]) -> None:
        score = search_score(metrics["val_wer"], metrics["val_accuracy"], self.floor, self.max_cost)
        if self.best is None or score < self.best["best_score"]:
            self.best = {"best_score": score, "best_epoch": metrics["epoch"], "best_val_wer": metrics["val_wer"],
                         "best_val_accuracy": metrics["val_accuracy"]}
        super().report({**metrics, SCORE: score, **self.best})


def _search_trial(values: dict[str, Any], base: dict[str, Any], settings: dict[str, Any]) -> None:
    """One trial: fine-tune ``base`` with ``values`` here; the run's files live in a scratch folder."""
    from pipeline.runs.train import train_func

    job = dict(base)
    optim, options = dict(job["optim"]), dict(job["method_options"])
    for key, value in values.items():
        (optim if key in optim else options)[key] = int(value) if key in settings["integers"] else float(value)
    job.update(optim=optim, method_options=options)
    with tempfile.TemporaryDirectory(prefix="csada-search-") as scratch:
        session = ScoredSession(settings["floor"], settings["max_cost"])
        train_func({"job": job, "root": settings["root"], "store": scratch, "cpus": settings["cpus"],
                    "checkpoint_interval_s": math.inf}, session=session)


def _tune_dimension(dim: Dimension) -> Any:
    import ray.tune

    if dim.kind == "int":
        return ray.tune.randint(int(dim.low), int(dim.high) + 1)  # upper bound exclusive
    return ray.tune.loguniform(dim.low, dim.high)


def search_method(method: MethodConfig, base: TrainJob, *, floor: float, max_cost: float, search: SearchConfig,
                  budget_s: float, ray_config: RayConfig, gpu: bool, root: Path, storage: str,
                  seed: int) -> list[TrialRecord]:
    """Run one method's Tune experiment; every trial's record, in the order they were proposed."""
    import optuna
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study on the console
    space = search_space(method)
    start = {k: v for k, v in starting_point(method).items() if k in space}
    total_epochs = method.optim.head_only_epochs + method.optim.epochs
    if not space:  # nothing to search (every key pinned): the one trial is the configured setting
        samples, algorithm = 1, None
        param_space: dict[str, Any] = {}
    else:
        samples = search.max_trials
        algorithm = ConcurrencyLimiter(OptunaSearch(points_to_evaluate=[start], seed=seed),
                                       max_concurrent=ray_config.max_concurrent_trials)
        param_space = {key: _tune_dimension(dim) for key, dim in space.items()}
    settings = {"floor": floor, "max_cost": max_cost, "root": str(root.resolve()), "cpus": ray_config.cpus_per_worker,
                "integers": sorted(k for k, d in space.items() if d.kind == "int")}
    trainable = ray.tune.with_parameters(_search_trial, base=base.to_dict(), settings=settings)
    resources = {"CPU": ray_config.cpus_per_worker, "GPU": 1 if gpu else 0}
    with tune_experiment(storage, f"search-{base.name}") as folder:
        tuner = ray.tune.Tuner(
            ray.tune.with_resources(trainable, resources),
            param_space=param_space,
            tune_config=ray.tune.TuneConfig(
                metric=SCORE, mode="min", search_alg=algorithm, num_samples=samples, time_budget_s=budget_s,
                reuse_actors=True,  # the ConcurrencyLimiter caps concurrent trials
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=total_epochs,
                                        grace_period=max(1, total_epochs // 4), reduction_factor=3),
            ),
            run_config=ray.tune.RunConfig(name=folder, storage_path=storage, verbose=0,
                                          callbacks=[_search_progress(method.name, samples)]),
        )
        results = tuner.fit()
    records = []
    for number, result in enumerate(results):  # in the order the trials were made: the start first
        metrics = result.metrics or {}
        values = {k: v for k, v in (result.config or {}).items() if k in space}
        run = int(metrics.get("training_iteration", 0))
        best = metrics.get("best_score")
        records.append(TrialRecord(
            number=number, values=values, epochs_run=run,
            best_epoch=int(metrics["best_epoch"]) if best is not None else None,
            score=float(best) if best is not None else math.inf,
            val_wer=metrics.get("best_val_wer"), val_accuracy=metrics.get("best_val_accuracy"),
            feasible=best is not None and metrics.get("best_val_accuracy", -1.0) >= floor,
            stopped_early=result.error is None and 0 < run < total_epochs,
            error=_first_line(result.error) if result.error is not None else None,
        ))
    return records


def search_key(base: TrainJob, space: Mapping[str, Dimension], search: SearchConfig, floor: float,
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


def _search_progress(method: str, samples: int) -> Any:
    import ray.tune

    class SearchProgress(ray.tune.Callback):
        """The console gets a line per failed trial; the log a line per trial that beats the best so far."""

        def __init__(self) -> None:
            self.done, self.best, self.clock = 0, math.inf, time.monotonic()

        def _where(self) -> str:
            return f"search {method} [{self.done}/{samples}]"

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            result = trial.last_result or {}
            if "best_score" in result and result["best_score"] < self.best:
                self.best = result["best_score"]
                below = result["best_score"] > result["best_val_wer"]  # the score's accuracy penalty
                _LOG.info("%s best so far: validation WER %.4f, accuracy %.4f%s at epoch %d (%.0f s)", self._where(),
                          result["best_val_wer"], result["best_val_accuracy"], " (below the bound)" if below else "",
                          int(result["best_epoch"]) + 1, time.monotonic() - self.clock)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            error = _first_line(Exception(getattr(trial, "error_msg", "") or "see runs/logs/search.log"))
            say(f"  {self._where()} a trial FAILED ({error})")

    return SearchProgress()
