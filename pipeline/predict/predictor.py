"""An exported model as a predictor: images in; per image the decision, the calibrated class
probabilities, the expected cost of every possible decision, and whether it abstained.

:func:`load_predictor` reads a model folder (:mod:`pipeline.predict.spec`) and rebuilds its
network as training built it (:func:`pipeline.models.registry.build_model`, then the method's
``prepare_model``). :meth:`Predictor.predict` standardises raw inputs with the training split's
mean and std, runs the network in batches, and applies the exported decision rule with the
same code the evaluate stage uses (:func:`pipeline.method.decision.decide`), so its decisions are
the evaluate stage's on the same inputs. The probabilities are softmax(logits / T) with the
model's validation-fitted temperature T; the expected cost of deciding z is
sum_y p(y | x) c(y, z); a case is abstained on when the expected cost of its decision is at
least the exported threshold (:mod:`pipeline.predict.conformal`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.errors import UserError
from pipeline.method.decision import decide, expected_costs
from pipeline.method.losses import MethodContext
from pipeline.method.registry import build_method
from pipeline.models.registry import build_model
from pipeline.predict.conformal import decided
from pipeline.predict.inputs import decode_image, raw_values
from pipeline.predict.spec import ExportedModel, ModelFolderError, read_model_folder

BATCH_SIZE = 256  # the evaluate stage's: the same batches give the same numbers


@dataclass(frozen=True, eq=False)
class Predictions:
    """Per case: ``decisions`` (class indices), ``probabilities`` [N, K] (calibrated),
    ``expected_costs`` [N, K] (of deciding each class) and ``abstained`` (bool)."""

    classes: tuple[str, ...]
    decisions: np.ndarray
    probabilities: np.ndarray
    expected_costs: np.ndarray
    abstained: np.ndarray

    def __len__(self) -> int:
        return int(self.decisions.shape[0])

    @property
    def decided_classes(self) -> list[str]:
        return [self.classes[i] for i in self.decisions]

    @property
    def decision_costs(self) -> np.ndarray:
        """The expected cost of each case's decision: what abstention compares with its threshold."""
        return self.expected_costs[np.arange(len(self)), self.decisions]

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per case: decision, probabilities and expected costs by class name, abstained."""
        return [{"decision": self.classes[int(z)], "abstained": bool(a),
                 "probabilities": dict(zip(self.classes, map(float, p))),
                 "expected_costs": dict(zip(self.classes, map(float, c)))}
                for z, a, p, c in zip(self.decisions, self.abstained, self.probabilities, self.expected_costs)]


def build_network(spec: ExportedModel, state: dict[str, Tensor], where: str | os.PathLike[str]) -> nn.Module:
    """The network the weights were trained in, with them loaded, in eval mode."""
    try:
        model = build_model(spec.model, num_classes=len(spec.classes), input_shape=spec.input_shape,
                            **spec.model_options)
        method = build_method(spec.method, spec.method_options, MethodContext(cost=spec.cost.as_tensor()))
        model = method.prepare_model(model)  # e.g. SOSR's cost-regression head
    except UserError as error:
        raise ModelFolderError(f"{where}: the architecture cannot be built ({error})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelFolderError(f"{where}: the weights do not fit the architecture {spec.model} "
                               f"{dict(spec.model_options)} ({first})") from None
    return model.eval()


class Predictor:
    """A loaded model folder; :meth:`predict` scores images (module doc)."""

    def __init__(self, spec: ExportedModel, network: nn.Module, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        shape = (-1, 1, 1) if spec.is_image else (-1,)
        norm = spec.normalization
        self._mean = None if norm is None else np.asarray(norm.mean, dtype=np.float64).reshape(shape)
        self._std = None if norm is None else np.asarray(norm.std, dtype=np.float64).reshape(shape)
        self._cost = spec.cost.as_tensor()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def raw_range(self) -> tuple[float, float] | None:
        return None if self.spec.normalization is None else self.spec.normalization.raw_range

    def standardise(self, raw: np.ndarray) -> Tensor:
        """Raw values (N, *shape) as the model's float32 inputs: (raw - mean) / std, in float64
        and then rounded once, as the data sets standardise."""
        values = raw if self._mean is None else (raw - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

    def raw(self, images: Any, what: str = "the images") -> np.ndarray:
        """Images as raw values (N, *shape): an array or tensor, or a list of image file paths."""
        if isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, os.PathLike)) for p in images):
            images = np.stack([decode_image(p, self.spec.input_shape, str(p)) for p in images])
        return raw_values(images, self.spec.input_shape, self.raw_range, what)

    @torch.no_grad()
    def logits(self, batches: Iterable[Tensor]) -> Tensor:
        """The network's outputs for batches of standardised inputs, in order, on the CPU."""
        outputs = [self.network(x.to(self.device)).float().cpu() for x in batches]
        return torch.cat(outputs) if outputs else torch.zeros((0, len(self.classes)))

    def decisions(self, logits: Tensor) -> Predictions:
        """The exported rule applied to the network's outputs: what the evaluate stage computes."""
        decisions = decide(self.spec.decision_rule, logits, self._cost, self.spec.temperature)
        # The calibrated rule's own computation (decide): softmax(logits / T) in float32 or wider.
        scaled = (logits / self.spec.temperature).to(torch.promote_types(logits.dtype, torch.float32))
        probabilities = torch.softmax(scaled, dim=1)
        costs = expected_costs(probabilities, self._cost).numpy()
        chosen = decisions.numpy().astype(np.int64)
        return Predictions(self.classes, chosen, probabilities.numpy(), costs,
                           ~decided(costs[np.arange(len(chosen)), chosen], self.spec.threshold))

    def score(self, batches: Iterable[Tensor]) -> Predictions:
        """Batches of standardised inputs to predictions (the rule applied to all outputs at once)."""
        return self.decisions(self.logits(batches))

    def predict(self, images: Any, *, batch_size: int = BATCH_SIZE) -> Predictions:
        """Decisions for images (N, H, W), (N, C, H, W) or (N, H, W, C), uint8 or float in [0, 1]
        (or feature vectors (N, F)), as an array or tensor, or for a list of image file paths."""
        x = self.standardise(self.raw(images))
        return self.score(x.split(batch_size))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_predictor(path: str | os.PathLike[str], device: str | torch.device | None = None) -> Predictor:
    """The exported model in folder ``path`` (``models/<dataset>/recommended``) as a :class:`Predictor`,
    on ``device`` (default: the GPU when there is one, as the evaluate stage scores)."""
    spec, state = read_model_folder(path)
    return Predictor(spec, build_network(spec, state, Path(path)), device or default_device())
