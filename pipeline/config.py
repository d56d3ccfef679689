"""``params.yaml`` as one frozen, validated configuration object.

Layout of params.yaml:

* ``dataset`` picks a recipe from ``recipes.<dataset>``: the model and the section 5
  optimisation and method settings for that data set.
* ``baseline`` and ``finetune.<method>`` hold overrides of the recipe: a ``null`` value means
  "the recipe's value". So ``dvc exp run -S dataset=mnist -S finetune.csada.adv_weight=5``
  switches data set and recipe, and changes one CSADA hyperparameter on top.
* ``finetune.methods`` and ``finetune.replications`` define the Ray Tune sweep.

Everything is checked here, when params.yaml is read: an unknown key, a wrong type or an
out-of-range value fails with its dotted key, the value and what is valid, before any data
is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("toy", "digits", "mnist", "cifar10", "pmi", "table")
METHODS = ("csada", "ap", "sosr", "penalty")
COST_KINDS = ("pareto", "expert", "single_pair", "file")
OPTIMIZERS = ("sgd", "adam")

# Keys of a training section that configure the optimisation; the others are the method's own.
OPTIM_KEYS = {
    "epochs", "optimizer", "lr", "momentum", "weight_decay", "lr_step_epochs", "lr_gamma",
    "batch_size", "head_only_epochs", "head_only_lr", "augment",
}
METHOD_OPTION_KEYS = {
    "csada": {"adv_weight", "temperature", "eps", "steps", "step_size", "norm", "step_rule", "normalization", "pairs"},
    "ap": {"alpha"},
    "sosr": set(),
    "penalty": set(),
}
POSITIVE = {"eps", "steps", "step_size", "temperature", "lr", "batch_size", "lr_step_epochs", "head_only_lr"}
NON_NEGATIVE = {"adv_weight", "alpha", "weight_decay", "momentum", "head_only_epochs", "lr_gamma"}
INTEGERS = {"epochs", "steps", "batch_size", "lr_step_epochs", "head_only_epochs"}
CHOICES = {
    "optimizer": OPTIMIZERS,
    "norm": ("linf", "l2"),
    "step_rule": ("gradient", "steepest"),
    "normalization": ("unbiased", "attacked_mean"),
    "pairs": ("stochastic", "full"),
}


class ConfigError(ValueError):
    """An invalid params.yaml value; the message names the dotted key."""


def _fail(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"params.yaml: {key} = {value!r} is invalid; {valid}")


def _check_keys(section: Mapping[str, Any], allowed: set[str] | tuple[str, ...], where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"params.yaml: unknown key {where}.{unknown[0]}; valid keys: {', '.join(sorted(allowed))}")


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(key, value, "expected a mapping")
    return value


def _check_value(key: str, name: str, value: Any) -> Any:
    """Type and range of one training setting (``key`` is the dotted path for messages)."""
    if name in CHOICES:
        if value not in CHOICES[name]:
            raise _fail(key, value, f"valid: {', '.join(CHOICES[name])}")
        return value
    if name == "augment":
        if not isinstance(value, bool):
            raise _fail(key, value, "expected true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, value, "expected a finite number")
    if name in INTEGERS and not float(value).is_integer():
        raise _fail(key, value, "expected an integer")
    if name == "epochs" and value < 1:
        raise _fail(key, value, "must be >= 1")
    if name in POSITIVE and value <= 0:
        raise _fail(key, value, "must be > 0")
    if name in NON_NEGATIVE and value < 0:
        raise _fail(key, value, "must be >= 0")
    return int(value) if name in INTEGERS else float(value)


@dataclass(frozen=True)
class OptimConfig:
    """One training run's optimisation: section 5's epochs, optimiser and step schedule."""

    epochs: int
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_epochs: int = 1_000_000  # decay lr by lr_gamma every this many epochs
    lr_gamma: float = 1.0
    batch_size: int = 64
    head_only_epochs: int = 0  # section 5.3.3: first train only the new head ...
    head_only_lr: float = 1e-4  # ... at this learning rate
    augment: bool = False


@dataclass(frozen=True)
class MethodConfig:
    name: str
    optim: OptimConfig
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/raw"
    source: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    label_column: str = "label"
    verify_checksums: bool = True  # MNIST/CIFAR-10: check the official md5s


@dataclass(frozen=True)
class CostConfig:
    kind: str
    pareto_shape: float = 1.5
    pareto_scale: float = 1.0
    pareto_seed: int = 0
    expert_file: str | None = None
    true_class: str | None = None
    predicted_class: str | None = None
    pair_cost: float = 1.0
    file: str | None = None


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    num_workers: int = 1
    use_gpu: str | bool = "auto"
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 2
    storage_path: str = "runs/ray"


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, derived from the data set name."""

    raw: Path
    manifest: Path
    cost: Path
    baseline: Path
    finetune: Path
    evaluation: Path
    report: Path


