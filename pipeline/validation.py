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


def recipe_key(dataset: str, key: str) -> str:
    """The dotted ``key`` of the data set's recipe file, as messages name it (``recipes/digits.yaml:ap.lr``)."""
    return f"{RECIPE_DIR}/{dataset}.yaml:{key}"


def located(key: str) -> str:
    """A dotted key with the file it lives in, for messages: ``recipes/digits.yaml: ap.lr`` for a
    recipe key (:func:`recipe_key`), ``params.yaml: finetune.ap.lr`` for any other."""
    if key.startswith(f"{RECIPE_DIR}/") and ":" in key:
        file, dotted = key.split(":", 1)
        return f"{file}: {dotted}"
    return f"params.yaml: {key}"


def invalid(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{located(key)} = {value!r} is invalid; {valid}")


def check_keys(section: Mapping[str, Any], allowed: Any, where: str) -> None:
    """No key of ``section`` (at the dotted ``where``; ``<top>`` for a file's top level) beyond ``allowed``."""
    unknown = sorted(set(section) - set(allowed), key=str)
    if unknown:
        key = located(f"{where}.{unknown[0]}".replace("<top>.", ""))
        file, dotted = key.split(": ", 1)
        raise ConfigError(f"{file}: unknown key {dotted}; valid keys: {', '.join(sorted(allowed))}")


def one_of(value: Any, known: Any, key: str, what: str = "known") -> str:
    """``value`` when it is one of the names ``known`` (a registry); a list or a mapping fails here too."""
    if not isinstance(value, str) or value not in known:
        raise invalid(key, value, f"{what}: {', '.join(known)}")
    return value


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
    """Recipe values, replaced by every non-null override; returns (optim, options). A bad value
    is named where it was set: the override's params key, else the recipe file's key."""
    section = where.split(".")[-1]
    check_keys(recipe, allowed, recipe_key(dataset, section))
    check_keys(overrides, allowed, where)
    given = {k: v for k, v in overrides.items() if v is not None}
    merged = {**recipe, **given}
    checked = {name: check_value(f"{where}.{name}" if name in given else recipe_key(dataset, f"{section}.{name}"),
                                 name, value) for name, value in merged.items()}
    if "epochs" not in checked:
        raise ConfigError(f"{located(recipe_key(dataset, section))}.epochs is not set; set it in the recipe "
                          f"(or override {where}.epochs in params.yaml)")
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


# Ray's forms of a cluster address besides host:port (and ray://host:port, Ray Client): "auto", the
# cluster on this machine (RAY_ADDRESS=auto on a head node), and "local", a new local cluster.
RAY_ADDRESS_WORDS = ("auto", "local")


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port`` (an IPv6 host in brackets), else None."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        return None
    return host, int(port)


def ray_address(value: Any, key: str) -> str | None:
    """A Ray cluster address as ``ray.init`` takes it, or None (a local cluster of the stage's own)."""
    if value is None:
        return None
    if not isinstance(value, str) or (value not in RAY_ADDRESS_WORDS and host_port(value) is None):
        raise ConfigError(f"{key} = {value!r} is invalid; expected host:port of a running cluster's head "
                          f"(`ray start --head` prints it), ray://host:port, auto, or null for a local cluster")
    return value
