"""The claims page (results/paper.md of paper/dvc.yaml): each numbered claim of the paper that this
project can test, the paper's number, ours, and a verdict decided by a stated rule.

Every verdict comes from the experiments' outputs (results/*.json) by the rule printed before
it, so a rerun on other data or at paper scale rewrites the page, verdicts included. Each
experiment ran under several variants (pipeline.paper.protocols); the first variant's verdict is
the page's, the others stand beside it. The rules:

* a share removed comes with a 90% percentile bootstrap interval over the test samples;
  "significant" means that interval lies above 0;
* a prediction interval (PI) is the 90% interval for one further replication (the paper's Fig. 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable here"
# A method that removes critical errors by giving up accuracy elsewhere has not made the model
# cost-sensitive in the paper's sense: its accuracy may fall by at most this much (1 point).
ACCURACY_TOLERANCE = 0.01
DISPLAY = {"csada": "CSADA", "penalty": "Penalty (3)", "ap": "AP", "sosr": "SOSR", "baseline": "Baseline",
           "soft_labels": "Soft labels", "logit_adjusted": "Logit-adjusted CE"}


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _share(entry: Mapping[str, Any]) -> str:
    share = entry["removed_share"]
    if share["mean"] is None:
        return "no critical errors to remove"
    text = f"{_pct(share['mean'], 0)} [{_pct(share['lower'], 0)}, {_pct(share['upper'], 0)}]"
    return text + (" (zero width: every resample of the test set gives the same share)" if share.get("zero_width")
                   else "")


SETTING_NAMES = {"optimizer": "", "lr": "lr", "momentum": "momentum", "weight_decay": "wd", "batch_size": "batch",
                 "epochs": "epochs", "adv_weight": "lambda", "temperature": "tau", "eps": "eps", "steps": "K",
                 "step_size": "eta2", "step_rule": "steps:", "normalization": "norm.:", "bn": "BN", "passes": "passes:",
                 "alpha": "alpha", "beta": "beta", "pair_weights": "weights:"}


def settings_text(settings: Mapping[str, Any]) -> str:
    """A run's resolved settings in one line, for the page (every value; no default hidden)."""
    parts = []
    for key, label in SETTING_NAMES.items():
        if key in settings:
            value = settings[key]
            parts.append(f"{label} {value:g}".strip() if isinstance(value, float) else f"{label} {value}".strip())
    if settings.get("lr_step_epochs", 1_000_000) < 1_000_000:
        parts.append(f"lr x{settings['lr_gamma']:g} every {settings['lr_step_epochs']} epochs")
    parts.append("random crop" if settings.get("augment") else "no augmentation")
    if "input_clip" in settings:
        parts.append("inputs clipped to their range" if settings["input_clip"] else "eps-ball clip only")
    return ", ".join(parts)

def _significant(share: Mapping[str, Any]) -> bool:
    return share["mean"] is not None and share["n"] > 1 and share["lower"] > 0


def _no_gain(share: Mapping[str, Any]) -> bool:
    """No significant removal: the interval reaches 0 (or below), or nothing to remove."""
    return share["mean"] is None or share["n"] < 2 or share["lower"] <= 0


def _keeps_accuracy(result: Mapping[str, Any]) -> bool:
    return result["accuracy_change"] >= -ACCURACY_TOLERANCE


