"""params.yaml's ``paper`` section: the settings of the paper's experiments (paper/dvc.yaml).

Every experiment run follows the paper's protocol: it fine-tunes a fixed number of epochs and
keeps the last one (the product's own runs keep their best epoch on validation instead). Each
run's settings come from a variant (a protocol of :mod:`pipeline.paper.protocols` and a
learning-rate scale), then the experiment's own overrides (``paper.pairs.csada`` etc.), checked
like any other training section. The first variant decides the claims page's verdicts; the
others are shown beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pipeline.method.registry import FINETUNE_METHODS, METHODS
from pipeline.paper.protocols import PROTOCOLS, Variant, protocol_settings
from pipeline.validation import (
    OPTIM_KEYS,
    MethodConfig,
    as_mapping,
    check_keys,
    check_value,
    invalid,
    positive_int,
    resolve_training,
)

# The ablation's arms: the authors' pair-sweep protocol with one factor changed (or ERM in place
# of CSADA), and on the data set's (Pareto) costs the pair weighting.
ABLATION_PAIR_ARMS: dict[str, dict[str, Any]] = {
    "authors": {},
    "adam": {"optimizer": "adam", "lr": 1e-4, "momentum": 0.9},  # Adam at the product's rate, unscaled
    "sign_steps": {"step_rule": "steepest"},
    "bn_train": {"bn": "train"},
    "unbiased": {"normalization": "unbiased"},
}
ABLATION_COST_ARMS: dict[str, dict[str, Any]] = {
    "tau3": {"temperature": 3.0},
    "tau1": {"temperature": 1.0},
    "errors_tau3": {"temperature": 3.0, "pair_weights": "errors"},
}


@dataclass(frozen=True)
class AblationConfig:
    pairs: int  # the pairs the zero-loss baseline confuses most on validation
    seeds: int
    pair_arms: Mapping[str, MethodConfig]  # arm -> CSADA (or ERM, arm "erm") on one costly pair
    cost_arms: Mapping[str, MethodConfig]  # arm -> CSADA (or ERM) on the data set's cost matrix


@dataclass(frozen=True)
class PaperConfig:
    variants: tuple[Variant, ...]  # every experiment runs under each; the first decides the verdicts
    replications: int  # of every fine-tuning run (the convergence experiment has its own)
    baseline_max_epochs: int  # the most epochs either baseline of section 1.1 trains
    zero_loss: float  # the over-parameterised baseline trains until its training loss is below this
    top_pairs: int  # pair sweep: the pairs the baseline confuses most on validation; 0: every ordered pair
    pair_methods: Mapping[str, tuple[MethodConfig, ...]]  # variant label -> methods
    lambdas: tuple[float, ...]  # lambda sweep; 0 is the baseline itself
    lambda_method: Mapping[str, MethodConfig]  # CSADA as the lambda sweep runs it (adv_weight set per value)
    convergence_replications: int
    convergence_method: Mapping[str, MethodConfig]
    table_methods: Mapping[str, tuple[MethodConfig, ...]]  # Tables 3/4: each method on the data set's costs
    ablation: AblationConfig  # under the first variant's learning-rate scale, the authors' protocol

    @property
    def verdict(self) -> Variant:
        return self.variants[0]


def _method(experiment: str, name: str, variant: Variant, recipe: Mapping[str, Any], overrides: Any, where: str,
            dataset: str, extra: Mapping[str, Any] | None = None) -> MethodConfig:
    """One method of one experiment under one variant: protocol, then ``extra`` (an ablation's
    change), then params.yaml's overrides; the learning rate times the variant's scale."""
    own = as_mapping(overrides, where)
    try:
        base = protocol_settings(experiment, name, variant, recipe)
    except KeyError as error:
        raise invalid(where, own or name, str(error.args[0])) from None
    allowed = set(OPTIM_KEYS) | set(METHODS[name].options())
    optim, options = resolve_training(base, {**(extra or {}), **own}, where, allowed, dataset)
    if "lr" not in own and not (extra and "lr" in extra):  # a rate given explicitly is taken as it is
        optim = replace(optim, lr=float(f"{optim.lr * variant.lr_scale:.6g}"))  # 5e-6, not 4.9999999999999996e-06
    return MethodConfig(name=name, optim=optim, options=options)


def _variants(value: Any) -> tuple[Variant, ...]:
    key = "paper.variants"
    if not isinstance(value, list) or not value:
        raise invalid(key, value, "expected a non-empty list of {protocol: authors|product, lr_scale: number}")
    variants = []
    for n, item in enumerate(value):
        item = as_mapping(item, f"{key}[{n}]")
        check_keys(item, {"protocol", "lr_scale"}, f"{key}[{n}]")
        protocol = item.get("protocol")
        if protocol not in PROTOCOLS:
            raise invalid(f"{key}[{n}].protocol", protocol, f"valid: {', '.join(PROTOCOLS)}")
        scale = check_value(f"{key}[{n}].lr_scale", "lr", item.get("lr_scale", 1.0))
        variants.append(Variant(protocol, scale))
    if len({v.label for v in variants}) != len(variants):
        raise invalid(key, value, "each variant may appear once")
    return tuple(variants)


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
    check_keys(section, {"variants", "replications", "baselines", "pairs", "lambdas", "convergence", "table",
                         "ablation"}, "paper")
    variants = _variants(section.get("variants", [{"protocol": "authors", "lr_scale": 1.0}]))
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

    def per_variant(experiment: str, name: str, part: Mapping[str, Any]) -> dict[str, MethodConfig]:
        return {v.label: _method(experiment, name, v, recipe, part.get(name), f"paper.{experiment}.{name}", dataset)
                for v in variants}

    pair_methods = [per_variant("pairs", n, pairs) for n in names]
    table_methods = [per_variant("table", n, table) for n in table_names]
    return PaperConfig(
        variants=variants,
        replications=positive_int(section.get("replications", 3), "paper.replications"),
        baseline_max_epochs=positive_int(baselines.get("max_epochs", 60), "paper.baselines.max_epochs"),
        zero_loss=float(zero_loss),
        top_pairs=positive_int(pairs.get("top", 10), "paper.pairs.top", minimum=0),
        pair_methods={v.label: tuple(m[v.label] for m in pair_methods) for v in variants},
        lambdas=_number_list(lambdas.get("values", [0, 1, 2, 5, 10]), "paper.lambdas.values"),
        lambda_method=per_variant("lambdas", "csada", lambdas),
        convergence_replications=positive_int(convergence.get("replications", 5), "paper.convergence.replications"),
        convergence_method=per_variant("convergence", "csada", convergence),
        table_methods={v.label: tuple(m[v.label] for m in table_methods) for v in variants},
        ablation=_ablation(as_mapping(section.get("ablation"), "paper.ablation"), variants[0], recipe, dataset),
    )


def _ablation(section: Mapping[str, Any], verdict: Variant, recipe: Mapping[str, Any], dataset: str) -> AblationConfig:
    """The ablation's arms, always from the authors' protocol at the verdict's learning-rate scale."""
    check_keys(section, {"pairs", "seeds", "csada", "erm"}, "paper.ablation")
    variant = Variant("authors", verdict.lr_scale)

    def arm(name: str, change: Mapping[str, Any], where: str) -> MethodConfig:
        # params.yaml's overrides (paper.ablation.csada / .erm) size every arm; the arm's factor wins
        own = as_mapping(section.get(name), f"paper.ablation.{name}")
        return _method("ablation", name, variant, recipe, None, where, dataset, extra={**own, **change})

    erm = arm("erm", {}, "paper.ablation.erm")
    pair_arms = {label: arm("csada", change, f"paper.ablation.{label}") for label, change in ABLATION_PAIR_ARMS.items()}
    cost_arms = {label: arm("csada", change, f"paper.ablation.{label}") for label, change in ABLATION_COST_ARMS.items()}
    return AblationConfig(pairs=positive_int(section.get("pairs", 5), "paper.ablation.pairs"),
                          seeds=positive_int(section.get("seeds", 3), "paper.ablation.seeds"),
                          pair_arms={**pair_arms, "erm": erm}, cost_arms={**cost_arms, "erm": erm})
