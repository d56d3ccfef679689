"""Benchmark: Algorithm 1 and one stochastic CSADA step on a 28x28 CNN, against one ERM step.

Real images: scikit-learn's 8x8 digits upsampled to 28x28 (offline). The CNN is first
trained for a few epochs so that most samples are classified correctly and the attack
actually runs (misclassified samples are skipped at no cost, which would flatter it).

The CPU measurement keeps freed memory in the C heap (glibc ``mallopt``) unless
``--allocator system``: with glibc's defaults every large activation tensor is a fresh
``mmap`` whose pages fault in on first touch, which made the ERM step alone vary from 26 to
49 ms between runs here and the ratio with it. Both steps run under the same setting.

Prints, from one run on one machine:
  * attack throughput (samples per second) and forward/backward passes per attack step;
  * the time of one stochastic CSADA training step (K = 10) divided by one ERM step.
    Goal on the 2-core development CPU: at most 2.0.

    python bench/attack.py [--batch 128] [--steps 10] [--repeats 60] [--step-rule steepest]
                           [--allocator heap|system] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch
import torch.nn.functional as F

from pipeline.datasets import load_digits
from pipeline.method.attacks import targeted_attack
from pipeline.method.costs import CostMatrix
from pipeline.method.csada import CSADA
from pipeline.method.losses import ERM
from pipeline.models.networks import SmallCNN
from pipeline.runs.train import TensorBatches, train_epoch


def keep_freed_memory_in_heap() -> bool:
    """glibc only: serve tensors up to 256 MiB from the heap and never trim it back to the OS.

    Returns whether the setting took effect (False on other C libraries).
    """
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="K, ascent steps per attack")
    parser.add_argument("--step-size", type=float, default=0.05)
    parser.add_argument("--eps", type=float, default=10.0)
    parser.add_argument("--step-rule", default="steepest", choices=["gradient", "steepest"])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup-epochs", type=int, default=8)
    parser.add_argument("--allocator", default="heap", choices=["heap", "system"],
                        help="heap: keep freed memory in the C heap (glibc); system: the C library's defaults")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    allocator = "system defaults"
    if args.allocator == "heap":
        kept = keep_freed_memory_in_heap()
        allocator = "freed memory kept in the heap" if kept else "system defaults (mallopt unavailable)"
    torch.manual_seed(0)

    data = load_digits(seed=0)
    train = data.split("train")
    x_all = F.interpolate(train.x, size=(28, 28), mode="bilinear", align_corners=False).to(device)
    y_all = train.y.to(device)
    model = SmallCNN(in_channels=1, num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = TensorBatches(x_all, y_all, args.batch, seed=0)
    for _ in range(args.warmup_epochs):
        train_epoch(model, ERM(), batches, optimizer)
    model.eval()
    with torch.no_grad():
        train_accuracy = float((model(x_all).argmax(1) == y_all).float().mean())
    model.train()

    x, y = x_all[: args.batch], y_all[: args.batch]
    target = (y + 1 + torch.arange(len(y), device=device) % 9) % 10  # every z != y, spread evenly
    attack_kwargs = dict(eps=args.eps, steps=args.steps, step_size=args.step_size, step_rule=args.step_rule)

    result = targeted_attack(model, x, y, target, **attack_kwargs)
    attack_times = timed(lambda: targeted_attack(model, x, y, target, **attack_kwargs), args.repeats, device)
    unfolded_times = timed(
        lambda: targeted_attack(model, x, y, target, fold_batchnorm=False, **attack_kwargs), args.repeats, device
    )

    cost = CostMatrix.pareto(data.classes, seed=0).as_tensor(device=device)
    csada = CSADA(cost=cost, adv_weight=2.0, temperature=3.0, steps=args.steps, pairs="stochastic",
                  eps=args.eps, step_size=args.step_size, step_rule=args.step_rule, seed=0)
    erm = ERM()

    def step(method):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = method.loss(model, x, y)
        loss.backward()
        optimizer.step()

    # Interleave the two so drift in machine load hits both alike.
    for _ in range(3):
        step(erm), step(csada)
    erm_times, csada_times = [], []
    for _ in range(args.repeats):
        erm_times += timed(lambda: step(erm), 1, device)
        csada_times += timed(lambda: step(csada), 1, device)
    erm_median, csada_median = statistics.median(erm_times), statistics.median(csada_times)
    # Each CSADA step is paired with the ERM step just before it: the spread of these ratios
    # shows how much the machine drifted during the run.
    paired = sorted(c / e for c, e in zip(csada_times, erm_times))
    quartiles = statistics.quantiles(paired, n=4)
    attack_median = statistics.median(attack_times)

    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, K {args.steps}")
    print(f"C allocator: {allocator}")
    print(f"model train accuracy before timing: {train_accuracy:.3f}")
    print(f"attack outcomes (one batch, one target per sample): {result.counts()}")
    print(f"attack: {attack_median * 1e3:.1f} ms per batch, {len(x) / attack_median:,.0f} samples/s "
          f"({statistics.median(unfolded_times) / attack_median:.2f}x the speed without BatchNorm folding)")
    print(
        f"passes per attack step: {result.n_forward / args.steps:.2f} forward, "
        f"{result.n_backward / args.steps:.2f} backward "
        f"({result.n_forward} / {result.n_backward} in all, K = {args.steps})"
    )
    print(f"ERM step: {erm_median * 1e3:.1f} ms; stochastic CSADA step: {csada_median * 1e3:.1f} ms")
    print(f"CSADA / ERM step time ratio: {csada_median / erm_median:.2f} (goal <= 2.0); "
          f"paired step ratios: median {statistics.median(paired):.2f}, "
          f"quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}")


if __name__ == "__main__":
    main()
