"""The training methods by name: ERM (the baseline), CSADA (:mod:`.csada`), the penalty method,
AP and SOSR (:mod:`.losses`), cost-aware soft labels and the logit-adjusted loss (:mod:`.peers`).

Each method is a small object with one call, ``loss(model, x, y) -> (loss, stats)``, so one
training loop serves them all. What a method needs from the run that builds it (the cost matrix,
the valid input range, a seed) arrives once, at build time, in a ``MethodContext``;
``start_epoch(seed)`` is its per-epoch hook. Nothing outside this module asks which method it
is. ``stats`` holds detached scalar tensors (no ``.item()`` on the hot path: the loop decides
when to synchronise); keys starting with ``n_`` are counts, which the loop sums, the others are
batch means, which it averages. A method that needs a different output layer (SOSR) says so in
``prepare_model``. Costs enter as a K x K tensor ``cost`` with c(y, z) in row y, column z.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pipeline.method.csada import CSADA
from pipeline.method.losses import ERM, SOSR, AdjustedPenalty, MethodContext, MethodError, Penalty, TrainingMethod
from pipeline.method.peers import LogitAdjusted, SoftLabels

# Options that come from the run (the MethodContext), never from params.yaml.
_CONTEXT_FIELDS = frozenset({"cost", "clamp", "seed", "name"})


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class and how the run's context fills the class's fields."""

    cls: type
    needs_cost: bool = True
    # What a report should say when the model's scores are not calibrated logits.
    scores_note: str | None = None

    def options(self) -> tuple[str, ...]:
        """The method's own options (params.yaml's ``finetune.<method>`` keys besides optimisation)."""
        return tuple(f.name for f in fields(self.cls) if f.init and f.name not in _CONTEXT_FIELDS)

    def build(self, context: MethodContext, options: Mapping[str, Any]) -> TrainingMethod:
        given = {f.name for f in fields(self.cls) if f.init}
        provided = {"cost": context.cost, "clamp": context.input_bounds, "seed": context.seed}
        return self.cls(**{k: v for k, v in provided.items() if k in given}, **options)


METHODS: dict[str, MethodSpec] = {
    "erm": MethodSpec(ERM, needs_cost=False),
    "csada": MethodSpec(CSADA),
    "ap": MethodSpec(AdjustedPenalty),
    "sosr": MethodSpec(SOSR, scores_note="SOSR's scores are negated regressed costs, not log-probabilities, so "
                                         "the softmax behind this rule is only a heuristic for SOSR."),
    "penalty": MethodSpec(Penalty),
    "soft_labels": MethodSpec(SoftLabels, scores_note="soft_labels trains its softmax towards a cost-smoothed "
                                                      "posterior (the soft targets averaged over p(y | x)), so this "
                                                      "rule applies the costs a second time: a heuristic for it."),
    "logit_adjusted": MethodSpec(LogitAdjusted, scores_note="logit_adjusted's softmax estimates normalised expected "
                                                            "gains, not class probabilities; its argmax already is the "
                                                            "cost-optimal decision, so this rule is only a heuristic "
                                                            "for it."),
}
def learning_rate_key(method: str) -> str:
    """Where params.yaml sets a method's learning rate (for messages): ERM is the baseline's."""
    return f"finetune.{method}.lr" if METHODS[method].needs_cost else "baseline.lr"


# The fine-tuning methods a user can pick (ERM is the baseline).
FINETUNE_METHODS: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.needs_cost)


def build_method(name: str, options: Mapping[str, Any] | None = None,
                 context: MethodContext = MethodContext()) -> TrainingMethod:
    """A training method by name; unknown names and options fail with the valid ones listed."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    spec = METHODS[name]
    if spec.needs_cost and context.cost is None:
        raise MethodError(f"method {name!r} needs a cost matrix (MethodContext.cost)")
    unknown = sorted(set(options or {}) - set(spec.options()))
    if unknown:
        raise MethodError(f"invalid options {unknown} for method {name!r}; valid: "
                         f"{', '.join(spec.options()) or 'none'}")
    return spec.build(context, dict(options or {}))
