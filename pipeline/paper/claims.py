"""The paper's claims that this project can test: for each, the paper's number, ours, and a verdict
decided by a stated rule (the page that shows them is :mod:`pipeline.paper.page`).

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

REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE = (
    "reproduced", "partly reproduced", "not reproduced", "not testable here")
# A method that removes critical errors by giving up accuracy elsewhere has not made the model
# cost-sensitive in the paper's sense: its accuracy may fall by at most this much (1 point).
ACCURACY_TOLERANCE = 0.01
DISPLAY = {"csada": "CSADA", "penalty": "Penalty (3)", "ap": "AP", "sosr": "SOSR", "baseline": "Baseline",
           "soft_labels": "Soft labels", "logit_adjusted": "Logit-adjusted CE"}


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


ZERO_WIDTH = "†"  # after an interval of zero width; ZERO_WIDTH_NOTE says why, once per table
ZERO_WIDTH_NOTE = (f"{ZERO_WIDTH} Zero width: every seed left the same critical errors on the same test samples (at "
                   "100%: none), so every bootstrap resample of the test set gives the same share; with so few errors "
                   "the interval says nothing beyond them.")


def with_zero_width_note(lines: list[str]) -> list[str]:
    """A table's lines, followed by :data:`ZERO_WIDTH_NOTE` when one of its intervals has zero width."""
    return [*lines, "", ZERO_WIDTH_NOTE] if any(ZERO_WIDTH in line for line in lines) else lines


def share_text(entry: Mapping[str, Any]) -> str:
    share = entry["removed_share"]
    if share["mean"] is None:
        return "no critical errors to remove"
    text = f"{pct(share['mean'], 0)} [{pct(share['lower'], 0)}, {pct(share['upper'], 0)}]"
    return text + (ZERO_WIDTH if share.get("zero_width") else "")


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
        f"{errors['erm']}, CSADA {errors['csada']} errors; accuracy {pct(accuracy['baseline'], 2)} -> "
        f"{pct(accuracy['csada'], 2)}",
        REPRODUCED if fine and errors["csada"] == 0 else (NOT_REPRODUCED if not fine else PARTLY),
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
            f"{scope}: share of its {zero['critical_errors']} critical test errors removed {share_text(penalty)}; "
            f"accuracy {pct(zero['test_accuracy'], 2)} -> {pct(penalty['test_accuracy'], 2)}",
            REPRODUCED if _no_gain(penalty["removed_share"]) else NOT_REPRODUCED,
            "rule: reproduced when the 90% CI of the removed share reaches 0",
        ))
    if csada is not None:
        better = penalty is None or (csada["removed_share"]["mean"] or 0) > (penalty["removed_share"]["mean"] or 0)
        rows.append((
            "Figs. 3, 4 (sec. 5.1): CSADA significantly reduces the critical pair's error rate",
            "significant reduction (figures)",
            f"{scope}: removed {share_text(csada)}; accuracy {pct(zero['test_accuracy'], 2)} -> "
            f"{pct(csada['test_accuracy'], 2)}",
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
            f"training loss {fit['train_loss']:.1e}) {share_text(fit_p)} / {share_text(fit_c)}; from the zero-loss "
            f"baseline ({zero['epochs']} epochs, training loss {zero['train_loss']:.1e}) {share_text(penalty)} / "
            f"{share_text(csada)}",
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
    dips = curve["mean"][best] < baseline
    reduces = curve["upper"][best] < baseline
    rises = curve["mean"][largest] > curve["mean"][best] and largest != best
    if reduces and rises and curve["mean"][largest] > baseline:
        verdict = REPRODUCED
    elif dips and (rises or reduces):  # the U's shape without its significance, or the dip alone
        verdict = PARTLY
    else:  # no lambda below the baseline: the curve only rises (or stays flat)
        verdict = NOT_REPRODUCED
    return [(
        "Fig. 5 (sec. 5.2): as lambda grows the WER first falls below the baseline's, then rises beyond it; a "
        "suitable lambda reduces it significantly",
        "U-shaped curve, minimum well below the baseline (figure; CIFAR-10)",
        f"baseline {baseline:.4f}; best lambda {values[best]:g}: {curve['mean'][best]:.4f} (90% PI "
        f"{curve['lower'][best]:.4f} to {curve['upper'][best]:.4f}); largest lambda {values[largest]:g}: "
        f"{curve['mean'][largest]:.4f}",
        verdict,
        "rule: the best lambda's PI is below the baseline's WER, and the largest lambda is worse than the best and "
        "than the baseline; partly when the best lambda's mean is below the baseline's but not its PI, or when the "
        "curve dips significantly and does not rise; not reproduced when no lambda's mean is below the baseline's",
    )]


def convergence_claims(convergence: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    loss, wer, baseline = convergence["train_loss"], convergence["test_wer"], convergence["baseline_wer"]
    falls = loss["mean"][-1] < loss["mean"][0]
    lower = wer["upper"][-1] < baseline
    below = wer["mean"][-1] < baseline
    # Any training lowers its own objective: without the WER falling too, that is not the claim.
    verdict = REPRODUCED if falls and lower else PARTLY if falls and below else NOT_REPRODUCED
    return [(
        "Fig. 6 (sec. 5.2): CSADA's training objective and its test WER both decrease significantly over the "
        "fine-tuning epochs",
        "both fall over 10 epochs, 10 replications (figure; CIFAR-10, lambda 2)",
        f"{wer['n']} replications: objective {loss['mean'][0]:.3f} -> {loss['mean'][-1]:.3f}; test WER {baseline:.4f} "
        f"(baseline) -> {wer['mean'][-1]:.4f} (90% PI {wer['lower'][-1]:.4f} to {wer['upper'][-1]:.4f})",
        verdict,
        "rule: the mean objective falls from the first epoch to the last, and the last epoch's WER PI is below the "
        "baseline's; partly when it falls and the last epoch's mean WER is below the baseline's but not its PI; not "
        "reproduced when the WER ends at or above the baseline's",
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
            f"{pct(accuracy['baseline'], 2)} -> {pct(accuracy['csada'], 2)}",
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
