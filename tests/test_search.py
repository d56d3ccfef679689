"""The validation search's own logic: spaces, scores, the choice, and what finetune runs from it."""

import dataclasses
import math

import pytest

from pipeline.cluster.search import (
    SEARCH_SPACES,
    Choice,
    Dimension,
    SearchError,
    TrialRecord,
    accuracy_floor,
    apply_choice,
    best_trial,
    chosen_settings,
    search_score,
    search_space,
    starting_point,
)
from pipeline.config import MethodConfig, load_config
from pipeline.method.registry import FINETUNE_METHODS, METHODS
from pipeline.runs.optim import OptimConfig

CSADA = MethodConfig(name="csada", optim=OptimConfig(epochs=8, lr=1e-4),
                     options={"adv_weight": 2.0, "temperature": 3.0, "eps": 50.0, "steps": 10, "step_size": 0.05})


def trial(number, score, epoch=3, values=None, error=None):
    return TrialRecord(number=number, values=values or {"lr": 1e-3}, epochs_run=epoch + 1, best_epoch=epoch,
                       score=score, val_wer=score, val_accuracy=0.9, feasible=True, stopped_early=False, error=error)


def test_every_fine_tuning_method_has_a_search_space_of_its_own_settings():
    assert set(SEARCH_SPACES) == set(FINETUNE_METHODS)
    optim = set(OptimConfig.__dataclass_fields__)
    for name, space in SEARCH_SPACES.items():
        assert "lr" in space
        assert set(space) <= optim | set(METHODS[name].options()), name
        ranges = [d for d in space.values() if isinstance(d, Dimension)]
        assert all(d.kind in ("log", "int") and 0 < d.low < d.high for d in ranges)
        choices = [(key, d) for key, d in space.items() if not isinstance(d, Dimension)]
        assert all(isinstance(d, Choice) and len(d.values) >= 2 for _, d in choices), name
    assert SEARCH_SPACES["csada"]["pair_weights"] == Choice(("cost", "errors"))  # beyond the paper: item 6


def test_the_space_starts_at_the_recipe_widens_to_it_and_leaves_pinned_keys_alone():
    # pair_weights is not in the recipe: the search starts from CSADA's own default, "cost"
    assert starting_point(CSADA) == {"lr": 1e-4, "adv_weight": 2.0, "temperature": 3.0, "eps": 50.0, "steps": 10,
                                     "pair_weights": "cost"}
    space = search_space(CSADA)
    assert space["eps"] == Dimension("log", 0.1, 50.0)  # the recipe's 50 lies beyond the default 10
    assert space["pair_weights"] == Choice(("cost", "errors"))
    assert Choice(("cost",)).widened("errors") == Choice(("cost", "errors"))
    assert space["pair_weights"].described() == ["choice", "cost", "errors"]  # as chosen.json records it
    assert space["steps"].described() == ["int", 2, 15]
    assert space["lr"] == SEARCH_SPACES["csada"]["lr"]
    pinned = dataclasses.replace(CSADA, pinned=frozenset({"adv_weight", "lr"}))
    assert set(search_space(pinned)) == {"temperature", "eps", "steps", "pair_weights"}


def test_a_recipe_without_a_searched_setting_fails_by_name():
    bare = MethodConfig(name="ap", optim=OptimConfig(epochs=3), options={})
    with pytest.raises(SearchError, match="alpha is not set; add it to the recipe's ap section"):
        search_space(bare)


def test_the_score_puts_every_setting_that_loses_accuracy_behind_every_one_that_does_not():
    floor, max_cost = 0.9, 10.0
    assert search_score(0.5, 0.95, floor, max_cost) == 0.5
    assert search_score(0.5, 0.9, floor, max_cost) == 0.5  # at the floor is allowed
    worst_feasible = search_score(max_cost, 0.9, floor, max_cost)  # WER never exceeds the largest cost
    best_infeasible = search_score(0.0, 0.8999, floor, max_cost)
    assert best_infeasible > worst_feasible
    assert search_score(0.1, 0.5, floor, max_cost) > search_score(0.1, 0.8, floor, max_cost)