def toy_claims(toy: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    table1, harder = toy["table1"], toy["harder"]
    seeds = len(toy["seeds"])
    pushed = table1["pushed_to_blue"]
    rows = [(
        "Fig. 2 (sec. 4): after CSADA no green training point can be pushed to blue within the budget "
        "(L-inf, eps 1.5, K 5)",
        "none pushed (figure)",
        f"Table 1 data, {seeds} seed(s): {pushed['csada']} pushed after CSADA (baseline {pushed['baseline']}, "
        f"ERM control {pushed['erm']})",
        REPRODUCED if pushed["csada"] == 0 else NOT_REPRODUCED,
        "rule: zero pushed after CSADA; the converged baseline already has none here, so on Table 1 it shows "
        "little" if pushed["baseline"] == 0 else "rule: zero pushed after CSADA",
    )]
    errors, accuracy = harder["green_to_blue"], harder["accuracy"]
    fine = errors["csada"] < errors["erm"] and errors["csada"] <= errors["baseline"]
    rows.append((
        "Fig. 2d: CSADA removes the green -> blue test errors of a converged baseline, other classes unaffected",
        "baseline with several critical errors -> none (figure)",
        f"green/blue moved to (4, -6) / (-4, -6), {seeds} seed(s) pooled: baseline {errors['baseline']}, ERM control "
        f"{errors['erm']}, CSADA {errors['csada']} errors; accuracy {_pct(accuracy['baseline'], 2)} -> "
        f"{_pct(accuracy['csada'], 2)}",
        REPRODUCED if fine and errors["csada"] == 0 else (NOT_REPRODUCED if not fine else "partly reproduced"),
        "rule: CSADA leaves fewer than the ERM control and no more than the baseline; all removed for 'reproduced'"
        + ("; on Table 1 exactly the baseline makes no such errors"
           if table1["green_to_blue"]["baseline"] == 0 else ""),
    ))
    return rows


def pair_claims(pairs: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    zero, fit = pairs["baselines"]["zero_loss"], pairs["baselines"].get("fit")
    n_pairs, reps = len(pairs["pairs"]), pairs["replications"]
    rows = []
    penalty, csada = zero["methods"].get("penalty"), zero["methods"].get("csada")
    scope = f"{n_pairs} most-confused pairs, {reps} replications, from the zero-loss baseline"
    if penalty is not None:
        rows.append((
            "Figs. 1b, 3, 4 (sec. 1.1, 5.1): the penalty objective (3) does not reduce the critical pair's errors "
            "of a baseline that fits its training set",
            "no improvement over the baseline (figures)",
            f"{scope}: share of its {zero['critical_errors']} critical test errors removed {_share(penalty)}; "
            f"accuracy {_pct(zero['test_accuracy'], 2)} -> {_pct(penalty['test_accuracy'], 2)}",
            REPRODUCED if _no_gain(penalty["removed_share"]) else NOT_REPRODUCED,
            "rule: reproduced when the 90% CI of the removed share reaches 0",
        ))
    if csada is not None:
        better = penalty is None or (csada["removed_share"]["mean"] or 0) > (penalty["removed_share"]["mean"] or 0)
        rows.append((
            "Figs. 3, 4 (sec. 5.1): CSADA significantly reduces the critical pair's error rate",
            "significant reduction (figures)",
            f"{scope}: removed {_share(csada)}; accuracy {_pct(zero['test_accuracy'], 2)} -> "
            f"{_pct(csada['test_accuracy'], 2)}",
            REPRODUCED if _significant(csada["removed_share"]) and better and _keeps_accuracy(csada)
            else NOT_REPRODUCED,
            "rule: CI of the removed share above 0, more removed than by the penalty method, and at most 1 point "
            "of accuracy lost",
        ))
    if penalty is not None and csada is not None and fit is not None:
        reached = zero["reached"]
        verdict = (NOT_TESTABLE if not reached else
                   REPRODUCED if _no_gain(penalty["removed_share"]) and _significant(csada["removed_share"])
                   and _keeps_accuracy(csada) else NOT_REPRODUCED)
        fit_p, fit_c = fit["methods"]["penalty"], fit["methods"]["csada"]
        rows.append((
            "Sec. 1.1 (the central argument): once a model fits its training set, re-weighting the loss cannot make "
            "it cost-sensitive; CSADA can",
            "argument, shown by Fig. 1",
            f"removed by penalty / CSADA: from the baseline stopped at 100% training accuracy ({fit['epochs']} epochs, "
            f"training loss {fit['train_loss']:.1e}) {_share(fit_p)} / {_share(fit_c)}; from the zero-loss baseline "
            f"({zero['epochs']} epochs, training loss {zero['train_loss']:.1e}) {_share(penalty)} / {_share(csada)}",
            verdict,
            "rule: from the zero-loss baseline the penalty's CI reaches 0 and CSADA's is above 0, CSADA losing at "
            "most 1 point of accuracy"
            + ("" if reached else "; the zero-loss baseline did not reach its training loss within "
               "paper.baselines.max_epochs"),
        ))
    return rows


def lambda_claims(lambdas: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    values, curve, baseline = lambdas["lambdas"], lambdas["wer"], lambdas["baseline_wer"]
    trained = [i for i, v in enumerate(values) if v > 0]
    best = min(trained, key=lambda i: curve["mean"][i])
    largest = max(trained, key=lambda i: values[i])
    reduces = curve["upper"][best] < baseline
    rises = curve["mean"][largest] > curve["mean"][best] and largest != best
    return [(
        "Fig. 5 (sec. 5.2): as lambda grows the WER first falls below the baseline's, then rises beyond it; a "
        "suitable lambda reduces it significantly",
        "U-shaped curve, minimum well below the baseline (figure; CIFAR-10)",
        f"baseline {baseline:.4f}; best lambda {values[best]:g}: {curve['mean'][best]:.4f} (90% PI "
        f"{curve['lower'][best]:.4f} to {curve['upper'][best]:.4f}); largest lambda {values[largest]:g}: "
        f"{curve['mean'][largest]:.4f}",
        REPRODUCED if reduces and rises and curve["mean"][largest] > baseline else
        ("partly reproduced" if reduces or rises else NOT_REPRODUCED),
        "rule: the best lambda's PI is below the baseline's WER, and the largest lambda is worse than the best and "
        "than the baseline",
    )]


def convergence_claims(convergence: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    loss, wer, baseline = convergence["train_loss"], convergence["test_wer"], convergence["baseline_wer"]
    falls = loss["mean"][-1] < loss["mean"][0]
    lower = wer["upper"][-1] < baseline
    return [(
        "Fig. 6 (sec. 5.2): CSADA's training objective and its test WER both decrease significantly over the "
        "fine-tuning epochs",
        "both fall over 10 epochs, 10 replications (figure; CIFAR-10, lambda 2)",
        f"{wer['n']} replications: objective {loss['mean'][0]:.3f} -> {loss['mean'][-1]:.3f}; test WER {baseline:.4f} "
        f"(baseline) -> {wer['mean'][-1]:.4f} (90% PI {wer['lower'][-1]:.4f} to {wer['upper'][-1]:.4f})",
        REPRODUCED if falls and lower else ("partly reproduced" if falls or lower else NOT_REPRODUCED),
        "rule: the mean objective falls from the first epoch to the last, and the last epoch's WER PI is below the "
        "baseline's",
    )]


def table_claims(table: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    summary = table["summary"]
    wer = {m: summary[m]["argmax"]["wer"]["mean"] for m in summary}
    accuracy = {m: summary[m]["argmax"]["accuracy"]["mean"] for m in summary}
    methods = [m for m in wer if m != "baseline"]
    cells = ", ".join(f"{DISPLAY.get(m, m)} {wer[m] * 100:.2f}" for m in ["baseline", *methods])
    rows = []
    if "csada" in wer:
        drop = accuracy["baseline"] - accuracy["csada"]
        rows.append((
            "Tables 3, 4 (sec. 5.2): CSADA has the lowest WER of the methods, at about the baseline's accuracy",
            "CIFAR-10 WER % 5.49 -> 4.20 (AP 5.07, SOSR 5.12), accuracy 95.70 -> 95.54; MNIST 0.46 -> 0.25 "
            "(AP 0.44, SOSR 0.43), accuracy 99.67 -> 99.62",
            f"test WER % under argmax, mean of {table['replications']}: {cells}; accuracy "
            f"{_pct(accuracy['baseline'], 2)} -> {_pct(accuracy['csada'], 2)}",
            REPRODUCED if all(wer["csada"] < wer[m] for m in ["baseline", *methods] if m != "csada") and drop <= 0.005
            else NOT_REPRODUCED,
            "rule: CSADA's mean WER is the lowest and below the baseline's, losing at most half a point of accuracy",
        ))
    return rows


PMI_ROW = ("Tables 5-7 (sec. 5.3): on the PMI pill images CSADA cuts the expert-weighted cost the most",
           "Tables 5-7", "the PMI archive is not supplied to this run (run the project's pipeline with "
           "dataset=pmi and data.source=<archive>)", NOT_TESTABLE,
           "the archive cannot be downloaded here; the project's pipeline reproduces the tables' layout")


def variant_views(pairs: Mapping[str, Any], lambdas: Mapping[str, Any], convergence: Mapping[str, Any],
                  table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant label, each experiment's outputs as the claim functions read them."""
    views = {}
    for label, entry in pairs["variants"].items():
        views[label] = {
            "pairs": {"pairs": pairs["pairs"], "replications": pairs["replications"],
                      "baselines": {base: {**pairs["baselines"][base], **part}
                                    for base, part in entry["baselines"].items()}},
            "lambdas": {"lambdas": lambdas["lambdas"], "baseline_wer": lambdas["baseline_wer"],
                        "replications": lambdas["replications"], **lambdas["variants"][label]},
            "convergence": {"baseline_wer": convergence["baseline_wer"], **convergence["variants"][label]},
            "table": {"replications": table["replications"], **table["variants"][label]},
            "settings": {"pairs": entry["settings"], "lambdas": lambdas["variants"][label]["settings"],
                         "convergence": convergence["variants"][label]["settings"],
                         "table": table["variants"][label]["settings"]},
        }
    return views


def _claim_rows(view: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(claim, paper, ours, verdict, rule, settings) for one variant."""
    settings = view["settings"]

    def with_settings(rows: list, experiment: str) -> list:
        # lambdas and convergence run CSADA alone: their settings are one record, the others' one per method
        per_method = settings[experiment] if experiment in ("pairs", "table") else {"csada": settings[experiment]}
        text = "; ".join(f"{DISPLAY.get(m, m)}: {settings_text(v)}" for m, v in per_method.items())
        return [(*row, text) for row in rows]

    return [*with_settings(pair_claims(view["pairs"]), "pairs"), *with_settings(lambda_claims(view["lambdas"]), "lambdas"),
            *with_settings(convergence_claims(view["convergence"]), "convergence"),
            *with_settings(table_claims(view["table"]), "table")]


def _claims_table(toy_rows: list, views: Mapping[str, Mapping[str, Any]], verdict_label: str) -> list[str]:
    others = [label for label in views if label != verdict_label]
    lines = [f"| claim | paper | rule | ours ({verdict_label}) | verdict | "
             + " | ".join(others) + " |", "|---|---|---|---|---|" + "---|" * len(others)]
    rows = {label: {row[0]: row for row in _claim_rows(view)} for label, view in views.items()}
    for claim, paper, ours, verdict, why in toy_rows:
        lines.append(f"| {claim} | {paper} | {why} | {ours} | **{verdict}** |" + " (same runs) |" * len(others))
    for claim, (_, paper, ours, verdict, why, settings) in rows[verdict_label].items():
        cells = [f"{rows[o][claim][3]}: {rows[o][claim][2]}" if claim in rows[o] else "not run" for o in others]
        lines.append(f"| {claim} | {paper} | {why} | {ours}<br>*settings:* {settings} | **{verdict}** | "
                     + " | ".join(cells) + " |")
    claim, paper, ours, verdict, why = PMI_ROW
    lines.append(f"| {claim} | {paper} | {why} | {ours} | **{verdict}** |" + " |" * len(others))
    return lines


def _setting_lines(setting: Mapping[str, Any], pairs: Mapping[str, Any]) -> list[str]:
    zero, fit = pairs["baselines"]["zero_loss"], pairs["baselines"]["fit"]
    return [
        f"**Ours:** {setting['dataset']} ({setting['description']}), model `{setting['model']}`, "
        f"{setting['classes']} classes; {setting['train']} training / {setting['val']} validation / "
        f"{setting['test']} test samples. Every fine-tuning run here keeps its **last** epoch (the authors' code "
        "scores the test set after each epoch; the last is the natural reading); the project's own pipeline "
        "instead searches each method's settings and keeps the epoch of lowest validation WER. The paper used "
        "ResNet-34 on MNIST and CIFAR-10 on GPUs.",
        "",
        f"**Baselines (section 1.1):** stopped at the first epoch of 100% training accuracy: {fit['epochs']} "
        f"epochs, training accuracy {_pct(fit['train_accuracy'], 2)}, loss {fit['train_loss']:.1e}, test accuracy "
        f"{_pct(fit['test_accuracy'], 2)}; trained to zero training loss (the paper's, loss below "
        f"{setting['zero_loss']:g}): {zero['epochs']} epochs, training accuracy {_pct(zero['train_accuracy'], 2)}, "
        f"loss {zero['train_loss']:.1e}" + ("" if zero["reached"] else " (**criterion not reached**)")
        + f", test accuracy {_pct(zero['test_accuracy'], 2)}.",
    ]


def _pair_lines(pairs: Mapping[str, Any]) -> list[str]:
    lines = [
        "Critical pairs (true -> predicted), the zero-loss baseline's most confused on validation: "
        + ", ".join(f"{y} -> {z}" for y, z in pairs["pairs"]) + f". {pairs['replications']} replications per "
        "pair and method; every run in `pairs.csv`.",
        "",
        "| from the baseline | method | critical test errors (mean per replication) | share removed [90% bootstrap] | "
        "accuracy change (points) |",
        "|---|---|---:|---:|---:|",
    ]
    for base, entry in pairs["baselines"].items():
        lines.append(f"| {base} | baseline | {entry['critical_errors']} | | |")
        for method, result in entry["methods"].items():
            lines.append(f"| {base} | {DISPLAY.get(method, method)} | {result['critical_errors']:.1f} | "
                         f"{_share(result)} | {result['accuracy_change'] * 100:+.2f} |")
    return lines


def _lambda_lines(lambdas: Mapping[str, Any]) -> list[str]:
    wer, accuracy = lambdas["wer"], lambdas.get("accuracy")
    rows = [f"| {v:g} | {m:.4f} | {lo:.4f} to {hi:.4f} |" + (f" {accuracy['mean'][i] * 100:.2f} |" if accuracy else "")
            for i, (v, m, lo, hi) in enumerate(zip(lambdas["lambdas"], wer["mean"], wer["lower"], wer["upper"]))]
    return [
        f"CSADA on the data set's cost matrix from the zero-loss baseline, {lambdas['replications']} replications "
        f"per lambda; lambda 0 is the baseline. Settings: {settings_text(lambdas['settings'])}.",
        "",
        "| lambda | test WER, mean | 90% PI |" + (" test accuracy % |" if accuracy else ""),
        "|---:|---:|---:|" + ("---:|" if accuracy else ""),
        *rows,
    ]


CITATION = ("Qiyuan Chen, Raed Al Kontar, Maher Nouiehed, X. Jessie Yang and Corey Lester, *Rethinking "
            "Cost-sensitive Classification in Deep Learning via Adversarial Data Augmentation*, INFORMS Journal on "
            "Data Science 4(1), 2024 (doi 10.1287/ijds.2022.0033; arXiv:2208.11739)")


def _ablation_lines(ablation: Mapping[str, Any]) -> list[str]:
    lines = [
        f"From the zero-loss baseline, on each of its {len(ablation['pairs'])} most-confused pairs ("
        + ", ".join(f"{y} -> {z}" for y, z in ablation["pairs"]) + f"; cost 1 on that pair only), "
        f"{ablation['seeds']} seeds: CSADA under the authors' pair-sweep protocol (learning rate x"
        f"{ablation['lr_scale']:g}), then with one factor changed, and ERM with the same optimiser as the control. "
        "On the data set's Pareto costs (`pareto/`): tau 3 (the authors' value for section 5.2) against tau 1, and "
        "the error-aware pair weights (beyond the paper). Where the accuracy went: the change in test errors on the "
        "samples of the pair's predicted class z, and on every other class. The attack: of the samples handed to "
        "Algorithm 1, the share that reached z, that a step would have taken to a third class (rejected) and that "
        "it skipped (misclassified to begin with); per epoch in `attack.csv`.",
        "",
        "| arm | critical errors removed [90% bootstrap] | accuracy change (points) | errors on z / elsewhere | "
        "test WER (Pareto costs) | attack: reached z / rejected / skipped | settings |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for arm, entry in ablation["arms"].items():
        attack = entry.get("attack") or {}
        moved = (f"{entry['errors_on_z']:+.1f} / {entry['errors_elsewhere']:+.1f}" if "errors_on_z" in entry else "")
        shares = " / ".join(_pct(attack[k], 0) for k in ("reached_z", "rejected", "skipped")) if attack else "no attack"
        lines.append(f"| {arm} | {_share(entry)} | {entry['accuracy_change'] * 100:+.2f} | {moved} | "
                     f"{entry['wer']:.4f} | {shares} | {settings_text(entry['settings'])} |")
    lines += ["", "On `pareto/` rows the share is of the baseline's total test cost, not of a pair's errors.",
              "", "![The ablation](figures/ablation.png)"]
    return lines


def _per_variant(views: Mapping[str, Mapping[str, Any]], render: Any) -> list[str]:
    """One subsection per variant, each rendered by ``render(view)``."""
    return [line for label, view in views.items() for line in (f"### {label}", "", *render(view), "")]


def render_claims(setting: Mapping[str, Any], toy: Mapping[str, Any], pairs: Mapping[str, Any],
                  lambdas: Mapping[str, Any], convergence: Mapping[str, Any], table: Mapping[str, Any],
                  ablation: Mapping[str, Any], table_lines: list[str]) -> str:
    """results/paper.md: the claims table, then each experiment's setting, the ablation and figures."""
    views = variant_views(pairs, lambdas, convergence, table)
    verdict_label = pairs["verdict_variant"]
    verdict = views[verdict_label]
    lines = [
        "# The paper's claims, tested",
        "",
        f"{CITATION}. Written by `paper/dvc.yaml` (stage `paper_claims`) from the experiments' outputs in "
        "`paper/results/`; every verdict follows the rule before it.",
        "",
        *_setting_lines(setting, verdict["pairs"]),
        "",
        "**Variants.** Every experiment ran under each of: " + ", ".join(f"`{label}`" for label in views)
        + f". `authors` is what the paper's text and the authors' public code do for that experiment "
        "(`pipeline/paper/protocols.py` says where each value comes from); `product` is the data set's recipe. "
        "`-lr10x` multiplies every learning rate by 10: our 6,000 training images give a tenth of the "
        "optimiser steps per epoch that MNIST's 60,000 gave the authors. **The verdicts are "
        f"`{verdict_label}`'s**, decided before the runs; the other variants' verdicts stand beside them.",
        "",
        "## Claims",
        "",
        *_claims_table(toy_claims(toy), views, verdict_label),
        "",
        "Intervals: [a, b] after a share removed is a 90% percentile bootstrap over the test samples; PI is the 90% "
        "prediction interval for one further replication. A difference whose interval includes 0 is within noise.",
        "",
        "## What moves CSADA: the ablation",
        "",
        *_ablation_lines(ablation),
        "",
        "## Figure 2: the toy problem (section 4)",
        "",
        "![Figure 2, Table 1 data](figures/figure2.png)",
        "",
        "![Figure 2, green and blue moved inwards](figures/figure2_harder.png)",
        "",
        "## Figures 1, 3, 4: the pair sweep (section 5.1) and the over-parameterisation test (section 1.1)",
        "",
    ]
    lines += _per_variant(views, lambda view: _pair_lines(view["pairs"]))
    lines += [
        f"![Pair sweep from the zero-loss baseline ({verdict_label})](figures/pairs_zero_loss.png)",
        "",
        f"![Pair sweep from the baseline stopped at 100% training accuracy ({verdict_label})](figures/pairs_fit.png)",
        "",
        "## Figure 5: lambda (section 5.2)",
        "",
    ]
    lines += _per_variant(views, lambda view: _lambda_lines(view["lambdas"]))
    lines += [
        f"![Test WER against lambda ({verdict_label})](figures/lambdas.png)",
        "",
        "## Figure 6: convergence (section 5.2)",
        "",
        f"![Training objective and test WER per epoch ({verdict_label})](figures/convergence.png)",
        "",
        "## Tables 3 and 4: the methods compared (section 5.2)",
        "",
        f"Test split, decision by argmax (as in the paper), mean (sd) over {table['replications']} replications, "
        f"`{verdict_label}`; every variant's summary and settings are in `table.json`.",
        "",
        *table_lines,
        "",
    ]
    return "\n".join(lines)


def headline(toy: Mapping[str, Any], pairs: Mapping[str, Any], lambdas: Mapping[str, Any],
             convergence: Mapping[str, Any], table: Mapping[str, Any], ablation: Mapping[str, Any]) -> dict[str, Any]:
    """The experiments' DVC metric (results/metrics.json): a few numbers per experiment under the
    verdict's variant, so that ``dvc metrics show`` stays readable; everything else is in their JSONs."""
    label = pairs["verdict_variant"]
    view = variant_views(pairs, lambdas, convergence, table)[label]
    wer = view["lambdas"]["wer"]
    best = min(range(len(wer["mean"])), key=wer["mean"].__getitem__)
    return {"paper": {
        "variant": label,
        "pairs": {base: {method: {"removed": result["removed_share"]["mean"],
                                  "accuracy_change": result["accuracy_change"]}
                         for method, result in entry["methods"].items()}
                  for base, entry in view["pairs"]["baselines"].items()},
        "lambdas": {"best": lambdas["lambdas"][best], "best_wer": wer["mean"][best],
                    "baseline_wer": lambdas["baseline_wer"]},
        "convergence": {"last_wer": view["convergence"]["test_wer"]["mean"][-1],
                        "baseline_wer": convergence["baseline_wer"]},
        "table": {method: rules["argmax"]["wer"]["mean"] for method, rules in view["table"]["summary"].items()},
        "ablation": {arm: entry["removed_share"]["mean"] for arm, entry in ablation["arms"].items()},
        "toy": {name: toy["harder"]["green_to_blue"][name] for name in ("baseline", "erm", "csada")},
    }}  # one top key: every column of paper/'s `dvc exp show` reads paper.<experiment>.<number>
