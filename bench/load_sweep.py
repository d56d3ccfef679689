"""Load: one sweep of many short runs on a two-node cluster, more trials allowed at once than it has CPUs.

The cluster is started as tests/two_nodes.py starts one (``ray start`` processes on this machine, one
CPU per node, joined through RAY_ADDRESS). A driver process, a stage as the stages are
(``pipeline.stage.run_stage``), trains N toy runs (the MLP, one epoch, each its own seed) through
``pipeline.cluster.distributed.run_jobs`` as one Ray Tune sweep with ``ray.max_concurrent_trials``
above the cluster's CPUs. Measured in that one run:

* the sweep's wall time: the driver process from its start (joining the cluster included) to its exit;
* the driver's resident memory (VmRSS), sampled every 0.5 s by a thread, its peak, and its value when
  25%, 50%, 75% and 100% of the runs had finished (read when the run's console line arrives): a driver
  that keeps something per trial grows from the first quarter to the end;
* lost or duplicated runs: each run's folder holds exactly one finished outcome with one epoch, trained
  once (its worker's epoch lines, counted over every node's Ray worker logs: a run trained again would
  print its epoch again), and no run folder besides;
* the console: one line per finished run, numbered 1..N once each, the stage's closing line, nothing else.

    python bench/load_sweep.py                              # 200 runs, 8 at a time on 2 CPUs
    python bench/load_sweep.py --runs 20 --concurrency 8    # an estimate first

The figures are printed and written to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RSS_PERIOD_S = 0.5
QUARTERS = (0.25, 0.5, 0.75, 1.0)
EPOCH_LINE = "] epoch "  # a trained epoch, as a run prints it (pipeline.runs.train)
# A finished run's console line (pipeline.cluster.progress): "  [k/N] name: ...".
FINISHED_LINE = re.compile(r"^  \[(\d+)/(\d+)\] (\S+?):")
STAGE = "load"
STORAGE = "runs/ray"  # ray.storage_path: one folder per run (the stage's log is in runs/logs)


def job_name(index: int) -> str:
    return f"load-{index:04d}"


def toy_jobs(runs: int) -> list:
    """``runs`` one-epoch toy MLP runs, each its own seed, on the inputs :func:`prepare` wrote."""
    from pipeline.runs.jobs import TrainJob
    from pipeline.runs.optim import OptimConfig

    optim = dataclasses.asdict(OptimConfig(epochs=1, optimizer="adam", lr=0.01, batch_size=32))
    return [TrainJob(name=job_name(i), dataset="toy", raw_dir="raw/toy", manifest="toy.parquet", cost_csv="cost.csv",
                     model="mlp", model_options={}, pretrained=False, method="ap", method_options={"alpha": 1.0},
                     optim=optim, seed=i, select_metric="val_wer") for i in range(runs)]


def prepare(root: Path) -> None:
    """The toy data, its manifest and cost matrix under ``root`` (before the clock starts)."""
    from bench.trials import toy_project

    toy_project(root)


def drive(root: Path, runs: int, concurrency: int) -> None:
    """The driver: a stage that trains :func:`toy_jobs` as one sweep on the cluster in RAY_ADDRESS."""
    from pipeline.cluster.distributed import run_jobs
    from pipeline.config import RayConfig
    from pipeline.stage import run_stage

    def main(config) -> str:
        ray_config = RayConfig(use_gpu=False, storage_path=STORAGE, max_concurrent_trials=concurrency)
        stores = run_jobs(toy_jobs(runs), ray_config, root, experiment=STAGE)
        return f"{len(stores)} runs"

    os.chdir(root)
    run_stage(STAGE, main, params=str(REPO / "params.yaml"))


def rss_mib(pid: int) -> float:
    """``pid``'s resident memory in MiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclasses.dataclass
