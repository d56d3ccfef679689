"""``params.yaml`` and the data set's recipe as one frozen, validated configuration object.

Two files make up the parameters:

* ``params.yaml``: what a user switches: ``dataset``, ``seed``, ``data``, ``costs``, the fine-tuning
  sweep (``finetune.methods``, ``finetune.replications``) and ``ray``, plus overrides of the
  recipe, empty by default: ``baseline.<key>`` and ``finetune.<method>.<key>`` (a ``null`` value
  keeps the recipe's). ``dvc exp run -S '+finetune.csada.adv_weight=5'`` changes one CSADA
  hyperparameter on top of the recipe of whichever data set is chosen.
* ``recipes/<dataset>.yaml``: that data set's model and section 5's optimisation and method
  settings: ``model``, ``model_options``, ``pretrained``, ``costs`` (the default kind and its
  settings), ``evaluate.top_k``, ``split.val_fraction``, ``baseline`` and one section per method.

Valid names come from the registries they name (datasets, models, methods, optimisers, norms, cost
kinds), so a new entry in a registry is valid here at once. Everything is checked when the files
are read: an unknown key, a wrong type or an out-of-range value fails with its dotted key, the
value and what is valid, before any data is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.datasets import DATASETS
from pipeline.method.costfiles import COST_KINDS
from pipeline.method.registry import FINETUNE_METHODS, METHODS
from pipeline.models.registry import MODELS
from pipeline.paper.config import PaperConfig, parse_paper
from pipeline.predict.settings import PredictConfig, parse_predict
from pipeline.runs.optim import OptimConfig
from pipeline.validation import (
    OPTIM_KEYS,
    RECIPE_DIR,
    ConfigError,
    MethodConfig,
    as_bool,
    as_mapping,
    check_keys,
    invalid,
    located,
    one_of,
    positive_int,
    ray_address,
    resolve_training,
)

RECIPE_KEYS = ("model", "model_options", "pretrained", "costs", "split", "evaluate", "baseline", *FINETUNE_METHODS)
# Params that point at a user's file, and the folder beside params.yaml that file must lie in. The
# folder is a DVC dependency of each stage that reads the param (tests/test_stage_deps.py checks),
# so an edit to the file re-runs that stage; a file elsewhere would go unseen.
USER_FILE_FOLDERS = {"costs.file": "costs", "data.source": "sources"}
# Settings that decide where and how a run executes, never what it computes: they are not DVC
# params of any stage, so changing them re-runs nothing.
EXECUTION_ONLY = frozenset({"ray.address", "ray.cpus_per_worker", "ray.max_concurrent_trials",
                            "ray.storage_path", "ray.dashboard"})


@dataclass(frozen=True)
class SearchConfig:
    """The validation search of each method's hyperparameters (pipeline.cluster.search)."""

    max_trials: int = 12  # per method; 0: no search, the recipe's values as they are
    time_budget_s: float = 600.0  # wall clock for the whole search, shared by the methods
    max_accuracy_drop: float = 0.005  # of validation accuracy below the baseline's (0.005: half a point)


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None
    download: bool = False
    label_column: str = "label"
    verify_checksums: bool = True  # MNIST/CIFAR-10: check the official md5s
    val_fraction: float = 0.1  # the recipe's: MNIST/CIFAR-10's validation carve-out


@dataclass(frozen=True)
class CostConfig:
    kind: str
    pareto_shape: float = 1.5
    pareto_scale: float = 1.0
    pareto_seed: int = 0
    expert: Mapping[str, Any] = field(default_factory=dict)  # {default, pairs} (section 5.3.4)
    true_class: str | None = None
    predicted_class: str | None = None
    file: str | None = None


# A trial that drives a multi-worker TorchTrainer only waits on it: it holds a sliver of a CPU,
# which a local cluster must have besides the workers' CPUs.
TRIAL_DRIVER_CPUS = 0.01


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    num_workers: int = 1
    use_gpu: str | bool = "auto"
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 2
    storage_path: str = "runs/ray"
    # A local cluster's dashboard (and the State API behind it) on 127.0.0.1: about 2 s more
    # start-up per training stage, for a cluster that lives as long as its stage.
    dashboard: bool = False