@dataclass(frozen=True)
class Config:
    dataset: str
    seed: int
    data: DataConfig
    costs: CostConfig
    model: str
    model_options: Mapping[str, Any]
    pretrained: bool
    baseline: OptimConfig
    methods: tuple[MethodConfig, ...]
    replications: int
    ray: RayConfig
    top_k: int
    paths: Paths

    def method(self, name: str) -> MethodConfig:
        for method in self.methods:
            if method.name == name:
                return method
        raise ConfigError(f"method {name!r} is not in finetune.methods ({', '.join(m.name for m in self.methods)})")


def _resolve_training(recipe: Mapping[str, Any], overrides: Mapping[str, Any], where: str, allowed: set[str]):
    """Recipe values, replaced by every non-null override; returns (optim, options)."""
    _check_keys(recipe, allowed, f"recipes.<dataset>.{where}")
    _check_keys(overrides, allowed, where)
    merged = {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
    checked = {name: _check_value(f"{where}.{name}", name, value) for name, value in merged.items()}
    if "epochs" not in checked:
        raise ConfigError(f"params.yaml: {where}.epochs is not set by the recipe or an override")
    optim = OptimConfig(**{k: v for k, v in checked.items() if k in OPTIM_KEYS})
    options = {k: v for k, v in checked.items() if k not in OPTIM_KEYS}
    return optim, options


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, value, f"expected an integer >= {minimum}")
    return value