def test_the_accuracy_floor_is_the_baseline_at_its_selected_epoch_minus_the_allowed_drop():
    history = {"best_epoch": 1, "history": [{"epoch": 0, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.95},
                                            {"epoch": 2, "val_accuracy": 0.97}]}
    assert accuracy_floor(history, 0.01) == pytest.approx(0.94)
    with pytest.raises(SearchError, match="no val_accuracy at its selected epoch 5"):
        accuracy_floor({"best_epoch": 5, "history": history["history"]}, 0.01)


def test_the_best_trial_is_the_lowest_score_and_ties_go_to_the_recipe_start():
    trials = [trial(0, 0.3), trial(1, 0.2), trial(2, 0.2), trial(3, math.inf, error="diverged")]
    assert best_trial(trials).number == 1
    assert best_trial([trial(0, 0.2), trial(1, 0.2)]).number == 0
    with pytest.raises(SearchError, match="every one of the 2 search trials failed; first error: diverged"):
        best_trial([trial(0, math.inf, error="diverged"), dataclasses.replace(trial(1, 0.1), best_epoch=None)])


def test_the_chosen_settings_carry_the_trial_values_and_its_best_epoch_into_finetune():
    best = trial(4, 0.1, epoch=2, values={"lr": 3e-4, "adv_weight": 7.5, "steps": 4})
    chosen = chosen_settings(CSADA, best)
    assert chosen["optim"]["lr"] == 3e-4 and chosen["optim"]["epochs"] == 3  # epochs 0..2 ran
    assert chosen["options"] == {**CSADA.options, "adv_weight": 7.5, "steps": 4}
    method = apply_choice(CSADA, chosen)
    assert method.optim == dataclasses.replace(CSADA.optim, lr=3e-4, epochs=3)
    assert method.options["adv_weight"] == 7.5 and method.name == "csada"
    assert chosen_settings(CSADA, None) == {"options": dict(CSADA.options), "optim": dataclasses.asdict(CSADA.optim)}
    pinned_epochs = dataclasses.replace(CSADA, pinned=frozenset({"epochs"}))
    assert chosen_settings(pinned_epochs, best)["optim"]["epochs"] == 8


def test_params_overrides_are_pinned_and_the_search_section_is_validated(tmp_path):
    params = {"dataset": "digits", "finetune": {"methods": ["csada", "ap"], "csada": {"adv_weight": 5, "lr": None}}}
    config = load_config(params, recipe_dir="recipes", available_cpus=2)
    assert config.methods[0].pinned == frozenset({"adv_weight"}) and config.methods[1].pinned == frozenset()
    assert config.search.max_trials >= 0
    for bad, message in (({"max_trials": -1}, "search.max_trials = -1 is invalid"),
                         ({"time_budget_s": 0}, "search.time_budget_s = 0 is invalid"),
                         ({"max_accuracy_drop": 2}, "search.max_accuracy_drop = 2 is invalid"),
                         ({"budget": 3}, "unknown key search.budget")):
        with pytest.raises(Exception, match=message):
            load_config({**params, "search": bad}, recipe_dir="recipes", available_cpus=2)


def test_a_search_is_keyed_by_what_it_depends_on():
    from pipeline.cluster.search import records_from_json, records_to_json, search_key
    from pipeline.config import SearchConfig
    from pipeline.runs.jobs import TrainJob

    base = TrainJob(name="d-csada-search", dataset="digits", raw_dir="r", manifest="m", cost_csv="c", model="mlp",
                    model_options={}, pretrained=False, method="csada", method_options=dict(CSADA.options),
                    optim=dataclasses.asdict(CSADA.optim), seed=999, select_metric="val_wer")
    space, search = search_space(CSADA), SearchConfig()
    key = search_key(base, space, search, 0.9, 10.0, 0)
    assert key == search_key(dataclasses.replace(base), dict(space), SearchConfig(), 0.9, 10.0, 0)
    changed = [
        search_key(dataclasses.replace(base, method_options={**CSADA.options, "step_size": 0.1}), space, search, 0.9, 10.0, 0),
        search_key(base, {k: v for k, v in space.items() if k != "lr"}, search, 0.9, 10.0, 0),
        search_key(base, space, SearchConfig(max_trials=3), 0.9, 10.0, 0),
        search_key(base, space, search, 0.8, 10.0, 0),
        search_key(base, space, search, 0.9, 10.0, 1),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    records = [trial(0, 0.2), trial(1, math.inf, error="diverged")]
    assert records_from_json(records_to_json(records)) == records
