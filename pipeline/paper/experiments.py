"""The paper's experiments (section 1.1 and section 5): their runs and the numbers drawn from them.

* Two baselines of the same model (section 1.1): ``fit`` stops after the first epoch at 100%
  training accuracy, ``zero_loss`` trains until its training loss is below ``paper.baselines.
  zero_loss`` (the paper's baselines reach 1e-3). Both keep their last epoch.
* Pair sweep (Figures 1b, 3, 4): for each critical pair (y', z'), cost 1 on that pair only, every
  method fine-tunes each baseline; the number is the pair's test error rate.
* Lambda sweep (Figure 5) and convergence (Figure 6): CSADA on the data set's cost matrix from
  the zero-loss baseline.

Every fine-tuning run here keeps its last epoch (the paper's protocol), not its best one on
validation as the product's runs do.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pipeline.config import MethodConfig
from pipeline.datasets.prepare import load_prepared
from pipeline.method.costfiles import load_costs, save_costs
from pipeline.method.costs import CostMatrix
from pipeline.method.metrics import summarize
from pipeline.runs.checkpoints import HISTORY_FILE, RunStore
from pipeline.runs.jobs import TrainJob
from pipeline.runs.plan import finetune_inputs_digest, finetune_job
from pipeline.runs.train import predict_logits, trained_model

BASELINES = ("fit", "zero_loss")  # section 1.1's two starting points
MAIN_BASELINE = "zero_loss"  # the paper's: trained to a training loss below 1e-3


def paper_models(dataset: str) -> Path:
    """Where the experiments keep their models (the baselines; fine-tuning runs stay in Ray's storage)."""
    return Path("models") / dataset / "paper"


@dataclass(frozen=True)
class CostedTest:
    """What the experiments on the data set's cost matrix share: the zero-loss baseline, the data,
    the costs, the test split (loader and labels) and the baseline's test outputs."""

    baseline_dir: Path
    data: Any  # ClassificationData
    cost: CostMatrix
    loader: DataLoader
    labels: Tensor
    baseline_logits: Tensor
    costs: Tensor  # the cost matrix as a tensor, c(y, z) in row y

    def wer(self, logits: Tensor) -> float:
        """Test WER of outputs under argmax."""
        return float(self.costs[self.labels, logits.argmax(1)].mean())


def costed_test(dataset: str, raw: Path, manifest: Path, label_column: str, cost_csv: Path) -> CostedTest:
    baseline_dir = paper_models(dataset) / "baselines" / MAIN_BASELINE
    data = load_prepared(dataset, raw, manifest, augment=False, label_column=label_column)
    cost = load_costs(cost_csv)
    cost.check_classes(data.classes)
    loader = DataLoader(data.split("test"), batch_size=256, shuffle=False)
    logits = predict_logits(trained_model(baseline_dir, data, None), loader)[0]
    return CostedTest(baseline_dir=baseline_dir, data=data, cost=cost, loader=loader, labels=data.split("test").y,
                      baseline_logits=logits, costs=cost.as_tensor())


def run_outcomes(stores: Sequence[RunStore], costs: Sequence[Tensor | None], data: Any,
                 loader: Any) -> list[tuple[Tensor, dict[str, Any]]]:
    """Each finished run's outputs over ``loader`` and its history.json, read from its store (a
    run's method is rebuilt with its cost matrix, as the run built it)."""
    outcomes = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (store, cost) in enumerate(zip(stores, costs)):
            folder = Path(scratch) / str(i)
            store.copy_outcome(folder)
            logits, _ = predict_logits(trained_model(folder, data, cost), loader)
            outcomes.append((logits, json.loads((folder / HISTORY_FILE).read_text())))
    return outcomes


def baseline_fit(name: str, last_epoch: dict[str, float], zero_loss: float) -> dict[str, Any]:
    """How far a baseline of section 1.1 got: epochs, training accuracy and loss at its last
    epoch, and whether it met its criterion (``fit``: accuracy 1; ``zero_loss``: loss below
    ``zero_loss``) rather than stopping at ``paper.baselines.max_epochs``."""
    accuracy, loss = last_epoch["fit_accuracy"], last_epoch["fit_loss"]
    return {"epochs": int(last_epoch["epoch"]) + 1, "train_accuracy": accuracy, "train_loss": loss,
            "reached": bool(accuracy >= 1.0 if name == "fit" else loss < zero_loss)}


def experiment_job(baseline: TrainJob, baseline_dir: Path, method: MethodConfig, cost_csv: Path, name: str,
                   seed: int, replication: int, track_test: bool = False) -> TrainJob:
    """A fine-tuning run of ``method`` from a baseline that keeps its last epoch."""
    job = finetune_job(baseline, method, cost_csv=cost_csv, baseline_dir=baseline_dir, name=name, seed=seed,
                       replication=replication,
                       digest=finetune_inputs_digest(baseline, cost_csv, baseline_dir))
    return dataclasses.replace(job, select_metric="last", track_test=track_test)


def pair_costs(pairs: list[tuple[int, int]], classes: list[str], folder: Path) -> dict[tuple[int, int], Path]:
    """Each pair's cost matrix as a file: an input of its runs (hashed into their keys), not a result."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for pair in pairs:
        files[pair] = folder / f"{pair[0]}-{pair[1]}.csv"
        save_costs(CostMatrix(classes, single_pair_matrix(len(classes), pair)), files[pair])
    return files


def pair_run_name(dataset: str, variant: str, base: str, pair: tuple[int, int], method: str, replication: int) -> str:
    """A run on one costly pair; the pair sweep and the ablation name their common runs alike, so
    each is trained once and reused by the other."""
    return f"{dataset}-pairs-{variant}-{base}-{pair[0]}-{pair[1]}-{method}-r{replication}"


def confused_pairs(predictions: Tensor, labels: Tensor, num_classes: int, top: int) -> list[tuple[int, int]]:
    """The ``top`` ordered pairs (true, predicted) with the most errors, most first (ties: in
    class order); ``top`` 0 gives every ordered pair in class order."""
    pairs = [(y, z) for y in range(num_classes) for z in range(num_classes) if y != z]
    if top == 0:
        return pairs
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    counts.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    return sorted(pairs, key=lambda pair: -int(counts[pair]))[:top]


def pair_error_rates(predictions: Tensor, labels: Tensor, num_classes: int) -> np.ndarray:
    """K x K: entry (y, z) is the share of class-y samples predicted z (Figure 1a's matrix;
    the diagonal is set to NaN). A class without samples gives a NaN row."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((labels, predictions), torch.ones_like(labels, dtype=torch.float64), accumulate=True)
    totals = counts.sum(1, keepdim=True)
    rates = (counts / totals).numpy()
    np.fill_diagonal(rates, np.nan)
    return rates


def single_pair_matrix(num_classes: int, pair: tuple[int, int]) -> np.ndarray:
    """Costs of section 5.1: 1 for predicting y' as z', 0 for everything else."""
    matrix = np.zeros((num_classes, num_classes))
    matrix[pair] = 1.0
    return matrix


BOOTSTRAP_RESAMPLES = 2000


def removed_share(before: Tensor, after: Sequence[Tensor], seed: int = 0) -> dict[str, Any]:
    """Share of the baseline's critical test errors a method removed: 1 - mean over replications
    of the critical errors after / the baseline's. ``before`` and each of ``after`` count the
    critical errors per test sample (0 or 1 per swept pair it is charged to).

    The 90% interval is a percentile bootstrap over the test samples (the source of the noise a
    reader cares about: another test set), so it never exceeds 100% and is zero-width only when
    every resample gives the same share (said in ``zero_width``). Negative when the method made
    more critical errors than the baseline."""
    before = before.to(torch.float64)
    after_mean = torch.stack([a.to(torch.float64) for a in after]).mean(0)
    total = float(before.sum())
    if total == 0:
        return {"mean": None, "lower": None, "upper": None, "n": len(after), "baseline_errors": 0}
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(before), (BOOTSTRAP_RESAMPLES, len(before)), generator=generator)
    resampled_before = before[index].sum(1)
    kept = resampled_before > 0
    shares = 1 - after_mean[index].sum(1)[kept] / resampled_before[kept]
    lower, upper = (float(q) for q in torch.quantile(shares, torch.tensor([0.05, 0.95], dtype=torch.float64)))
    return {"mean": 1 - float(after_mean.sum()) / total, "lower": lower, "upper": upper, "n": len(after),
            "baseline_errors": total, "zero_width": lower == upper,
            "interval": f"90% percentile bootstrap over test samples, {BOOTSTRAP_RESAMPLES} resamples"}


