"""params.yaml validation: every bad value fails at once with its key, its value and what is valid."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config

REPO = Path(__file__).parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
RECIPES = REPO / "recipes"
DIGITS = yaml.safe_load((RECIPES / "digits.yaml").read_text())


def params(**changes):
    """The repository's params with dotted-key changes applied."""
    result = copy.deepcopy(PARAMS)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return result


def load(values, **kwargs):
    return load_config(values, recipe_dir=RECIPES, **{"available_cpus": 2, **kwargs})


def method(config, name):
    return {m.name: m for m in config.methods}[name]


def test_the_repository_params_are_valid_for_every_dataset():
    for dataset in ("digits", "toy", "mnist", "cifar10"):
        config = load(params(dataset=dataset))
        assert config.dataset == dataset
        assert [m.name for m in config.methods] == ["csada", "ap", "sosr", "penalty", "soft_labels", "logit_adjusted"]
    images = load(params(dataset="images", data__source="sources/images.npz"))
    assert images.model == "small_cnn" and images.model_options == {"hidden": 128, "pool": 7}
    table = load(params(dataset="table", data__source="sources/table.csv"))
    assert [m.name for m in table.methods][-2:] == ["soft_labels", "logit_adjusted"]
    pmi = load(params(dataset="pmi", data__source="sources/archive.zip"))
    assert pmi.costs.kind == "expert" and pmi.pretrained and pmi.baseline.head_only_epochs == 10


def test_overrides_replace_recipe_values_and_null_keeps_them():
    config = load(params(finetune__csada={"adv_weight": 5, "eps": None}))
    csada = method(config, "csada")
    assert csada.options["adv_weight"] == 5.0
    assert csada.options["eps"] == DIGITS["csada"]["eps"]
    assert csada.optim.epochs == DIGITS["csada"]["epochs"]
    assert load(params(baseline__epochs=3)).baseline.epochs == 3


def test_dataset_switch_takes_that_datasets_recipe():
    mnist = load(params(dataset="mnist"))
    assert mnist.model == "resnet34"
    assert method(mnist, "csada").options["normalization"] == "attacked_mean"
    assert mnist.paths.raw == Path("data/raw/mnist")


