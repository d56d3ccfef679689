"""DVC stage 'search': each fine-tuning method's hyperparameters, chosen on validation.

One search per method (pipeline.cluster.search: Optuna's TPE proposes, successive halving stops
poor trials early, the trials one at a time; the methods side by side on Ray), starting from the
recipe's values, within ``search.max_trials`` trials and the method's share of
``search.time_budget_s``. Writes models/search/chosen.json (the settings the finetune
stage runs, how each was found, and whether the time budget ended the search) and trials.csv
(every trial). ``search.max_trials: 0`` searches nothing: chosen.json then holds the recipe's
settings as they are.
"""

import json
import math
from pathlib import Path

import pandas as pd

from pipeline.cluster.distributed import connect, storage_location, storage_root, use_gpu
from pipeline.cluster.progress import say
from pipeline.cluster.search import (
    SearchError,
    SearchTask,
    TrialRecord,
    accuracy_floor,
    best_trial,
    chosen_settings,
    log_trials,
    records_from_json,
    records_to_json,
    run_searches,
    search_key,
    search_space,
    starting_point,
)
from pipeline.config import Config, MethodConfig
from pipeline.fileio import atomic_write_text, fresh_dir, replace_dir
from pipeline.method.costfiles import load_costs
from pipeline.reporting.outputs import json_text, write_csv
from pipeline.runs.checkpoints import HISTORY_FILE, RunStore
from pipeline.runs.plan import baseline_job, finetune_inputs_digest, finetune_job
from pipeline.runs.preflight import check_jobs
from pipeline.stage import run_stage

CHOSEN_FILE = "chosen.json"
TRIALS_FILE = "trials.csv"
# The seed every trial of a search uses; the replications use seed * 1000 + 0, 1, ...
SEARCH_SEED_OFFSET = 999
TIMED_OUT = ("search.time_budget_s ended this search, so how far it got depends on the machine's speed "
             "and another run may choose differently")


def unsearched(method: MethodConfig, note: str = "not searched (search.max_trials is 0)") -> dict:
    return {"settings": chosen_settings(method, None), "searched": False, "trials": 0, "note": note}


def trial_rows(method: MethodConfig, records: list[TrialRecord]) -> list[dict]:
    """trials.csv rows: one per trial, its searched values as ``value.<key>`` columns in name order
    (a search read back from its record lists them so too: the file is the same either way)."""
    return [{"method": method.name, "trial": r.number, **{f"value.{k}": r.values[k] for k in sorted(r.values)},
             "epochs_run": r.epochs_run, "best_epoch": None if r.best_epoch is None else r.best_epoch + 1,
             "score": r.score if math.isfinite(r.score) else None, "val_wer": r.val_wer,
             "val_accuracy": r.val_accuracy, "feasible": r.feasible, "stopped_early": r.stopped_early,
             "out_of_time": r.out_of_time, "error": r.error} for r in records]


def method_entry(method: MethodConfig, records: list[TrialRecord], max_trials: int) -> dict:
    """chosen.json's entry of one method: the settings finetune runs and how they were found."""
    # Ended by the time budget (fewer trials than planned, or a trial cut short): how far the
    # search got, and so what it chose, depends on this machine's speed.
    budget_reached = len(records) < (max_trials if search_space(method) else 1) or any(r.out_of_time for r in records)
    timing = {"budget_reached": budget_reached, **({"note": TIMED_OUT} if budget_reached else {})}
    try:
        best = best_trial(records)
    except SearchError as error:
        say(f"search {method.name}: {error}; its recipe settings stand")
        return {**unsearched(method, str(error)), "trials": len(records), "budget_reached": budget_reached}
    say(f"search {method.name}: {len(records)} trials ({sum(r.stopped_early for r in records)} stopped early); "
        f"chose trial {best.number}: validation WER "
        f"{best.val_wer:.4f}, accuracy {best.val_accuracy:.4f}"
        + ("" if best.feasible else " (no trial kept accuracy within search.max_accuracy_drop)")
        + (f"; {TIMED_OUT}" if budget_reached else ""))
    return {"settings": chosen_settings(method, best), "searched": True, "trials": len(records), **timing,
            "stopped_early": sum(r.stopped_early for r in records), "failed": sum(r.error is not None for r in records),
            "start": starting_point(method),
            "space": {k: d.described() for k, d in search_space(method).items()},
            "best": {"trial": best.number, "epoch": best.best_epoch + 1, "val_wer": best.val_wer,
                     "val_accuracy": best.val_accuracy, "feasible": best.feasible, "values": best.values}}