@dataclass(frozen=True)
class Paths:
    """Where each stage writes. The data files carry the data set's name (data/raw/<dataset>, its
    manifest and cost matrix; a training run's inputs digest hashes their names); the models'
    folders do not (their jobs name the data set). Each lies in a folder of fixed name, the DVC
    output (data/raw, data/split, data/costs, models/baseline, ...), so that a `dvc exp run -S
    dataset=...` finds every output in dvc.lock (a templated output path is missing there, and
    `dvc exp run` warns about each when it checks the workspace out)."""

    raw: Path
    manifest: Path
    cost: Path
    baseline: Path
    search: Path
    finetune: Path
    evaluation: Path
    report: Path
    recommended: Path


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
    search: SearchConfig = SearchConfig()
    predict: PredictConfig = PredictConfig()
    paper: PaperConfig | None = None  # the paper's experiments (paper/dvc.yaml); parsed from the recipe's defaults


# Where each Config field comes from: params.yaml keys, and ``recipe`` for the data set's recipe
# file (a file dependency of the stages that read it). ``config.<field>.<sub>`` reads
# ``<key>.<sub>`` for a field of one key that is a section (data, ray). The stage-dependency test
# compares what each stage script reads with what dvc.yaml declares for it.
PARAM_SOURCES: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset",),
    "seed": ("seed",),
    "data": ("data",),
    "data.val_fraction": ("recipe",),
    "costs": ("costs", "recipe"),
    "model": ("recipe",),
    "model_options": ("recipe",),
    "pretrained": ("recipe",),
    "baseline": ("baseline", "recipe"),
    "methods": ("finetune.methods", *(f"finetune.{m}" for m in FINETUNE_METHODS), "recipe"),
    "replications": ("finetune.replications",),
    "search": ("search",),
    "predict": ("predict",),
    # The paper's experiments (paper/params.yaml): each field from its own keys.
    "paper.replications": ("paper.replications",),
    "paper.baseline_max_epochs": ("paper.baselines.max_epochs",),
    "paper.zero_loss": ("paper.baselines.zero_loss",),
    "paper.top_pairs": ("paper.pairs.top",),
    "paper.variants": ("paper.variants",),
    "paper.verdict": ("paper.variants",),
    "paper.pair_methods": ("paper.pairs", "paper.variants", "recipe"),
    "paper.lambdas": ("paper.lambdas.values",),
    "paper.lambda_method": ("paper.lambdas", "paper.variants", "recipe"),
    "paper.convergence_replications": ("paper.convergence.replications",),
    "paper.convergence_method": ("paper.convergence", "paper.variants", "recipe"),
    "paper.table_methods": ("paper.table", "paper.variants", "recipe"),
    "paper.ablation": ("paper.ablation", "paper.variants", "recipe"),
    "ray": ("ray",),
    "top_k": ("recipe",),
    **{f"paths.{name}": ("dataset",) for name in ("raw", "manifest", "cost", "recommended")},
    **{f"paths.{name}": () for name in ("baseline", "search", "finetune", "evaluation", "report")},
}


