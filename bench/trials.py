"""What Ray costs per training run: the start-up of a local cluster, and the overhead of a trial.

A sweep of N trivial runs (the toy MLP for one epoch, each its own seed) goes through the same
``pipeline.cluster.distributed.run_jobs`` the stages use, on a fresh local cluster and a fresh run store.
The same runs are timed without Ray (``train_func`` in this process), so

    overhead per trial = (sweep wall time - sum of the runs' own training times) / N

at one trial at a time, and the sweep's wall time per trial at ``--concurrency`` trials at a time.
The figures are measured in one process, one after the other:

    python bench/trials.py                 # 12 trials
    python bench/trials.py --trials 24 --concurrency 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cluster.distributed import connect, run_jobs  # noqa: E402
from pipeline.config import RayConfig  # noqa: E402
from pipeline.method.costfiles import save_costs
from pipeline.runs.jobs import TrainJob  # noqa: E402
from pipeline.runs.optim import OptimConfig  # noqa: E402
from pipeline.runs.train import train_func  # noqa: E402


def toy_project(root: Path) -> dict[str, str]:
    from pipeline.datasets.prepare import fetch_dataset, make_manifest, write_manifest
    from pipeline.method.costs import CostMatrix

    fetch_dataset("toy", root / "raw" / "toy", seed=0)
    write_manifest(make_manifest("toy", root / "raw" / "toy", seed=0), root / "toy.parquet")
    save_costs(CostMatrix.single_pair(["red", "green", "blue"], "green", "blue"), root / "cost.csv")
    return {"raw_dir": "raw/toy", "manifest": "toy.parquet", "cost_csv": "cost.csv"}


def trivial_jobs(root: Path, n: int, tag: str) -> list[TrainJob]:
    inputs = toy_project(root)
    return [TrainJob(name=f"bench-{tag}-{i}", dataset="toy", **inputs, model="mlp", model_options={},
                     pretrained=False, method="ap", method_options={"alpha": 1.0},
                     optim=dataclasses.asdict(OptimConfig(epochs=1, optimizer="adam", lr=0.01, batch_size=32)),
                     seed=i, select_metric="val_wer") for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        jobs = trivial_jobs(root, args.trials, "local")
        started = time.perf_counter()
        for job in jobs:
            train_func({"job": job.to_dict(), "store": str(root / "local" / job.name), "root": str(root),
                        "device": "cpu"})
        train_seconds = (time.perf_counter() - started) / len(jobs)

        started = time.perf_counter()
        connect(RayConfig(storage_path="runs"))
        startup = time.perf_counter() - started
        print(f"Ray start-up (local cluster): {startup:.1f} s")
        print(f"one trivial run without Ray: {train_seconds:.2f} s")
        for concurrency in (1, args.concurrency):
            config = RayConfig(storage_path=f"runs-{concurrency}", max_concurrent_trials=concurrency)
            sweep = trivial_jobs(root, args.trials, f"c{concurrency}")
            started = time.perf_counter()
            run_jobs(sweep, config, root, experiment=f"bench-{concurrency}")
            wall = time.perf_counter() - started
            overhead = (wall * concurrency - train_seconds * len(sweep)) / len(sweep)
            print(f"{len(sweep)} trials, {concurrency} at a time: {wall:.1f} s, {wall / len(sweep):.2f} s per trial; "
                  f"overhead per trial {overhead:.2f} s (goal: at most 3 s)")


if __name__ == "__main__":
    main()