def main(config: Config) -> str:
    root = Path.cwd()
    floor = accuracy_floor(json.loads((config.paths.baseline / HISTORY_FILE).read_text()),
                           config.search.max_accuracy_drop)
    chosen = {method.name: unsearched(method) for method in config.methods}  # in params' order
    found: dict[str, list[TrialRecord]] = {}
    if config.search.max_trials > 0:
        for method in config.methods:
            search_space(method)  # a method whose recipe lacks a searched key fails before Ray starts
        max_cost = float(load_costs(config.paths.cost).values.max())
        cache = RunStore(storage_location(storage_root(config.ray, root), "search"))  # every search, by search_key
        tasks, records_files = [], []
        for task, record_file in search_tasks(config, root, floor, max_cost):
            saved = read_saved(cache, record_file, task.method.name)
            if saved is not None:
                say(f"search {task.method.name}: the same search ran before: reused")
                found[task.method.name] = saved
                chosen[task.method.name] = method_entry(task.method, saved, config.search.max_trials)
            else:
                tasks.append(task)
                records_files.append(record_file)
        if tasks:
            check_jobs([task.base for task in tasks], root)  # a setting every trial would fail on fails here, once
            connect(config.ray, root / "runs" / "logs" / "search.log")
            for index, records, seconds in run_searches(tasks, budget_s=config.search.time_budget_s,
                                                        ray_config=config.ray, gpu=use_gpu(config.ray)):
                cache.write_json(records_files[index], records_to_json(records))
                log_trials(tasks[index].method.name, records, config.search.max_trials, seconds)
                found[tasks[index].method.name] = records
                chosen[tasks[index].method.name] = method_entry(tasks[index].method, records, config.search.max_trials)
    rows = [row for method in config.methods if method.name in found for row in trial_rows(method, found[method.name])]
    staging = Path(fresh_dir(config.paths.search.with_name(f".{config.paths.search.name}.partial")))
    atomic_write_text(staging / CHOSEN_FILE, json_text({"accuracy_floor": floor, "methods": chosen}))
    write_csv(pd.DataFrame(rows, columns=None if rows else ["method", "trial"]), staging / TRIALS_FILE)
    replace_dir(staging, config.paths.search)
    searched = sum(entry["searched"] for entry in chosen.values())
    return f"{searched} of {len(chosen)} methods searched ({len(rows)} trials) -> {config.paths.search}"


def search_tasks(config: Config, root: Path, floor: float, max_cost: float) -> list[tuple[SearchTask, str]]:
    """Each method's search and the name of its record in the search cache (by ``search_key``)."""
    baseline = baseline_job(config.paths.baseline)
    digest = finetune_inputs_digest(baseline, config.paths.cost, config.paths.baseline)
    tasks = []
    for method in config.methods:
        base = finetune_job(baseline, method, cost_csv=config.paths.cost, baseline_dir=config.paths.baseline,
                            name=f"{config.dataset}-{method.name}-search",
                            seed=config.seed * 1000 + SEARCH_SEED_OFFSET, replication=None, digest=digest)
        key = search_key(base, search_space(method), config.search, floor, max_cost, config.seed)
        tasks.append((SearchTask(method=method, base=base, floor=floor, max_cost=max_cost, search=config.search,
                                 root=str(root.resolve()), seed=config.seed), f"{base.name}-{key}.json"))
    return tasks


def read_saved(cache: RunStore, name: str, method: str) -> list[TrialRecord] | None:
    """The records of the same search run before, or None (a damaged record is discarded)."""
    try:
        saved = cache.read_json(name)
    except ValueError:  # an interrupted copy, a disk error: search again
        say(f"search {method}: the record of the same search is damaged: discarded, searching again")
        return None
    return None if saved is None else records_from_json(saved)


if __name__ == "__main__":
    run_stage("search", main)