def _cost_config(section: Mapping[str, Any], default_kind: str, recipe_pair: Any) -> CostConfig:
    _check_keys(section, {"kind", "pareto", "expert_file", "single_pair", "file"}, "costs")
    kind = section.get("kind", "default")
    kind = default_kind if kind == "default" else kind
    if kind not in COST_KINDS:
        raise _fail("costs.kind", kind, f"valid: default, {', '.join(COST_KINDS)}")
    pareto = _mapping(section.get("pareto"), "costs.pareto")
    _check_keys(pareto, {"shape", "scale", "seed"}, "costs.pareto")
    pair = dict(_mapping(section.get("single_pair"), "costs.single_pair"))
    _check_keys(pair, {"true_class", "predicted_class", "cost"}, "costs.single_pair")
    if recipe_pair is not None and pair.get("true_class") is None and pair.get("predicted_class") is None:
        # The recipe's critical pair (the toy problem's green -> blue) unless params name one.
        if not (isinstance(recipe_pair, list) and len(recipe_pair) == 2):
            raise _fail("recipes.<dataset>.critical_pair", recipe_pair, "expected [true_class, predicted_class]")
        pair["true_class"], pair["predicted_class"] = recipe_pair
    for key in ("shape", "scale"):
        value = pareto.get(key, 1.5 if key == "shape" else 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _fail(f"costs.pareto.{key}", value, "must be a number > 0")
    if kind == "single_pair" and (pair.get("true_class") is None or pair.get("predicted_class") is None):
        raise ConfigError("params.yaml: costs.kind = 'single_pair' needs costs.single_pair.true_class and predicted_class")
    if kind == "file" and not section.get("file"):
        raise ConfigError("params.yaml: costs.kind = 'file' needs costs.file (a CSV, YAML or JSON cost matrix)")
    if kind == "expert" and not section.get("expert_file"):
        raise ConfigError("params.yaml: costs.kind = 'expert' needs costs.expert_file")
    return CostConfig(
        kind=kind,
        pareto_shape=float(pareto.get("shape", 1.5)),
        pareto_scale=float(pareto.get("scale", 1.0)),
        pareto_seed=_positive_int(pareto.get("seed", 0), "costs.pareto.seed", minimum=0),
        expert_file=section.get("expert_file"),
        true_class=None if pair.get("true_class") is None else str(pair["true_class"]),
        predicted_class=None if pair.get("predicted_class") is None else str(pair["predicted_class"]),
        pair_cost=float(pair.get("cost", 1.0)),
        file=section.get("file"),
    )


def _ray_config(section: Mapping[str, Any], available_cpus: int | None) -> RayConfig:
    _check_keys(
        section,
        {"address", "num_workers", "use_gpu", "cpus_per_worker", "max_concurrent_trials", "storage_path"},
        "ray",
    )
    num_workers = _positive_int(section.get("num_workers", 1), "ray.num_workers")
    cpus = section.get("cpus_per_worker", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
        raise _fail("ray.cpus_per_worker", cpus, "must be a number > 0")
    use_gpu = section.get("use_gpu", "auto")
    if use_gpu not in ("auto", True, False):
        raise _fail("ray.use_gpu", use_gpu, "valid: auto, true, false")
    address = section.get("address") or os.environ.get("RAY_ADDRESS") or None
    # A local cluster is sized from this machine: more workers than CPUs would wait forever.
    if address is None and available_cpus is not None and num_workers * cpus > available_cpus:
        raise ConfigError(
            f"params.yaml: ray.num_workers = {num_workers} x ray.cpus_per_worker = {cpus} needs "
            f"{num_workers * cpus:g} CPUs but this machine has {available_cpus}; lower them or set ray.address"
        )
    return RayConfig(
        address=address,
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=float(cpus),
        max_concurrent_trials=_positive_int(section.get("max_concurrent_trials", 2), "ray.max_concurrent_trials"),
        storage_path=str(section.get("storage_path", "runs/ray")),
    )


def load_config(params: Mapping[str, Any] | str | os.PathLike[str] = "params.yaml", *,
                available_cpus: int | None = None) -> Config:
    """Read and validate params (a mapping or a YAML path)."""
    if not isinstance(params, Mapping):
        path = Path(params)
        if not path.exists():
            raise ConfigError(f"{path} not found: run from the repository root, or pass the params file")
        params = yaml.safe_load(path.read_text()) or {}
    if available_cpus is None:
        available_cpus = os.cpu_count()
    _check_keys(
        params, {"dataset", "seed", "data", "costs", "baseline", "finetune", "ray", "evaluate", "recipes"}, "<top>"
    )
    dataset = params.get("dataset", "digits")
    if dataset not in DATASETS:
        raise _fail("dataset", dataset, f"valid: {', '.join(DATASETS)}")
    recipes = _mapping(params.get("recipes"), "recipes")
    if dataset not in recipes:
        raise ConfigError(f"params.yaml: recipes.{dataset} is missing; every data set needs a recipe")
    recipe = _mapping(recipes[dataset], f"recipes.{dataset}")
    _check_keys(
        recipe, {"model", "model_options", "pretrained", "costs", "critical_pair", "baseline", *METHODS},
        f"recipes.{dataset}",
    )
    seed = _positive_int(params.get("seed", 0), "seed", minimum=0)
    from pipeline.models import MODELS

    if recipe.get("model", "small_cnn") not in MODELS:
        raise _fail(f"recipes.{dataset}.model", recipe.get("model"), f"known: {', '.join(sorted(MODELS))}")

    data = _mapping(params.get("data"), "data")
    _check_keys(data, {"root", "source", "download", "val_fraction", "label_column", "verify_checksums"}, "data")
    val_fraction = data.get("val_fraction", 0.1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise _fail("data.val_fraction", val_fraction, "must be a number in (0, 1)")
    data_config = DataConfig(
        root=str(data.get("root", "data/raw")),
        source=data.get("source"),
        download=bool(data.get("download", False)),
        val_fraction=float(val_fraction),
        label_column=str(data.get("label_column", "label")),
        verify_checksums=bool(data.get("verify_checksums", True)),
    )
    if dataset in ("pmi", "table") and not data_config.source:
        raise ConfigError(f"params.yaml: dataset = {dataset!r} needs data.source (a local archive, folder or file)")

    baseline_optim, _ = _resolve_training(
        _mapping(recipe.get("baseline"), f"recipes.{dataset}.baseline"),
        _mapping(params.get("baseline"), "baseline"),
        "baseline",
        OPTIM_KEYS,
    )

    finetune = _mapping(params.get("finetune"), "finetune")
    _check_keys(finetune, {"methods", "replications", *METHODS}, "finetune")
    names = finetune.get("methods", list(METHODS))
    if not isinstance(names, list) or not names:
        raise _fail("finetune.methods", names, f"expected a non-empty list from: {', '.join(METHODS)}")
    for name in names:
        if name not in METHODS:
            raise _fail("finetune.methods", name, f"unknown method; known: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise _fail("finetune.methods", names, "each method may appear once")
    methods = []
    for name in names:
        optim, options = _resolve_training(
            _mapping(recipe.get(name), f"recipes.{dataset}.{name}"),
            _mapping(finetune.get(name), f"finetune.{name}"),
            f"finetune.{name}",
            OPTIM_KEYS | METHOD_OPTION_KEYS[name],
        )
        methods.append(MethodConfig(name=name, optim=optim, options=options))

    evaluate = _mapping(params.get("evaluate"), "evaluate")
    _check_keys(evaluate, {"top_k"}, "evaluate")
    paths = Paths(
        raw=Path(data_config.root) / dataset,
        manifest=Path("data/split") / f"{dataset}.parquet",
        cost=Path("data/costs") / f"{dataset}.csv",
        baseline=Path("models") / dataset / "baseline",
        finetune=Path("models") / dataset / "finetune",
        evaluation=Path("results"),
        report=Path("results") / "report.md",
    )
    return Config(
        dataset=dataset,
        seed=seed,
        data=data_config,
        costs=_cost_config(_mapping(params.get("costs"), "costs"), str(recipe.get("costs", "pareto")),
                           recipe.get("critical_pair")),
        model=str(recipe.get("model", "small_cnn")),
        model_options=dict(_mapping(recipe.get("model_options"), f"recipes.{dataset}.model_options")),
        pretrained=bool(recipe.get("pretrained", False)),
        baseline=baseline_optim,
        methods=tuple(methods),
        replications=_positive_int(finetune.get("replications", 3), "finetune.replications"),
        ray=_ray_config(_mapping(params.get("ray"), "ray"), available_cpus),
        top_k=_positive_int(evaluate.get("top_k", 3), "evaluate.top_k"),
        paths=paths,
    )
