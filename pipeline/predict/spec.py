"""The exported model folder: ``model.json`` (everything needed to use the weights) and
``model.pt`` (the weights), written by the export stage and read by :func:`read_model_folder`.

``model.pt`` is a plain state dict (tensors only, loadable with ``torch.load(...,
weights_only=True)``); ``model.json`` records its sha256, so a damaged or swapped file fails by
name before any network is built. ``model.json`` holds, with sorted keys:

* ``format`` (1), ``dataset`` and ``classes`` (the class names, in the order of the network's
  outputs and of the cost matrix's rows and columns);
* ``architecture``: ``model`` and ``model_options`` (:func:`pipeline.models.registry.build_model`),
  ``method`` and ``method_options`` (the training method may change the output layer: SOSR's cost
  regression head, :func:`pipeline.method.registry.build_method`);
* ``input``: ``shape`` of one input ((C, H, W), or (F,) for feature vectors), ``channels``,
  ``height``, ``width`` for images, and ``normalization`` (``mean``, ``std`` per channel or feature,
  ``raw_range`` of raw values, (0, 1) for pixels) or null when inputs are used as they are;
* ``decision``: ``rule`` (argmax | expected_cost | calibrated_expected_cost,
  :mod:`pipeline.method.decision`), ``temperature`` (fitted on validation,
  :mod:`pipeline.method.calibration`; the probabilities reported are softmax(logits / T)),
  ``cost_matrix`` (``classes``, ``costs``: row = true class, column = decided class) and
  ``abstention`` (``max_cost``, the promise; ``threshold``: abstain when the expected cost of the
  decision is at least this, null to never abstain; how it was calibrated);
* ``method``: the training method's name and settings (its options, optimisation and seed);
* ``selection``: the recommendation it comes from and the validation and test figures it was
  chosen on, and which replication this is and why;
* ``weights``: ``file`` and ``sha256``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.fileio import atomic_write_bytes, fresh_dir, replace_dir
from pipeline.method.costfiles import from_mapping
from pipeline.method.costs import CostMatrix, CostMatrixError
from pipeline.method.decision import DECISION_RULES

FORMAT = 1
MODEL_JSON = "model.json"
WEIGHTS_FILE = "model.pt"


class ModelFolderError(UserError):
    """A model folder that cannot be used: missing, damaged, or not what the export writes."""


@dataclass(frozen=True)
class Normalization:
    """``(raw - mean) / std`` along the first axis of one input; ``raw_range`` bounds raw values."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    raw_range: tuple[float, float] | None


@dataclass(frozen=True)
class ExportedModel:
    """What ``model.json`` says (module doc), checked."""

    dataset: str
    classes: tuple[str, ...]
    model: str
    model_options: Mapping[str, Any]
    method: str
    method_options: Mapping[str, Any]
    input_shape: tuple[int, ...]
    normalization: Normalization | None
    decision_rule: str
    temperature: float
    cost: CostMatrix
    max_cost: float
    threshold: float | None  # abstain when the decision's expected cost >= threshold; None: never
    calibration: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)  # the method's settings, as trained
    selection: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def to_json(self, weights_sha256: str) -> dict[str, Any]:
        shape = list(self.input_shape)
        geometry = dict(zip(("channels", "height", "width"), shape)) if self.is_image else {"features": shape[0]}
        norm = None if self.normalization is None else {
            "mean": list(self.normalization.mean), "std": list(self.normalization.std),
            "raw_range": None if self.normalization.raw_range is None else list(self.normalization.raw_range)}
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "architecture": {"model": self.model, "model_options": dict(self.model_options),
                             "method": self.method, "method_options": dict(self.method_options)},
            "input": {"shape": shape, **geometry, "normalization": norm},
            "decision": {"rule": self.decision_rule, "temperature": self.temperature,
                         "cost_matrix": {"classes": self.cost.classes, "costs": self.cost.values.tolist()},
                         "abstention": {"max_cost": self.max_cost, "threshold": self.threshold,
                                        **dict(self.calibration)}},
            "method": {"name": self.method, **dict(self.training)},
            "selection": dict(self.selection),
            "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256},
        }