class LoadFigures:
    runs: int
    concurrency: int
    cluster_cpus: int
    returncode: int
    wall_s: float
    peak_rss_mib: float
    rss_at_quarters_mib: list[float]  # when 25/50/75/100% of the runs had finished
    finished_lines: list[int]  # the k of each "[k/N]" console line, in order
    closing_line: str | None  # the stage's own last line ("load: N runs (... s)")
    other_lines: list[str]  # every other console line
    lost: list[str]  # runs without a finished outcome
    trained: dict[str, int]  # run -> epoch lines its workers printed (1: trained once)
    extra_folders: list[str]  # run folders of no job of the sweep
    bad_histories: list[str]  # outcomes that are not one epoch trained without a restart

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_at_quarters_mib[-1] - self.rss_at_quarters_mib[0]

    @property
    def duplicated(self) -> list[str]:
        return sorted(name for name, count in self.trained.items() if count != 1)

    def table(self) -> str:
        quarters = " / ".join(f"{value:.0f}" for value in self.rss_at_quarters_mib)
        rows = [
            ("runs, at most this many at once", f"{self.runs}, {self.concurrency} (cluster: {self.cluster_cpus} CPUs)"),
            ("driver exit status", str(self.returncode)),
            ("wall time", f"{self.wall_s:.1f} s ({self.runs / self.wall_s:.2f} runs/s)"),
            ("driver peak RSS", f"{self.peak_rss_mib:.0f} MiB"),
            ("driver RSS at 25/50/75/100% runs", f"{quarters} MiB (growth {self.rss_growth_mib:+.1f} MiB)"),
            ("runs lost / trained != once", f"{len(self.lost)} / {len(self.duplicated)}"),
            ("stray run folders / odd histories", f"{len(self.extra_folders)} / {len(self.bad_histories)}"),
            ("console: finished-run lines", f"{len(self.finished_lines)} (distinct k: {len(set(self.finished_lines))})"),
            ("console: the stage's closing line", "yes" if self.closing_line else "MISSING"),
            ("console: other lines", str(len(self.other_lines))),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def measure(root: Path, env: dict[str, str], runs: int, concurrency: int, cluster_cpus: int,
            worker_logs: Callable[[], list[str]]) -> LoadFigures:
    """Run the driver (:func:`drive`) once under ``env`` (which names the cluster) and measure it.
    ``worker_logs`` returns the epoch lines every node's Ray workers printed (so far)."""
    from pipeline.runs.checkpoints import RunStore
    from pipeline.runs.jobs import run_name

    before = Counter(worker_logs())
    env = {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "COLUMNS": "500"}
    started = time.perf_counter()
    driver = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--drive", str(root), "--runs",
                               str(runs), "--concurrency", str(concurrency)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(driver.pid))
            done.wait(RSS_PERIOD_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    marks = [math.ceil(runs * q) for q in QUARTERS]
    at_quarters: dict[int, float] = {}
    finished: list[int] = []
    other: list[str] = []
    closing: str | None = None
    assert driver.stdout is not None
    for line in driver.stdout:
        line = line.rstrip("\n")
        matched = FINISHED_LINE.match(line)
        if matched and int(matched[2]) == runs:
            finished.append(int(matched[1]))
            for mark in marks:  # by the count the line says, not by lines (which may repeat)
                if mark not in at_quarters and int(matched[1]) >= mark:
                    at_quarters[mark] = rss_mib(driver.pid)
        elif closing is None and re.match(rf"{STAGE}: {runs} runs \(", line):
            closing = line
        elif line.strip():
            other.append(line)
    returncode = driver.wait()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()

    jobs = toy_jobs(runs)
    storage = root / STORAGE
    names = {run_name(job) for job in jobs}
    lost = sorted(run_name(job) for job in jobs if not RunStore(str(storage / run_name(job))).finished())
    bad = []
    for job in jobs:
        history = storage / run_name(job) / "outcome" / "history.json"
        if history.is_file():
            rows = json.loads(history.read_text())["history"]
            if [row.get("resumes", 0) for row in rows] != [0]:
                bad.append(run_name(job))
    printed = Counter(worker_logs()) - before
    trained = Counter()
    for line, count in printed.items():
        trained[line.split("]", 1)[0].rsplit("[", 1)[1]] += count
    extra = sorted(p.name for p in storage.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name not in names) if storage.is_dir() else []
    return LoadFigures(runs, concurrency, cluster_cpus, returncode, wall, max(samples, default=0.0),
                       [at_quarters.get(mark, 0.0) for mark in marks], finished, closing, other, lost,
                       {job.name: trained.get(job.name, 0) for job in jobs}, extra, bad)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="ray.max_concurrent_trials")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)  # the driver process itself
    args = parser.parse_args(argv)
    if args.drive:
        drive(args.drive, args.runs, args.concurrency)
        return
    from tests.two_nodes import RayNodes, worker_log_lines

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        prepare(root)
        nodes = RayNodes("load")
        try:
            nodes.start()
            nodes.add_node("worker")
            figures = measure(root, nodes.env, args.runs, args.concurrency, len(nodes.nodes),
                              lambda: [line for node in nodes.nodes for line in worker_log_lines(node, EPOCH_LINE)])
        finally:
            nodes.stop()
    print(figures.table())
    for line in figures.other_lines:
        print(f"  console: {line}")
    record = {**dataclasses.asdict(figures), "rss_growth_mib": figures.rss_growth_mib,
              "duplicated": figures.duplicated, "runs_per_s": figures.runs / figures.wall_s,
              "command": " ".join(["python bench/load_sweep.py", *(sys.argv[1:] if argv is None else argv)])}
    record["finished_lines"] = {"count": len(figures.finished_lines),
                                "numbered_1_to_n": sorted(figures.finished_lines) == list(range(1, figures.runs + 1))}
    record["trained"] = dict(Counter(record["trained"].values()))  # times trained -> runs
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
