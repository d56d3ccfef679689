"""params.yaml validation: every bad value fails at once with its key, its value and what is valid."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config

PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())


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


def test_the_repository_params_are_valid_for_every_dataset():
    for dataset in ("digits", "toy", "mnist", "cifar10"):
        config = load_config(params(dataset=dataset), available_cpus=2)
        assert config.dataset == dataset
        assert [m.name for m in config.methods] == ["csada", "ap", "sosr", "penalty"]
    pmi = load_config(params(dataset="pmi", data__source="archive.zip"), available_cpus=2)
    assert pmi.costs.kind == "expert" and pmi.pretrained and pmi.baseline.head_only_epochs == 10


def test_overrides_replace_recipe_values_and_null_keeps_them():
    config = load_config(params(finetune__csada={"adv_weight": 5, "eps": None}), available_cpus=2)
    csada = config.method("csada")
    assert csada.options["adv_weight"] == 5.0
    assert csada.options["eps"] == PARAMS["recipes"]["digits"]["csada"]["eps"]
    assert csada.optim.epochs == PARAMS["recipes"]["digits"]["csada"]["epochs"]
    assert load_config(params(baseline__epochs=3), available_cpus=2).baseline.epochs == 3


def test_dataset_switch_takes_that_datasets_recipe():
    mnist = load_config(params(dataset="mnist"), available_cpus=2)
    assert mnist.model == "resnet34"
    assert mnist.method("csada").options["normalization"] == "attacked_mean"
    assert mnist.paths.raw == Path("data/raw/mnist")


def test_toy_uses_its_critical_pair():
    config = load_config(params(dataset="toy"), available_cpus=2)
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
        (dict(ray__num_workers=3), r"ray.num_workers = 3 x ray.cpus_per_worker = 1 needs 3 CPUs but this machine has 2"),
        (dict(ray__num_workers=0), r"ray.num_workers = 0 is invalid"),
        (dict(ray__use_gpu="maybe"), r"ray.use_gpu = 'maybe' is invalid; valid: auto, true, false"),
        (dict(costs__kind="random"), r"costs.kind = 'random' is invalid"),
        (dict(costs__kind="single_pair"), r"needs costs.single_pair.true_class"),
        (dict(costs__kind="file"), r"needs costs.file"),
        (dict(costs__pareto={"shape": 0}), r"costs.pareto.shape = 0 is invalid"),
        (dict(data__val_fraction=1.5), r"data.val_fraction = 1.5 is invalid"),
        (dict(dataset="table"), r"dataset = 'table' needs data.source"),
        (dict(evaluate__top_k=0), r"evaluate.top_k = 0 is invalid"),
        (dict(seed=-1), r"seed = -1 is invalid"),
        (dict(learning_rate=1), r"unknown key <top>.learning_rate"),
    ],
)
def test_invalid_params_fail_with_key_value_and_valid_range(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(params(**changes), available_cpus=2)


def test_ray_address_lifts_the_local_cpu_check(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = load_config(params(ray__num_workers=8, ray__address="ray://head:10001"), available_cpus=2)
    assert config.ray.address == "ray://head:10001" and config.ray.num_workers == 8
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert load_config(params(ray__num_workers=8), available_cpus=2).ray.address == "auto"


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