def critical_counts(predictions: Tensor, labels: Tensor, pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Per test sample, how many of ``pairs`` (true, predicted) its prediction is an error of."""
    counts = torch.zeros(len(labels), dtype=torch.long)
    for true, predicted in pairs:
        counts += ((labels == true) & (predictions == predicted)).long()
    return counts


ATTACK_OUTCOMES = ("reached_z", "rejected", "skipped")
_ATTACK_COUNTS = {"reached_z": "train_n_succeeded", "rejected": "train_n_rejected", "skipped": "train_n_skipped"}


def attack_epochs(history: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Per epoch of a CSADA run, what Algorithm 1 did with the samples it was given: the share that
    reached the target class z, that a step would have taken to a third class (rejected) and that
    it skipped (misclassified to begin with); empty for a run without attacks."""
    rows = []
    for entry in history:
        attacked = entry.get("train_n_attacked", 0.0)
        if attacked > 0 and "train_n_succeeded" in entry:
            rows.append({"epoch": int(entry["epoch"]) + 1, "attacked": attacked,
                         **{name: entry[key] / attacked for name, key in _ATTACK_COUNTS.items()}})
    return rows


def attack_shares(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """The shares of :func:`attack_epochs` over the whole run (all epochs' samples pooled)."""
    attacked = sum(entry.get("train_n_attacked", 0.0) for entry in history)
    if attacked == 0 or not any("train_n_succeeded" in entry for entry in history):
        return {}
    return {name: sum(entry.get(key, 0.0) for entry in history) / attacked for name, key in _ATTACK_COUNTS.items()}


def curve_summary(values: np.ndarray) -> dict[str, list[float]]:
    """Per column of ``values`` (replications x points): mean and 90% prediction interval."""
    summaries = [summarize(values[:, j]) for j in range(values.shape[1])]
    return {"mean": [s.mean for s in summaries], "lower": [s.lower for s in summaries],
            "upper": [s.upper for s in summaries], "n": int(values.shape[0])}
