"""Temperature scaling: one scalar T per model, fitted on validation, so that softmax(logits / T)
are calibrated probabilities for the expected-cost decision rule.

Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017): a network trained to zero
training loss is over-confident, and the Bayes rule argmin_z sum_y p(y | x) c(y, z) needs
probabilities, not just a ranking. Dividing the logits by T > 0 never changes the argmax, so the
cost-blind rule is unaffected; only the expected-cost rule sees T.

The fit minimises the validation negative log-likelihood over log T: a grid over [1/20, 20]
followed by golden-section refinement in the best grid cell. The NLL of temperature-scaled
logits is not always unimodal in log T on small validation sets; the grid makes the fit find the
global minimum of the grid's resolution, and every step is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import UserError

T_MIN, T_MAX = 0.05, 20.0
GRID_POINTS = 61
REFINE_STEPS = 30
_GOLDEN = (math.sqrt(5) - 1) / 2


class CalibrationError(UserError):
    """Logits and labels a temperature cannot be fitted on."""


def temperature_nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits / temperature, labels))


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T in [T_MIN, T_MAX] minimising the validation NLL of softmax(logits / T)."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise CalibrationError(f"logits must be a 2-D floating-point tensor [N, K], got {getattr(logits, 'shape', logits)!r}")
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise CalibrationError(f"labels must be a non-empty 1-D tensor of {len(logits)} class indices")
    if not torch.isfinite(logits).all():
        raise CalibrationError("logits hold NaN or infinite values; the model diverged")
    logits = logits.detach().to(torch.float64)
    labels = labels.detach().long()

    def nll(log_t: float) -> float:
        return temperature_nll(logits, labels, math.exp(log_t))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    grid = torch.linspace(lo, hi, GRID_POINTS, dtype=torch.float64).tolist()
    values = [nll(g) for g in grid]
    best = min(range(GRID_POINTS), key=lambda i: (values[i], abs(grid[i])))  # ties: closest to T = 1
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, GRID_POINTS - 1)]
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(REFINE_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(d)
    refined = (a + b) / 2
    return math.exp(refined if nll(refined) <= values[best] else grid[best])
