"""Checks of single parameter values, shared by every section's parser (pipeline.config, pipeline.paper.config).

Each check fails with a :class:`ConfigError` that names the dotted key, the value and what is valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError
from pipeline.method.attacks import NORMS, STEP_RULES
from pipeline.method.csada import BN_MODES, NORMALIZATIONS, PAIR_MODES, PAIR_WEIGHTINGS, PASSES
from pipeline.method.losses import PENALTY_NORMALIZATIONS
from pipeline.runs.optim import OPTIMIZERS, OptimConfig

RECIPE_DIR = "recipes"
# Keys of a training section that configure the optimisation; the others are the method's own.
OPTIM_KEYS = frozenset(OptimConfig.__dataclass_fields__)
POSITIVE = {"eps", "steps", "step_size", "temperature", "lr", "batch_size", "lr_step_epochs", "head_only_lr", "beta"}
NON_NEGATIVE = {"adv_weight", "alpha", "weight_decay", "momentum", "head_only_epochs", "lr_gamma", "stop_train_loss",
                "stop_train_accuracy"}
INTEGERS = {"epochs", "steps", "batch_size", "lr_step_epochs", "head_only_epochs"}
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": tuple(OPTIMIZERS),
    "norm": tuple(NORMS),
    "step_rule": tuple(STEP_RULES),
    "normalization": NORMALIZATIONS + PENALTY_NORMALIZATIONS,  # CSADA's, the penalty's: each method checks its own
    "pairs": PAIR_MODES,
    "bn": BN_MODES,
    "passes": PASSES,
    "pair_weights": PAIR_WEIGHTINGS,
}
BOOLEANS = {"augment", "input_clip"}


class ConfigError(UserError):
    """An invalid params.yaml or recipe value; the message names the dotted key."""


def file_prefix(key: str) -> str:
    """The file a dotted key lives in, for messages: a recipe key names its recipe file."""
    return "" if key.startswith(f"{RECIPE_DIR}/") else "params.yaml: "


def invalid(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{file_prefix(key)}{key} = {value!r} is invalid; {valid}")


def check_keys(section: Mapping[str, Any], allowed: Any, where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"{file_prefix(where)}unknown key {where}.{unknown[0]}; valid keys: {', '.join(sorted(allowed))}")


def as_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(key, value, "expected a mapping")
    return value


def as_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):  # never bool() of a string: "false" would be true
        raise invalid(key, value, "expected true or false")
    return value


def positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(key, value, f"expected an integer >= {minimum}")
    return value


def check_value(key: str, name: str, value: Any) -> Any:
    """Type and range of one training setting (``key`` is the dotted path for messages)."""
    if name in CHOICES:
        if value not in CHOICES[name]:
            raise invalid(key, value, f"valid: {', '.join(CHOICES[name])}")
        return value
    if name in BOOLEANS:
        return as_bool(value, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(key, value, "expected a finite number")
    if name in INTEGERS and not float(value).is_integer():
        raise invalid(key, value, "expected an integer")
    if name == "epochs" and value < 1:
        raise invalid(key, value, "must be >= 1")
    if name in POSITIVE and value <= 0:
        raise invalid(key, value, "must be > 0")
    if name in NON_NEGATIVE and value < 0:
        raise invalid(key, value, "must be >= 0")
    if name == "stop_train_accuracy" and value > 1:
        raise invalid(key, value, "a training accuracy is at most 1 (0: off)")
    return int(value) if name in INTEGERS else float(value)


def resolve_training(recipe: Mapping[str, Any], overrides: Mapping[str, Any], where: str,
                      allowed: set[str], dataset: str) -> tuple[OptimConfig, dict[str, Any]]:
    """Recipe values, replaced by every non-null override; returns (optim, options)."""
    check_keys(recipe, allowed, f"{RECIPE_DIR}/{dataset}.yaml:{where.split('.')[-1]}")
    check_keys(overrides, allowed, where)
    merged = {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
    checked = {name: check_value(f"{where}.{name}", name, value) for name, value in merged.items()}
    if "epochs" not in checked:
        raise ConfigError(f"params.yaml: {where}.epochs is not set by the recipe or an override")
    optim = OptimConfig(**{k: v for k, v in checked.items() if k in OPTIM_KEYS})
    return optim, {k: v for k, v in checked.items() if k not in OPTIM_KEYS}


@dataclass(frozen=True)
class MethodConfig:
    """One fine-tuning method as a run uses it: optimisation and the method's own options."""

    name: str
    optim: OptimConfig
    options: Mapping[str, Any] = field(default_factory=dict)
    # Keys set in params.yaml's finetune.<method>: the search leaves them as they are.
    pinned: frozenset[str] = frozenset()