def test_recipe_settings_that_moved_out_of_params_are_validated_there():
    with pytest.raises(ConfigError, match=r"recipes/digits.yaml: split.val_fraction = 1.5 is invalid"):
        load(params(), recipe={**DIGITS, "split": {"val_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"recipes/digits.yaml: evaluate.top_k = 0 is invalid"):
        load(params(), recipe={**DIGITS, "evaluate": {"top_k": 0}})
    with pytest.raises(ConfigError, match=r"recipes/digits.yaml: costs.pareto.shape = 0 is invalid"):
        load(params(), recipe={**DIGITS, "costs": {"kind": "pareto", "pareto": {"shape": 0}}})
    pmi = load(params(dataset="pmi", data__source="sources/archive.zip"))
    assert pmi.costs.kind == "expert" and len(pmi.costs.expert["pairs"]) == 4


def test_a_pair_in_params_replaces_the_recipes():
    config = load(params(dataset="toy", costs__pair=["red", "blue"]))
    assert (config.costs.true_class, config.costs.predicted_class) == ("red", "blue")


def test_toy_uses_its_critical_pair():
    config = load(params(dataset="toy"))
    assert (config.costs.kind, config.costs.true_class, config.costs.predicted_class) == ("single_pair", "green", "blue")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(dataset="imagenet"), r"dataset = 'imagenet' is invalid; valid: toy, digits"),
        (dict(finetune__methods=["csada", "csda"]), r"finetune.methods = 'csda' is invalid; unknown method"),
        (dict(finetune__methods=[]), r"finetune.methods"),
        (dict(finetune__replications=0), r"finetune.replications = 0 is invalid; expected an integer >= 1"),
        (dict(finetune__csada={"eps": -1}), r"finetune.csada.eps = -1 is invalid; must be > 0"),
        (dict(finetune__csada={"steps": 2.5}), r"finetune.csada.steps = 2.5 is invalid; expected an integer"),
        (dict(finetune__csada={"adv_weight": -0.5}), r"finetune.csada.adv_weight = -0.5 is invalid; must be >= 0"),
        (dict(finetune__csada={"norm": "l1"}), r"finetune.csada.norm = 'l1' is invalid; valid: linf, l2"),
        (dict(finetune__csada={"lambda": 2}), r"unknown key finetune.csada.lambda; valid keys"),
        (dict(finetune__ap={"alpha": "five"}), r"finetune.ap.alpha = 'five' is invalid; expected a finite number"),
        (dict(baseline__epochs=0), r"baseline.epochs = 0 is invalid; must be >= 1"),
        (dict(baseline__lr=0), r"baseline.lr = 0 is invalid; must be > 0"),
        (dict(baseline__optimizer="rmsprop"), r"baseline.optimizer = 'rmsprop' is invalid; valid: sgd, adam"),
        (dict(ray__num_workers=3), r"ray.num_workers = 3 x ray.cpus_per_worker = 1 needs 3 CPUs plus 0.01 for the "
                                   r"trial that drives them but this machine has 2"),
        (dict(ray__num_workers=2), r"needs 2 CPUs plus 0.01 .* \(ray.cpus_per_worker may be a fraction\)"),
        (dict(ray__num_workers=0), r"ray.num_workers = 0 is invalid"),
        (dict(ray__use_gpu="maybe"), r"ray.use_gpu = 'maybe' is invalid; valid: auto, true, false"),
        (dict(costs__kind="random"), r"costs.kind = 'random' is invalid"),
        (dict(costs__kind="single_pair"), r"costs.kind = 'single_pair' needs costs.pair: \[true class, predicted class\]"),
        (dict(costs__pair=["a"]), r"costs.pair = \['a'\] is invalid; expected \[true class, predicted class\]"),
        (dict(costs__kind="file"), r"needs costs.file"),
        # A user's file lies in its folder, which its stage depends on (tests/test_stage_deps.py).
        (dict(costs__kind="file", costs__file="../c.yaml"),
         r"costs.file = '../c.yaml' is outside costs/, where DVC watches it .*dvc import-url ../c.yaml costs/c.yaml"),
        (dict(costs__kind="file", costs__file="costs/../c.csv"), r"costs.file = 'costs/../c.csv' is outside costs/"),
        (dict(costs__kind="file", costs__file=3), r"costs.file = 3 is invalid; expected a path"),
        (dict(dataset="images", data__source="/data/pills.npz"),
         r"data.source = '/data/pills.npz' is outside sources/.* set data.source=sources/pills.npz"),
        (dict(ray__storage_path=""), r"ray.storage_path = '' is invalid; expected a folder"),
        (dict(ray__storage_path="."), r"ray.storage_path = '.' is invalid; it is the project folder itself"),
        (dict(ray__max_concurrent_trials=0), r"ray.max_concurrent_trials = 0 is invalid"),
        (dict(costs__seed=-2), r"costs.seed = -2 is invalid"),
        (dict(data__root="elsewhere"), r"unknown key data.root"),
        (dict(dataset="table"), r"dataset = 'table' needs data.source"),
        (dict(evaluate={"top_k": 3}), r"params.yaml: unknown key evaluate;"),
        (dict(seed=-1), r"seed = -1 is invalid"),
        (dict(predict__max_cost=0), r"predict.max_cost = 0 is invalid; expected the largest expected cost per case"),
        (dict(predict__max_cost="low"), r"predict.max_cost = 'low' is invalid"),
        (dict(predict__max_cost=float("inf")), r"predict.max_cost = inf is invalid"),
        (dict(predict__calibration_fraction=1), r"predict.calibration_fraction = 1 is invalid; expected the share"),
        (dict(predict__alpha=0.1), r"unknown key predict.alpha; valid keys: calibration_fraction, max_cost"),
        (dict(learning_rate=1), r"params.yaml: unknown key learning_rate;"),
    ],
)
def test_invalid_params_fail_with_key_value_and_valid_range(changes, message):
    with pytest.raises(ConfigError, match=message):
        load(params(**changes))


