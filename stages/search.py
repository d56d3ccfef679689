"""DVC stage 'search': each fine-tuning method's hyperparameters, chosen on validation with Ray Tune.

One Tune experiment per method (pipeline.cluster.search: Optuna's TPE proposes, ASHA stops poor trials
early), starting from the recipe's values, within ``search.max_trials`` trials and the method's
share of ``search.time_budget_s``. Writes models/search/chosen.json (the settings the
finetune stage runs, and how each was found) and trials.csv (every trial). ``search.max_trials:
0`` searches nothing: chosen.json then holds the recipe's settings as they are.
"""

import json
import math
import time
from pathlib import Path

import pandas as pd

from pipeline.cluster.distributed import connect, storage_location, storage_root, use_gpu
from pipeline.cluster.progress import say
from pipeline.cluster.search import (
    SearchError,
    TrialRecord,
    accuracy_floor,
    best_trial,
    chosen_settings,
    records_from_json,
    records_to_json,
    search_key,
    search_method,
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


def unsearched(method: MethodConfig, note: str = "not searched (search.max_trials is 0)") -> dict:
    return {"settings": chosen_settings(method, None), "searched": False, "trials": 0, "note": note}


def trial_rows(method: MethodConfig, records: list[TrialRecord]) -> list[dict]:
    """trials.csv rows: one per trial, its searched values as ``value.<key>`` columns in name order
    (a search read back from its record lists them so too: the file is the same either way)."""
    return [{"method": method.name, "trial": r.number, **{f"value.{k}": r.values[k] for k in sorted(r.values)},
             "epochs_run": r.epochs_run, "best_epoch": None if r.best_epoch is None else r.best_epoch + 1,
             "score": r.score if math.isfinite(r.score) else None, "val_wer": r.val_wer,
             "val_accuracy": r.val_accuracy, "feasible": r.feasible, "stopped_early": r.stopped_early,
             "error": r.error} for r in records]


def method_entry(method: MethodConfig, records: list[TrialRecord]) -> dict:
    """chosen.json's entry of one method: the settings finetune runs and how they were found."""
    try:
        best = best_trial(records)
    except SearchError as error:
        say(f"search {method.name}: {error}; its recipe settings stand")
        return {**unsearched(method, str(error)), "trials": len(records)}
    say(f"search {method.name}: {len(records)} trials ({sum(r.stopped_early for r in records)} stopped early); "
        f"chose trial {best.number}: validation WER "
        f"{best.val_wer:.4f}, accuracy {best.val_accuracy:.4f}"
        + ("" if best.feasible else " (no trial kept accuracy within search.max_accuracy_drop)"))
    return {"settings": chosen_settings(method, best), "searched": True, "trials": len(records),
            "stopped_early": sum(r.stopped_early for r in records), "failed": sum(r.error is not None for r in records),
            "start": starting_point(method),
            "space": {k: [d.kind, d.low, d.high] for k, d in search_space(method).items()},
            "best": {"trial": best.number, "epoch": best.best_epoch + 1, "val_wer": best.val_wer,
                     "val_accuracy": best.val_accuracy, "feasible": best.feasible, "values": best.values}}


def main(config: Config) -> str:
    root = Path.cwd()
    floor = accuracy_floor(json.loads((config.paths.baseline / HISTORY_FILE).read_text()),
                           config.search.max_accuracy_drop)
    chosen = {method.name: unsearched(method) for method in config.methods}
    rows: list[dict] = []
    if config.search.max_trials > 0:
        for method in config.methods:
            search_space(method)  # a method whose recipe lacks a searched key fails before Ray starts
        max_cost = float(load_costs(config.paths.cost).values.max())
        baseline = baseline_job(config.paths.baseline)
        digest = finetune_inputs_digest(baseline, config.paths.cost, config.paths.baseline)
        storage = storage_root(config.ray, root)
        cache = RunStore(storage_location(storage, "search"))  # every method's trials, by search_key
        deadline = time.monotonic() + config.search.time_budget_s
        for i, method in enumerate(config.methods):
            # An equal share of the time left: what a method leaves unused passes to the next.
            share = max(1.0, (deadline - time.monotonic()) / (len(config.methods) - i))
            base = finetune_job(baseline, method, cost_csv=config.paths.cost, baseline_dir=config.paths.baseline,
                                name=f"{config.dataset}-{method.name}-search",
                                seed=config.seed * 1000 + SEARCH_SEED_OFFSET, replication=None, digest=digest)
            cached = f"{base.name}-{search_key(base, search_space(method), config.search, floor, max_cost, config.seed)}.json"
            try:
                saved = cache.read_json(cached)
            except ValueError:  # a damaged record (an interrupted copy, a disk error): search again
                say(f"search {method.name}: the record of the same search is damaged: discarded, searching again")
                saved = None
            if saved is not None:
                records = records_from_json(saved)
                say(f"search {method.name}: the same search ran before: reused")
            else:
                check_jobs([base], root)  # a setting every trial would fail on fails here, once
                connect(config.ray, root / "runs" / "logs" / "search.log")
                records = search_method(method, base, floor=floor, max_cost=max_cost, search=config.search,
                                        budget_s=share, ray_config=config.ray, gpu=use_gpu(config.ray), root=root,
                                        storage=storage, seed=config.seed)
                cache.write_json(cached, records_to_json(records))
            rows += trial_rows(method, records)
            chosen[method.name] = method_entry(method, records)
    staging = Path(fresh_dir(config.paths.search.with_name(f".{config.paths.search.name}.partial")))
    atomic_write_text(staging / CHOSEN_FILE, json_text({"accuracy_floor": floor, "methods": chosen}))
    write_csv(pd.DataFrame(rows, columns=None if rows else ["method", "trial"]), staging / TRIALS_FILE)
    replace_dir(staging, config.paths.search)
    searched = sum(entry["searched"] for entry in chosen.values())
    return f"{searched} of {len(chosen)} methods searched ({len(rows)} trials) -> {config.paths.search}"

if __name__ == "__main__":
    run_stage("search", main)
