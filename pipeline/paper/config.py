"""params.yaml's ``paper`` section: the settings of the paper's experiments (paper/dvc.yaml).

Every experiment run follows the paper's protocol: it fine-tunes a fixed number of epochs and
keeps the last one (the product's own runs keep their best epoch on validation instead). Each
method's settings are the recipe's, then ``paper.finetune`` (epochs and learning rate of every
run), then the experiment's own overrides (``paper.pairs.csada`` etc.), checked like any other
training section. The defaults are sized for a 2-core CPU; section 5's values are in the README.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.method.registry import FINETUNE_METHODS, METHODS
from pipeline.validation import (
    OPTIM_KEYS,
    RECIPE_DIR,
    MethodConfig,
    as_mapping,
    check_keys,
    invalid,
    positive_int,
    resolve_training,
)


@dataclass(frozen=True)
class PaperConfig:
    replications: int  # of every fine-tuning run (the convergence experiment has its own)
    baseline_max_epochs: int  # the most epochs either baseline of section 1.1 trains
    zero_loss: float  # the over-parameterised baseline trains until its training loss is below this
    top_pairs: int  # pair sweep: the pairs the baseline confuses most on validation; 0: every ordered pair
    pair_methods: tuple[MethodConfig, ...]
    lambdas: tuple[float, ...]  # lambda sweep; 0 is the baseline itself
    lambda_method: MethodConfig  # CSADA as the lambda sweep runs it (adv_weight set per value)
    convergence_replications: int
    convergence_method: MethodConfig
    table_methods: tuple[MethodConfig, ...]  # Tables 3/4: each method on the data set's costs


def _method(name: str, recipe: Mapping[str, Any], finetune: Mapping[str, Any], overrides: Any, where: str,
            dataset: str) -> MethodConfig:
    own = as_mapping(overrides, where)
    optim, options = resolve_training(as_mapping(recipe.get(name), f"{RECIPE_DIR}/{dataset}.yaml:{name}"),
                                      {**finetune, **own}, where, set(OPTIM_KEYS) | set(METHODS[name].options()),
                                      dataset)
    return MethodConfig(name=name, optim=optim, options=options)


def _method_names(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value or any(n not in FINETUNE_METHODS for n in value):
        raise invalid(key, value, f"expected a non-empty list from: {', '.join(FINETUNE_METHODS)}")
    if len(set(value)) != len(value):
        raise invalid(key, value, "each method may appear once")
    return value


def _number_list(value: Any, key: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise invalid(key, value, "expected a non-empty list of numbers >= 0")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not (math.isfinite(item) and item >= 0):
            raise invalid(key, item, "expected a finite number >= 0")
    if len(set(value)) != len(value):
        raise invalid(key, value, "each value may appear once")
    return tuple(float(v) for v in value)


def parse_paper(section: Mapping[str, Any], recipe: Mapping[str, Any], dataset: str) -> PaperConfig:
    """The ``paper`` section over the recipe; every value checked, its dotted key in the message."""
    check_keys(section, {"replications", "finetune", "baselines", "pairs", "lambdas", "convergence", "table"},
               "paper")
    finetune = as_mapping(section.get("finetune", {"epochs": 5, "lr": 1e-4}), "paper.finetune")
    check_keys(finetune, OPTIM_KEYS, "paper.finetune")
    baselines = as_mapping(section.get("baselines"), "paper.baselines")
    check_keys(baselines, {"max_epochs", "zero_loss"}, "paper.baselines")
    zero_loss = baselines.get("zero_loss", 1e-3)
    if isinstance(zero_loss, bool) or not isinstance(zero_loss, (int, float)) or not 0 < zero_loss < 1:
        raise invalid("paper.baselines.zero_loss", zero_loss, "expected a training loss in (0, 1), e.g. 0.001")
    pairs = as_mapping(section.get("pairs"), "paper.pairs")
    check_keys(pairs, {"top", "methods", *FINETUNE_METHODS}, "paper.pairs")
    names = _method_names(pairs.get("methods", ["penalty", "csada"]), "paper.pairs.methods")
    table = as_mapping(section.get("table"), "paper.table")
    check_keys(table, {"methods", *FINETUNE_METHODS}, "paper.table")
    table_names = _method_names(table.get("methods", ["csada", "ap", "sosr"]), "paper.table.methods")
    lambdas = as_mapping(section.get("lambdas"), "paper.lambdas")
    check_keys(lambdas, {"values", "csada"}, "paper.lambdas")
    convergence = as_mapping(section.get("convergence"), "paper.convergence")
    check_keys(convergence, {"replications", "csada"}, "paper.convergence")
    return PaperConfig(
        replications=positive_int(section.get("replications", 3), "paper.replications"),
        baseline_max_epochs=positive_int(baselines.get("max_epochs", 60), "paper.baselines.max_epochs"),
        zero_loss=float(zero_loss),
        top_pairs=positive_int(pairs.get("top", 10), "paper.pairs.top", minimum=0),
        pair_methods=tuple(_method(n, recipe, finetune, pairs.get(n), f"paper.pairs.{n}", dataset) for n in names),
        lambdas=_number_list(lambdas.get("values", [0, 1, 2, 5, 10]), "paper.lambdas.values"),
        lambda_method=_method("csada", recipe, finetune, lambdas.get("csada"), "paper.lambdas.csada", dataset),
        convergence_replications=positive_int(convergence.get("replications", 5), "paper.convergence.replications"),
        convergence_method=_method("csada", recipe, finetune, convergence.get("csada"), "paper.convergence.csada",
                                   dataset),
        table_methods=tuple(_method(n, recipe, finetune, table.get(n), f"paper.table.{n}", dataset)
                            for n in table_names),
    )