def test_ray_address_lifts_the_local_cpu_check(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = load(params(ray__num_workers=8, ray__address="ray://head:10001"))
    assert config.ray.address == "ray://head:10001" and config.ray.num_workers == 8
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert load(params(ray__num_workers=8)).ray.address == "auto"


def test_recipe_values_are_validated_with_their_file_and_key():
    with pytest.raises(ConfigError, match=r"recipes/digits.yaml: unknown key csada.lambda"):
        load(params(), recipe={**DIGITS, "csada": {**DIGITS["csada"], "lambda": 1}})
    with pytest.raises(ConfigError, match=r"recipes/digits.yaml: pretrained = 'false' is invalid; expected true or false"):
        load(params(), recipe={**DIGITS, "pretrained": "false"})
    with pytest.raises(ConfigError, match=r"recipes/nowhere/digits.yaml not found"):
        load_config(params(), recipe_dir="recipes/nowhere", available_cpus=2)


def test_string_booleans_are_refused():
    with pytest.raises(ConfigError, match=r"data.download = 'false' is invalid; expected true or false"):
        load(params(data__download="false"))


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")


def test_the_params_comment_on_dataset_names_every_registered_data_set():
    """A newcomer picks a data set from the comment beside ``dataset:``; it must list them all."""
    from pipeline.datasets import DATASETS

    line, = (line for line in (REPO / "params.yaml").read_text().splitlines() if line.startswith("dataset:"))
    _, _, comment = line.partition("#")
    assert {name.strip() for name in comment.split("|")} == set(DATASETS), line


def test_a_bad_value_is_named_in_the_file_it_was_set_in():
    recipe_ap = {**DIGITS, "ap": {**DIGITS["ap"], "lr": -1}}
    with pytest.raises(ConfigError, match=r"^recipes/digits.yaml: ap.lr = -1 is invalid; must be > 0$"):
        load(params(), recipe=recipe_ap)
    with pytest.raises(ConfigError, match=r"^params.yaml: finetune.ap.lr = -1 is invalid; must be > 0$"):
        load(params(finetune__ap={"lr": -1}))
    assert method(load(params(finetune__ap={"lr": 0.01}), recipe=recipe_ap), "ap").optim.lr == 0.01  # overridden
    with pytest.raises(ConfigError, match=r"^recipes/digits.yaml: baseline.epochs = 0 is invalid; must be >= 1$"):
        load(params(), recipe={**DIGITS, "baseline": {**DIGITS["baseline"], "epochs": 0}})
    no_epochs = {k: v for k, v in DIGITS["csada"].items() if k != "epochs"}
    with pytest.raises(ConfigError, match=r"^recipes/digits.yaml: csada.epochs is not set; set it in the recipe "
                                          r"\(or override finetune.csada.epochs in params.yaml\)$"):
        load(params(), recipe={**DIGITS, "csada": no_epochs})


@pytest.mark.parametrize(("where", "value", "message"), [
    ("recipe", {"model": ["mlp"]}, r"^recipes/digits.yaml: model = \['mlp'\] is invalid; known: mlp, resnet18"),
    ("recipe", {"model": {"mlp": 1}}, r"^recipes/digits.yaml: model = \{'mlp': 1\} is invalid; known: mlp"),
    ("params", {"dataset": ["digits"]}, r"^params.yaml: dataset = \['digits'\] is invalid; valid: toy, digits, "),
    ("params", {"costs__kind": ["pareto"]}, r"^params.yaml: costs.kind = \['pareto'\] is invalid; valid: default, "),
    ("params", {"finetune__methods": [["csada"]]},
     r"^params.yaml: finetune.methods = \['csada'\] is invalid; unknown method; known: csada, ap"),
])
def test_a_list_or_mapping_where_a_name_belongs_is_one_line_not_a_type_error(where, value, message):
    with pytest.raises(ConfigError, match=message):
        if where == "recipe":
            load(params(), recipe={**DIGITS, **value})
        else:
            load(params(**value))


def test_a_recipe_or_params_file_that_is_not_a_mapping_is_named_as_the_project_names_it(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "digits.yaml").write_text("- mlp\n- 100\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path / "recipes")  # the message does not depend on where the stage runs
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "params.yaml", available_cpus=2)
    assert str(caught.value) == ("recipes/digits.yaml holds a list (['mlp', 100]); expected a mapping of settings, "
                                 "one `key: value` per line")
    (tmp_path / "params.yaml").write_text("just words\n")
    with pytest.raises(ConfigError, match=r"params.yaml holds a str \('just words'\); expected a mapping"):
        load_config(tmp_path / "params.yaml", available_cpus=2)


@pytest.mark.parametrize("address", ["nonsense", "host:port", "head:0", "http://head:8265/x", 6379])
def test_a_ray_address_that_is_not_host_and_port_fails_with_the_forms_ray_takes(address, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=rf"^params.yaml: ray.address = {address!r} is invalid; expected host:port of "
                                          r"a running cluster's head .*, ray://host:port, auto, or null for a local "):
        load(params(ray__address=address))
    monkeypatch.setenv("RAY_ADDRESS", str(address))
    with pytest.raises(ConfigError, match=rf"^RAY_ADDRESS = '{address}' is invalid; expected host:port"):
        load(params())
    for good in ("nonsense:1", "10.0.0.5:6379", "[::1]:6379", "ray://head:10001", "auto"):
        assert load(params(ray__address=good)).ray.address == good