def _merged(recipe: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with every non-null value of ``params`` on top, section by section."""
    out = dict(recipe)
    for key, value in params.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def user_file(value: Any, key: str, project: Path) -> str | None:
    """A param that points at a user's file: a path string inside its folder
    (:data:`USER_FILE_FOLDERS`) under the ``project`` folder, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(key, value, "expected a path (or null)")
    folder = USER_FILE_FOLDERS[key]
    path = Path(value) if Path(value).is_absolute() else project / value
    if not path.resolve().is_relative_to((project / folder).resolve()):
        name = Path(value).name or "yours"
        raise ConfigError(
            f"params.yaml: {key} = {value!r} is outside {folder}/, where DVC watches it for changes; bring it in "
            f"with `dvc add` (copy it to {folder}/{name} first) or `dvc import-url {value} {folder}/{name}`, "
            f"then set {key}={folder}/{name}")
    return value


def _cost_config(section: Mapping[str, Any], recipe: Mapping[str, Any], dataset: str,
                 project: Path = Path()) -> CostConfig:
    """params.yaml's ``costs`` (what a user switches: kind, the Pareto draw, a pair, a file) over
    the recipe's (the default kind and its settings: Pareto shape and scale, the toy's critical
    pair, PMI's expert pairs)."""
    where = f"{RECIPE_DIR}/{dataset}.yaml:costs"
    check_keys(recipe, {"kind", "pareto", "single_pair", "expert"}, where)
    check_keys(section, {"kind", "seed", "pair", "file"}, "costs")
    kind = section.get("kind") or "default"
    kind = recipe.get("kind", "pareto") if kind == "default" else kind
    if not isinstance(kind, str) or kind not in COST_KINDS:
        raise invalid("costs.kind", kind, f"valid: default, {', '.join(COST_KINDS)}")
    pareto = as_mapping(recipe.get("pareto"), f"{where}.pareto")
    check_keys(pareto, {"shape", "scale"}, f"{where}.pareto")
    for key, default in (("shape", 1.5), ("scale", 1.0)):
        value = pareto.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise invalid(f"{where}.pareto.{key}", value, "must be a number > 0")
    recipe_pair = as_mapping(recipe.get("single_pair"), f"{where}.single_pair")
    check_keys(recipe_pair, {"true_class", "predicted_class"}, f"{where}.single_pair")
    pair = section.get("pair")
    if pair is None and recipe_pair:
        pair = [recipe_pair.get("true_class"), recipe_pair.get("predicted_class")]
    if pair is not None and not (isinstance(pair, list) and len(pair) == 2 and None not in pair):
        raise invalid("costs.pair", pair, "expected [true class, predicted class]")
    if kind == "single_pair" and pair is None:
        raise ConfigError("params.yaml: costs.kind = 'single_pair' needs costs.pair: [true class, predicted class]")
    if kind == "file" and not section.get("file"):
        raise ConfigError("params.yaml: costs.kind = 'file' needs costs.file (a CSV, YAML or JSON cost matrix)")
    expert = as_mapping(recipe.get("expert"), f"{where}.expert")
    if kind == "expert" and "pairs" not in expert:
        raise ConfigError(f"{located(where + '.expert')}: costs.kind = 'expert' needs the recipe's expert pairs")
    return CostConfig(
        kind=kind,
        pareto_shape=float(pareto.get("shape", 1.5)),
        pareto_scale=float(pareto.get("scale", 1.0)),
        pareto_seed=positive_int(section.get("seed", 0), "costs.seed", minimum=0),
        expert=dict(expert),
        true_class=None if pair is None else str(pair[0]),
        predicted_class=None if pair is None else str(pair[1]),
        file=user_file(section.get("file"), "costs.file", project),
    )


def _ray_config(section: Mapping[str, Any], available_cpus: int | None, project: Path = Path()) -> RayConfig:
    check_keys(section, RayConfig.__dataclass_fields__, "ray")
    num_workers = positive_int(section.get("num_workers", 1), "ray.num_workers")
    cpus = section.get("cpus_per_worker", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
        raise invalid("ray.cpus_per_worker", cpus, "must be a number > 0")
    use_gpu = section.get("use_gpu", "auto")
    if use_gpu not in ("auto", True, False):
        raise invalid("ray.use_gpu", use_gpu, "valid: auto, true, false")
    given = section.get("address")
    address = (ray_address(given, "params.yaml: ray.address") if given not in (None, "")
               else ray_address(os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"))
    # A local cluster is sized from this machine: more workers than CPUs would wait forever.
    needed = num_workers * cpus + (TRIAL_DRIVER_CPUS if num_workers > 1 else 0)
    if address is None and available_cpus is not None and needed > available_cpus:
        driver = f" plus {TRIAL_DRIVER_CPUS:g} for the trial that drives them" if num_workers > 1 else ""
        raise ConfigError(
            f"params.yaml: ray.num_workers = {num_workers} x ray.cpus_per_worker = {cpus} needs "
            f"{num_workers * cpus:g} CPUs{driver} but this machine has {available_cpus}; lower them "
            f"(ray.cpus_per_worker may be a fraction) or set ray.address"
        )
    return RayConfig(
        address=address,
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=float(cpus),
        max_concurrent_trials=positive_int(section.get("max_concurrent_trials", 2), "ray.max_concurrent_trials"),
        storage_path=_storage_path(section.get("storage_path", "runs/ray"), project),
        dashboard=as_bool(section.get("dashboard", False), "ray.dashboard"),
    )


def _storage_path(value: Any, project: Path) -> str:
    """``ray.storage_path``: a URI, or a local folder that is not the project folder itself (run
    folders would land among the project's files)."""
    if not isinstance(value, str) or not value.strip():
        raise invalid("ray.storage_path", value, "expected a folder (runs/ray) or a URI (s3://bucket/runs)")
    if "://" not in value and (project / value).resolve() == project.resolve():
        raise invalid("ray.storage_path", value, "it is the project folder itself; use a folder of its own (runs/ray)")
    return value


def _search_config(section: Mapping[str, Any]) -> SearchConfig:
    check_keys(section, set(SearchConfig.__dataclass_fields__), "search")
    default = SearchConfig()
    budget = section.get("time_budget_s", default.time_budget_s)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (math.isfinite(budget) and budget > 0):
        raise invalid("search.time_budget_s", budget, "expected a number of seconds > 0")
    drop = section.get("max_accuracy_drop", default.max_accuracy_drop)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise invalid("search.max_accuracy_drop", drop, "expected a fraction of accuracy in [0, 1] (0.005: half a point)")
    return SearchConfig(max_trials=positive_int(section.get("max_trials", default.max_trials), "search.max_trials",
                                                 minimum=0),
                        time_budget_s=float(budget), max_accuracy_drop=float(drop))


def _data_config(data: Mapping[str, Any], recipe: Mapping[str, Any], dataset: str, project: Path = Path()) -> DataConfig:
    check_keys(data, {"source", "download", "label_column", "verify_checksums"}, "data")
    split = as_mapping(recipe.get("split"), f"{RECIPE_DIR}/{dataset}.yaml:split")
    check_keys(split, {"val_fraction"}, f"{RECIPE_DIR}/{dataset}.yaml:split")
    val_fraction = split.get("val_fraction", 0.1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise invalid(f"{RECIPE_DIR}/{dataset}.yaml:split.val_fraction", val_fraction, "must be a number in (0, 1)")
    config = DataConfig(
        source=user_file(data.get("source"), "data.source", project),
        download=as_bool(data.get("download", False), "data.download"),
        label_column=str(data.get("label_column", "label")),
        verify_checksums=as_bool(data.get("verify_checksums", True), "data.verify_checksums"),
        val_fraction=float(val_fraction),
    )
    if DATASETS[dataset].needs_source and config.source is None:
        raise ConfigError(f"params.yaml: dataset = {dataset!r} needs data.source (a local archive, folder or file)")
    return config


def _methods(finetune: Mapping[str, Any], recipe: Mapping[str, Any], dataset: str) -> tuple[MethodConfig, ...]:
    check_keys(finetune, {"methods", "replications", *FINETUNE_METHODS}, "finetune")
    names = finetune.get("methods", list(FINETUNE_METHODS))
    if not isinstance(names, list) or not names:
        raise invalid("finetune.methods", names, f"expected a non-empty list from: {', '.join(FINETUNE_METHODS)}")
    for name in names:
        one_of(name, FINETUNE_METHODS, "finetune.methods", "unknown method; known")
    if len(set(names)) != len(names):
        raise invalid("finetune.methods", names, "each method may appear once")
    methods = []
    for name in names:
        optim, options = resolve_training(
            as_mapping(recipe.get(name), f"{RECIPE_DIR}/{dataset}.yaml:{name}"), as_mapping(finetune.get(name), f"finetune.{name}"),
            f"finetune.{name}", set(OPTIM_KEYS) | set(METHODS[name].options()), dataset)
        pinned = frozenset(k for k, v in as_mapping(finetune.get(name), f"finetune.{name}").items() if v is not None)
        methods.append(MethodConfig(name=name, optim=optim, options=options, pinned=pinned))
    return tuple(methods)


def read_yaml(path: Path, what: str, shown: str | None = None) -> Mapping[str, Any]:
    """The mapping in the YAML file ``path`` (an empty file: none); messages name the file
    ``shown`` (default: ``path``). ``what`` says, when the file is missing, what it is for."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: {what}")
    name = shown or str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except yaml.YAMLError as error:  # PyYAML's report spans lines: the stage folds it into one
        raise ConfigError(f"{name} is not valid YAML: {error}") from None
    if loaded is not None and not isinstance(loaded, Mapping):
        text = repr(loaded)
        raise ConfigError(f"{name} holds a {type(loaded).__name__} ({text[:60]}{'...' if len(text) > 60 else ''}); "
                          f"expected a mapping of settings, one `key: value` per line")
    return loaded or {}


def _recipes_near(params_file: Path) -> Path:
    """``recipes/`` beside the params file, or beside its nearest parent folder that has one (the
    paper's experiments, paper/params.yaml, use the project's recipes)."""
    for folder in params_file.resolve().parents:
        if (folder / RECIPE_DIR).is_dir():
            return folder / RECIPE_DIR
    return params_file.parent / RECIPE_DIR


def load_config(params: Mapping[str, Any] | str | os.PathLike[str] = "params.yaml", *,
                recipe: Mapping[str, Any] | None = None, recipe_dir: str | os.PathLike[str] | None = None,
                available_cpus: int | None = None) -> Config:
    """Read and validate params (a mapping or a YAML path) and the data set's recipe.

    The recipe is ``recipe`` when given, else ``<recipe_dir>/<dataset>.yaml`` (``recipe_dir``
    defaults to ``recipes/`` beside the params file or its nearest parent folder that has one, or in the
    working directory for a mapping).
    """
    project = Path()  # the folder user files are relative to: the params file's, or the working directory
    if not isinstance(params, Mapping):
        path = Path(params)
        params = read_yaml(path, "run from the repository root, or pass the params file")
        recipe_dir = recipe_dir if recipe_dir is not None else _recipes_near(path)
        project = path.parent
    available_cpus = os.cpu_count() if available_cpus is None else available_cpus
    check_keys(params, {"dataset", "seed", "data", "costs", "baseline", "finetune", "search", "predict", "ray", "paper"},
               "<top>")
    dataset = one_of(params.get("dataset", "digits"), DATASETS, "dataset", "valid")
    if recipe is None:
        recipe_path = Path(RECIPE_DIR if recipe_dir is None else recipe_dir) / f"{dataset}.yaml"
        recipe = read_yaml(recipe_path, f"every data set needs a recipe; dataset = {dataset!r}",
                           shown=f"{RECIPE_DIR}/{dataset}.yaml")
    check_keys(recipe, RECIPE_KEYS, f"{RECIPE_DIR}/{dataset}.yaml:<top>")
    model = one_of(recipe.get("model", "small_cnn"), sorted(MODELS), f"{RECIPE_DIR}/{dataset}.yaml:model")
    baseline, _ = resolve_training(as_mapping(recipe.get("baseline"), f"{RECIPE_DIR}/{dataset}.yaml:baseline"),
                                    as_mapping(params.get("baseline"), "baseline"), "baseline", set(OPTIM_KEYS), dataset)
    finetune = as_mapping(params.get("finetune"), "finetune")
    evaluate = as_mapping(recipe.get("evaluate"), f"{RECIPE_DIR}/{dataset}.yaml:evaluate")
    check_keys(evaluate, {"top_k"}, f"{RECIPE_DIR}/{dataset}.yaml:evaluate")
    return Config(
        dataset=dataset,
        seed=positive_int(params.get("seed", 0), "seed", minimum=0),
        data=_data_config(as_mapping(params.get("data"), "data"), recipe, dataset, project),
        costs=_cost_config(as_mapping(params.get("costs"), "costs"),
                           as_mapping(recipe.get("costs"), f"{RECIPE_DIR}/{dataset}.yaml:costs"), dataset, project),
        model=str(model),
        model_options=dict(as_mapping(recipe.get("model_options"), f"{RECIPE_DIR}/{dataset}.yaml:model_options")),
        pretrained=as_bool(recipe.get("pretrained", False), f"{RECIPE_DIR}/{dataset}.yaml:pretrained"),
        baseline=baseline,
        methods=_methods(finetune, recipe, dataset),
        replications=positive_int(finetune.get("replications", 3), "finetune.replications"),
        ray=_ray_config(as_mapping(params.get("ray"), "ray"), available_cpus, project),
        search=_search_config(as_mapping(params.get("search"), "search")),
        predict=parse_predict(as_mapping(params.get("predict"), "predict")),
        paper=parse_paper(as_mapping(params.get("paper"), "paper"), recipe, dataset),
        top_k=positive_int(evaluate.get("top_k", 3), f"{RECIPE_DIR}/{dataset}.yaml:evaluate.top_k"),
        paths=Paths(
            raw=Path("data/raw") / dataset,
            manifest=Path("data/split") / f"{dataset}.parquet",
            cost=Path("data/costs") / f"{dataset}.csv",
            baseline=Path("models") / "baseline",
            search=Path("models") / "search",
            finetune=Path("models") / "finetune",
            evaluation=Path("results"),
            report=Path("results") / "report.md",
            recommended=Path("models") / dataset / "recommended",
        ),
    )