def _get(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise ModelFolderError(f"{where} lacks {key!r}; re-export the model (dvc repro export)")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ModelFolderError(f"{where}: {key} = {value!r} is not what the export writes; re-export the model")
    return value


def _normalization(value: Any, where: str) -> Normalization | None:
    if value is None:
        return None
    mean, std = _get(value, "mean", list, where), _get(value, "std", list, where)
    raw = _get(value, "raw_range", (list, type(None)), where)
    numbers = [*mean, *std, *(raw or [])]
    if (len(mean) != len(std) or not mean or (raw is not None and len(raw) != 2)
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or min(std) <= 0):
        raise ModelFolderError(f"{where}: input.normalization {value!r} needs as many means as stds > 0 "
                               "and raw_range [low, high] or null")
    return Normalization(tuple(map(float, mean)), tuple(map(float, std)),
                         None if raw is None else (float(raw[0]), float(raw[1])))


def parse_model_json(data: Any, where: str) -> tuple[ExportedModel, str]:
    """``model.json``'s content as an :class:`ExportedModel` and the weights' sha256."""
    if _get(data, "format", int, where) != FORMAT:
        raise ModelFolderError(f"{where}: format {data['format']!r} is not {FORMAT}, the one this code reads")
    architecture, inputs = _get(data, "architecture", dict, where), _get(data, "input", dict, where)
    decision = _get(data, "decision", dict, where)
    abstention = _get(decision, "abstention", dict, where)
    classes = tuple(_get(data, "classes", list, where))
    shape = tuple(_get(inputs, "shape", list, where))
    if len(shape) not in (1, 3) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ModelFolderError(f"{where}: input.shape {list(shape)} must be [C, H, W] or [F]")
    try:
        cost = from_mapping(_get(decision, "cost_matrix", dict, where), f"{where}: decision.cost_matrix")
        cost.check_classes(classes)
    except CostMatrixError as error:
        raise ModelFolderError(str(error)) from None
    rule = _get(decision, "rule", str, where)
    if rule not in DECISION_RULES:
        raise ModelFolderError(f"{where}: decision.rule {rule!r} is unknown; known: {', '.join(sorted(DECISION_RULES))}")
    temperature = float(_get(decision, "temperature", (int, float), where))
    threshold = _get(abstention, "threshold", (int, float, type(None)), where)
    if not (math.isfinite(temperature) and temperature > 0) or (threshold is not None and not math.isfinite(threshold)):
        raise ModelFolderError(f"{where}: decision.temperature must be > 0 and abstention.threshold finite or null")
    method = dict(_get(data, "method", dict, where))
    method.pop("name", None)
    spec = ExportedModel(
        dataset=_get(data, "dataset", str, where), classes=classes,
        model=_get(architecture, "model", str, where), model_options=_get(architecture, "model_options", dict, where),
        method=_get(architecture, "method", str, where),
        method_options=_get(architecture, "method_options", dict, where),
        input_shape=shape, normalization=_normalization(inputs.get("normalization"), f"{where}: input.normalization"),
        decision_rule=rule, temperature=temperature, cost=cost,
        max_cost=float(_get(abstention, "max_cost", (int, float), where)),
        threshold=None if threshold is None else float(threshold),
        calibration={k: v for k, v in abstention.items() if k not in ("max_cost", "threshold")},
        training=method, selection=dict(data.get("selection") or {}))
    return spec, _get(_get(data, "weights", dict, where), "sha256", str, where)


def weights_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def json_bytes(data: Any) -> bytes:
    """Deterministic JSON: sorted keys, two-space indent, no NaN, a trailing newline."""
    return (json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_model_folder(folder: str | os.PathLike[str], spec: ExportedModel,
                       state: Mapping[str, torch.Tensor]) -> None:
    """``model.pt`` and ``model.json`` in ``folder``, replacing it whole (a crash leaves the old one)."""
    folder = Path(folder)
    weights = weights_bytes(state)
    staging = Path(fresh_dir(folder.with_name(f".{folder.name}.writing")))
    atomic_write_bytes(staging / WEIGHTS_FILE, weights)
    atomic_write_bytes(staging / MODEL_JSON, json_bytes(spec.to_json(hashlib.sha256(weights).hexdigest())))
    replace_dir(staging, folder)


def read_model_folder(folder: str | os.PathLike[str]) -> tuple[ExportedModel, dict[str, torch.Tensor]]:
    """The checked specification and the weights (a state dict) of an exported model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist; it is what the export stage writes "
                               "(models/<dataset>/recommended, or `dvc artifacts get`)")
    where = folder / MODEL_JSON
    if not where.is_file():
        raise ModelFolderError(f"{folder} holds no {MODEL_JSON}; it is not an exported model folder "
                               "(models/<dataset>/recommended): re-export it with dvc repro export")
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{where} is not valid JSON ({error}); re-export the model") from None
    spec, sha256 = parse_model_json(data, str(where))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFolderError(f"{folder} holds no {WEIGHTS_FILE}, the weights {MODEL_JSON} describes")
    raw = weights.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ModelFolderError(f"{weights} is not the file {MODEL_JSON} was written with (sha256 differs): "
                               "damaged or replaced; re-export the model")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelFolderError(f"{weights} cannot be read as weights ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFolderError(f"{weights} is not a state dict of tensors")
    return spec, state
