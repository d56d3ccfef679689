"""Tests for pipeline.datasets: the common object, the splitter and every loader, all offline."""

from __future__ import annotations

import ast
import io
import pickle
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.datasets
from pipeline.datasets import (
    DATASETS,
    TOY_CLASSES,
    TOY_COVARIANCE,
    TOY_MEANS,
    ArrayDataset,
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    Normalization,
    TransformedSubset,
    cifar10,
    load_dataset,
    load_digits,
    load_toy,
    mnist,
    pmi,
    stratified_split,
    tables,
    vision,
)
from pipeline.datasets.common import check_indices
from tests.fakes import (
    CIFAR_NAMES,
    NDCS,
    pill_image,
    png_bytes,
    write_fake_cifar,
    write_fake_cifar_archive,
    write_fake_mnist,
    write_pill_tree,
)

# ---------------------------------------------------------------- common


def _per_class_sizes(parts: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, list[int]]:
    return {k: np.bincount(labels[v], minlength=labels.max() + 1).tolist() for k, v in parts.items()}


def test_stratified_split_exact_ratio_disjoint_sorted_and_seeded() -> None:
    labels = np.repeat([0, 1, 2], 10)
    parts = stratified_split(labels, seed=3)
    assert list(parts) == ["train", "val", "test"]
    assert _per_class_sizes(parts, labels) == {"train": [6, 6, 6], "val": [2, 2, 2], "test": [2, 2, 2]}
    together = np.concatenate(list(parts.values()))
    assert sorted(together.tolist()) == list(range(30))
    assert all((np.diff(v) > 0).all() for v in parts.values())
    again = stratified_split(labels, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = stratified_split(labels, seed=4)
    assert not all(np.array_equal(parts[k], other[k]) for k in parts)


def test_stratified_split_rounding_by_largest_remainder() -> None:
    # 7 * (.6, .2, .2) = (4.2, 1.4, 1.4): floors (4, 1, 1), the one left over goes to val (tie, first).
    # 3 samples: floors (1, 0, 0) + 2 left over to train, val -> (2, 1, 0), then test takes one
    # from train -> (1, 1, 1).
    labels = np.array([0] * 7 + [1] * 3)
    sizes = _per_class_sizes(stratified_split(labels, seed=0), labels)
    assert sizes == {"train": [4, 1], "val": [2, 1], "test": [1, 1]}


def test_stratified_split_too_small_class_names_class_and_count() -> None:
    labels = np.array([0] * 5 + [1] * 2)
    with pytest.raises(DatasetError, match=r"class 'pill-b' has 2 sample\(s\).*needs >= 3"):
        stratified_split(labels, seed=0, class_names=["pill-a", "pill-b"])


@pytest.mark.parametrize("fractions", [{"train": 0.5, "val": 0.2}, {"train": 1.2, "val": -0.2}, {}])
def test_stratified_split_rejects_bad_fractions(fractions: dict[str, float]) -> None:
    with pytest.raises(DatasetError, match="fraction"):
        stratified_split(np.zeros(10, dtype=int), fractions)


def test_check_indices_orders_splits_and_rejects_leaks() -> None:
    parts = check_indices({"test": [4], "train": [0, 2], "val": np.array([3])}, 5, "five")
    assert list(parts) == ["train", "val", "test"] and parts["train"].dtype == np.int64
    assert parts["train"].tolist() == [0, 2]
    with pytest.raises(DatasetError, match=r"indices\['val'\] for five must lie in \[0, 5\); got \[5\]"):
        check_indices({"train": [0], "val": [5]}, 5, "five")
    with pytest.raises(DatasetError, match=r"repeat sample\(s\) \[2\]"):
        check_indices({"train": [0, 2], "test": [2]}, 5, "five")
    with pytest.raises(DatasetError, match="must include 'train' and use only train, val"):
        check_indices({"train": [0], "test": [1]}, 5, "five", allowed=("train", "val"))
    with pytest.raises(DatasetError, match="1-D sequence of ints"):
        check_indices({"train": [0.5]}, 5, "five")


def test_array_dataset_items_and_validation() -> None:
    ds = ArrayDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([2, 0, 1], dtype=torch.int32))
    x, y = ds[1]
    assert torch.equal(x, torch.tensor([2.0, 3.0])) and y == 0 and isinstance(y, int)
    assert len(ds) == 3 and ds.y.dtype == torch.int64
    with pytest.raises(DatasetError, match="integer tensor"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(DatasetError, match="same first dimension"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DatasetError, match="floating-point"):
        ArrayDataset(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_classification_data_labels_splits_and_bounds() -> None:
    base = ArrayDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 0]))
    data = ClassificationData(
        name="tiny", classes=["a", "b"], input_shape=(1, 2, 2),
        splits={"train": base, "test": TransformedSubset(base, [3, 1], lambda x: x + 1)},
        normalization=Normalization(mean=(0.5,), std=(0.25,)))
    assert data.num_classes == 2
    assert data.labels("test").tolist() == [0, 1]
    x, y = data.splits["test"][1]
    assert y == 1 and torch.equal(x, torch.ones(1, 2, 2))
    # (0 - .5) / .25 = -2 and (1 - .5) / .25 = 2, shaped to broadcast over (C, H, W).
    assert data.normalization.clamp_min == (-2.0,) and data.normalization.clamp_max == (2.0,)
    low, high = data.input_bounds()
    assert low.shape == (1, 1, 1) and low.item() == -2.0 and high.item() == 2.0
    with pytest.raises(DatasetError, match="no split 'val'; available: train, test"):
        data.labels("val")
    with pytest.raises(DatasetError, match="unknown split"):
        ClassificationData(name="x", classes=["a"], splits={"dev": base}, input_shape=(1,))


def test_registry_names_and_unknown_name_lists_known() -> None:
    assert set(DATASETS) == {"toy", "digits", "mnist", "cifar10", "pmi", "table", "images"}
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'; known: cifar10, digits, "
                                           "images, mnist, pmi, table, toy"):
        load_dataset("imagenet")
    assert load_dataset("toy", seed=1).classes == list(TOY_CLASSES)


def test_package_import_stays_light() -> None:
    # Module-level imports only (a fresh interpreter would cost seconds re-importing torch).
    heavy = {"torchvision", "PIL", "pandas", "sklearn"}
    package = Path(pipeline.datasets.__file__).parent
    for module in sorted(package.glob("*.py")):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & heavy, f"{module.name} imports {roots & heavy} at module level"


# ---------------------------------------------------------------- toy (Section 4, Table 1)


def test_toy_matches_table_1() -> None:
    data = load_toy(seed=0)
    assert data.classes == ["red", "green", "blue"] and list(data.splits) == ["train", "test"]
    train, test = data.splits["train"], data.splits["test"]
    assert train.x.shape == (150, 2) and test.x.shape == (1500, 2) and train.x.dtype == torch.float32
    assert np.bincount(data.labels("train")).tolist() == [50, 50, 50]
    assert np.bincount(data.labels("test")).tolist() == [500, 500, 500]
    assert data.normalization is None and data.input_bounds() is None
    x, y = test.x.double().numpy(), test.y.numpy()
    for c, name in enumerate(TOY_CLASSES):
        pts = x[y == c]
        # 500 points: the std error of a mean is sqrt(2 / 500) ~ .06, of a variance ~ .13.
        np.testing.assert_allclose(pts.mean(axis=0), TOY_MEANS[name], atol=0.25)
        np.testing.assert_allclose(np.cov(pts.T), TOY_COVARIANCE, atol=0.4)


def test_toy_override_means_with_tiny_covariance_puts_points_on_the_means() -> None:
    data = load_toy(seed=0, means={"green": (4, -6), "blue": (-4, -6)},
                    covariance=[[1e-10, 0], [0, 1e-10]], train_per_class=2, test_per_class=1)
    expected = [[0, 8], [0, 8], [4, -6], [4, -6], [-4, -6], [-4, -6]]
    np.testing.assert_allclose(data.splits["train"].x.numpy(), expected, atol=1e-3)
    assert data.labels("train").tolist() == [0, 0, 1, 1, 2, 2]


def test_toy_seeded_and_validation_split_leaves_train_and_test_alone() -> None:
    a, b = load_toy(seed=5), load_toy(seed=5, val_per_class=4)
    assert torch.equal(a.splits["train"].x, b.splits["train"].x)
    assert torch.equal(a.splits["test"].x, b.splits["test"].x)
    assert list(b.splits) == ["train", "val", "test"] and len(b.splits["val"]) == 12
    assert not torch.equal(a.splits["train"].x, load_toy(seed=6).splits["train"].x)


@pytest.mark.parametrize("kwargs, message", [
    ({"means": {"purple": (0, 0)}}, "unknown toy class"),
    ({"covariance": [[1, 2], [2, 1]]}, "positive definite"),
    ({"covariance": [[1, 0.5], [0, 1]]}, "symmetric"),
    ({"train_per_class": 0}, "train_per_class"),
    ({"val_per_class": -1}, "val_per_class"),
])
def test_toy_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_toy(**kwargs)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> ClassificationData:
    return load_digits(seed=0)


def test_digits_shapes_split_and_classes(digits: ClassificationData) -> None:
    assert digits.classes == [str(d) for d in range(10)] and digits.input_shape == (1, 8, 8)
    sizes = {k: len(v) for k, v in digits.splits.items()}
    assert list(sizes) == ["train", "val", "test"] and sum(sizes.values()) == 1797
    assert digits.splits["train"].x.shape[1:] == (1, 8, 8)
    counts = {k: np.bincount(digits.labels(k), minlength=10) for k in sizes}
    per_class = sum(counts.values())
    for k, frac in {"train": 0.6, "val": 0.2, "test": 0.2}.items():
        assert (np.abs(counts[k] - frac * per_class) < 1.0 + 1e-9).all()


def test_digits_standardised_with_training_statistics(digits: ClassificationData) -> None:
    norm = digits.normalization
    train = digits.splits["train"].x.double()
    assert abs(train.mean().item()) < 1e-5 and abs(train.std(unbiased=False).item() - 1) < 1e-5
    everything = torch.cat([digits.splits[k].x for k in digits.splits]).double()
    raw16 = (everything * norm.std[0] + norm.mean[0]) * 16  # back to sklearn's 0..16 counts
    assert torch.allclose(raw16, raw16.round(), atol=1e-4)
    assert raw16.min().round() == 0 and raw16.max().round() == 16
    # Pixel 0 and pixel 1 (count 16) both occur, so they are the data's extremes.
    assert norm.clamp_min[0] == pytest.approx(everything.min().item(), abs=1e-5)
    assert norm.clamp_max[0] == pytest.approx(everything.max().item(), abs=1e-5)
    assert norm.clamp_min[0] == pytest.approx(-norm.mean[0] / norm.std[0])


def test_digits_seeded(digits: ClassificationData) -> None:
    assert load_digits(seed=0).metadata["indices"] == digits.metadata["indices"]
    assert load_digits(seed=1).metadata["indices"]["test"] != digits.metadata["indices"]["test"]


# ---------------------------------------------------------------- MNIST / CIFAR-10 (fake files)


def test_mnist_missing_files_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert f"{tmp_path}/MNIST/raw" in message and "t10k-labels-idx1-ubyte" in message
    assert mnist.MNIST_URL in message and "download=True" in message and "download=False" in message


def test_cifar10_missing_files_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as info:
        cifar10.load_cifar10(tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "data_batch_5" in message
    assert cifar10.CIFAR10_URL in message and "tar -xzf" in message


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ({"mean": (0.5, 0.5), "std": (1.0, 1.0)}, "1 channel"),
    ({"std": (0.0,)}, "std must be > 0"),
])
def test_vision_options_checked_before_files(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message) as info:  # tmp_path is empty: files come later
        mnist.load_mnist(tmp_path, **kwargs)
    assert not isinstance(info.value, DatasetMissingError)


def test_download_offline_fails_fast_with_the_instructions(tmp_path: Path, monkeypatch) -> None:
    def unreachable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(DatasetMissingError, match=r"download=True was tried: cannot reach "
                                                  r"ossci-datasets.s3.amazonaws.com"):
        mnist.load_mnist(tmp_path, download=True)
    with pytest.raises(DatasetMissingError, match="cannot reach www.cs.toronto.edu"):
        cifar10.load_cifar10(tmp_path, download=True)
    assert time.perf_counter() - start < 2.0


def test_probe_gives_up_on_a_stalled_connection(monkeypatch) -> None:
    release = threading.Event()
    stalled = lambda *a, **k: release.wait(10) and socket.socket()  # noqa: E731
    monkeypatch.setattr(socket, "create_connection", stalled)
    start = time.perf_counter()
    try:
        assert vision._probe("example.org", 443, 0.2) == "no answer within 0.2 s"
    finally:
        release.set()
    assert time.perf_counter() - start < 1.0


def test_mnist_loads_fake_idx_files(tmp_path: Path) -> None:
    arrays = write_fake_mnist(tmp_path)
    data = mnist.load_mnist(tmp_path, seed=0)
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # un-gzipped
    assert data.classes == [str(d) for d in range(10)] and data.input_shape == (1, 28, 28)
    # 3 per class at 0.9/0.1: floors (2, 0) + 1 left to train -> (3, 0); val takes one -> (2, 1).
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "val": 10, "test": 5}
    assert np.bincount(data.labels("val")).tolist() == [1] * 10
    assert data.labels("test").tolist() == [0, 1, 2, 3, 4]
    x, y = data.splits["test"][2]
    expected = (arrays["t10k-images-idx3-ubyte"][2] / 255.0 - 0.1307) / 0.3081
    assert y == 2 and x.shape == (1, 28, 28)
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-5)
    row = int(data.splits["train"].indices[0])
    x, y = data.splits["train"][0]
    assert y == arrays["train-labels-idx1-ubyte"][row]
    np.testing.assert_allclose(x[0].numpy(), (arrays["train-images-idx3-ubyte"][row] / 255.0 - 0.1307)
                               / 0.3081, atol=1e-5)
    assert list(mnist.load_mnist(tmp_path, val_fraction=0).splits) == ["train", "test"]


def test_mnist_malformed_file_is_a_dataset_error(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="malformed"):
        mnist.load_mnist(tmp_path)


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Path:
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    return tmp_path


def _cifar_image(root: Path, batch: str, row: int) -> np.ndarray:
    with open(root / "cifar-10-batches-py" / batch, "rb") as fh:
        return pickle.load(fh)["data"][row].reshape(3, 32, 32) / 255.0


def _cifar_standardise(image: np.ndarray) -> np.ndarray:
    return (image - np.array(cifar10.CIFAR10_MEAN)[:, None, None]) / np.array(cifar10.CIFAR10_STD)[:, None, None]


def test_cifar10_checks_md5_unless_told_not_to(fake_cifar: Path) -> None:
    with pytest.raises(DatasetError, match="md5.*verify_checksums=False"):
        cifar10.load_cifar10(fake_cifar)


def test_cifar10_loads_fake_batches(fake_cifar: Path) -> None:
    data = cifar10.load_cifar10(fake_cifar, verify_checksums=False, augment=False)
    assert data.classes == CIFAR_NAMES and data.input_shape == (3, 32, 32)
    # 5 per class at 0.9/0.1: floors (4, 0), the left-over tie goes to train -> (5, 0) -> (4, 1).
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 40, "val": 10, "test": 10}
    x, y = data.splits["test"][7]
    assert y == 7
    np.testing.assert_allclose(x.numpy(), _cifar_standardise(_cifar_image(fake_cifar, "test_batch", 7)),
                               atol=1e-5)
    low, high = data.input_bounds()
    assert low.shape == (3, 1, 1)
    np.testing.assert_allclose(low.flatten().numpy(), _cifar_standardise(np.zeros((3, 1, 1))).ravel(), atol=1e-6)


def test_cifar10_augments_train_only_with_crop_and_flip(fake_cifar: Path) -> None:
    data = cifar10.load_cifar10(fake_cifar, verify_checksums=False, augment=True)
    row = int(data.splits["train"].indices[0])  # rows 0..9 are data_batch_1
    padded = np.pad(_cifar_image(fake_cifar, "data_batch_1", row), ((0, 0), (4, 4), (4, 4)))
    candidates = [_cifar_standardise(v[:, i:i + 32, j:j + 32]) for v in (padded, padded[:, :, ::-1])
                  for i in range(9) for j in range(9)]
    torch.manual_seed(0)
    draws = [data.splits["train"][0][0].numpy() for _ in range(8)]
    for draw in draws:  # each draw is one of the 162 crops/flips of the zero-padded image
        assert min(np.abs(draw - c).max() for c in candidates) < 1e-5
    assert any(np.abs(draw - candidates[40]).max() > 1e-3 for draw in draws)  # not always centred
    val_x = [data.splits["val"][0][0] for _ in range(3)]
    assert all(torch.equal(val_x[0], v) for v in val_x[1:])


def test_cifar10_extracts_the_downloaded_archive(tmp_path: Path) -> None:
    write_fake_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    data = cifar10.load_cifar10(tmp_path, verify_checksums=False, val_fraction=0)
    assert list(data.splits) == ["train", "test"] and len(data.splits["train"]) == 50


# ---------------------------------------------------------------- PMI (synthetic pill images)

@pytest.fixture(scope="module")
def pill_tree(tmp_path_factory) -> Path:
    root = write_pill_tree(tmp_path_factory.mktemp("pmi"))
    (root / ".cache").mkdir()  # hidden folders are not classes
    (root / "50111-0434" / "notes.txt").write_text("ignored: not an image")
    return root


@pytest.fixture(scope="module")
def pills(pill_tree: Path) -> ClassificationData:
    return pmi.load_pmi(pill_tree, crop_size=32, image_size=16, seed=0)


def test_pmi_split_per_ndc_and_shapes(pills: ClassificationData) -> None:
    assert pills.classes == list(NDCS) and pills.input_shape == (3, 16, 16)
    # Per class: 10 -> 6/2/2, 7 -> 4/2/1 (largest remainder), 5 -> 3/1/1.
    sizes = {k: np.bincount(pills.labels(k), minlength=3).tolist() for k in pills.splits}
    assert sizes == {"train": [6, 4, 3], "val": [2, 2, 1], "test": [2, 1, 1]}
    for split in pills.splits.values():
        x, y = split[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)


def test_pmi_split_is_seeded(pill_tree: Path, pills: ClassificationData) -> None:
    kwargs = {"crop_size": 32, "image_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    assert pmi.load_pmi(pill_tree, seed=0, **kwargs).metadata["files"] == pills.metadata["files"]
    assert pmi.load_pmi(pill_tree, seed=1, **kwargs).metadata["files"] != pills.metadata["files"]


def test_pmi_normalisation_uses_training_images(pills: ClassificationData) -> None:
    train = pills.splits["train"]
    eval_tf = pills.splits["val"].transform
    x = torch.stack([eval_tf(train.dataset[int(i)][0]) for i in train.indices]).double()
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-5)


def test_pmi_channel_stats_by_hand(tmp_path: Path) -> None:
    from PIL import Image

    # One colour per class; 3 images per class split (1, 1, 1), so train holds one of each.
    for ndc, colour in {"11111-111": (204, 102, 51), "22222-222": (102, 51, 153)}.items():
        (tmp_path / ndc).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 36), colour).save(tmp_path / ndc / f"{i}.png")
    norm = pmi.load_pmi(tmp_path, crop_size=32, image_size=16).normalization
    # R: (.8, .4), G: (.4, .2), B: (.2, .6) -> means (.6, .3, .4), population stds (.2, .1, .2).
    np.testing.assert_allclose(norm.mean, (0.6, 0.3, 0.4), atol=1e-6)
    np.testing.assert_allclose(norm.std, (0.2, 0.1, 0.2), atol=1e-6)


def test_right_angle_rotation_only_and_all_four_occur() -> None:
    x = torch.arange(12.0).reshape(1, 3, 4)
    rotations = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        out = pmi.RandomRightAngleRotation()(x)
        matches = [k for k, r in enumerate(rotations) if r.shape == out.shape and torch.equal(r, out)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_pmi_train_transform_rotates_the_eval_view_by_right_angles(pill_tree: Path) -> None:
    # With the crop scale pinned to 1 the random resized crop keeps the whole square, so a train
    # sample can differ from the eval view of the same image only by the rotation.
    data = pmi.load_pmi(pill_tree, crop_size=32, image_size=16, scale=(1.0, 1.0),
                        mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    train = data.splits["train"]
    reference = data.splits["val"].transform(train.dataset[int(train.indices[0])][0])
    rotations = [torch.rot90(reference, k, dims=(-2, -1)) for k in range(4)]
    assert all(not torch.allclose(rotations[0], r) for r in rotations[1:])
    torch.manual_seed(1)
    seen = set()
    for _ in range(24):
        out = train[0][0]
        matches = [k for k, r in enumerate(rotations) if torch.allclose(out, r, atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_pmi_folder_errors_and_warnings(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="does not exist.*6d56zw997.*fetch_pmi"):
        pmi.load_pmi(tmp_path / "absent")
    (tmp_path / "12345-678").mkdir()
    (tmp_path / "12345-678" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"\['12345-678'\].*contain no image"):
        pmi.load_pmi(tmp_path)
    (tmp_path / "12345-678" / "readme.txt").unlink()
    (tmp_path / "12345-678").rmdir()
    rng = np.random.default_rng(0)
    for name in ("aspirin", "12345-6789"):
        (tmp_path / name).mkdir()
        for i in range(3):
            pill_image(rng, (250, 250, 250)).save(tmp_path / name / f"{i}.png")
    with pytest.warns(UserWarning, match=r"\['aspirin'\] .* do not look like NDCs"):
        data = pmi.load_pmi(tmp_path, crop_size=32, image_size=16)
    assert data.classes == ["12345-6789", "aspirin"]
    with pytest.raises(DatasetError, match="both mean and std"):
        pmi.load_pmi(tmp_path, mean=(0.5, 0.5, 0.5))


def test_fetch_pmi_needs_a_local_archive(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=r"not downloaded automatically.*6d56zw997.*archive="):
        pmi.fetch_pmi(tmp_path / "pmi")
    with pytest.raises(DatasetMissingError, match="not found"):
        pmi.fetch_pmi(tmp_path / "pmi", archive=tmp_path / "missing.zip")
    (tmp_path / "bogus.zip").write_text("not an archive")
    with pytest.raises(DatasetError, match="neither a zip nor a tar"):
        pmi.fetch_pmi(tmp_path / "pmi", archive=tmp_path / "bogus.zip")
    assert not (tmp_path / "pmi").exists()


def test_fetch_pmi_extracts_zip_with_nested_top_folder(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "PMI.zip", "w") as zf:
        zf.writestr("PMI/README.txt", "metadata")
        for ndc in ("50111-0434", "57664-0377"):
            zf.writestr(f"PMI/images/{ndc}/a.png", png_bytes((10, 20, 30)))
    dest = pmi.fetch_pmi(tmp_path / "out" / "pmi", archive=tmp_path / "PMI.zip")
    assert sorted(p.name for p in dest.iterdir()) == ["50111-0434", "57664-0377"]
    assert (dest / "50111-0434" / "a.png").is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pmi"]  # scratch folder removed
    with pytest.raises(DatasetError, match="not an empty folder"):
        pmi.fetch_pmi(dest, archive=tmp_path / "PMI.zip")


def test_fetch_pmi_extracts_tar_with_classes_at_the_top(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "pmi.tar.gz", "w:gz") as tar:
        payload = png_bytes((1, 2, 3))
        info = tarfile.TarInfo("65162-0253/x.png")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    dest = pmi.fetch_pmi(tmp_path / "pmi", archive=[tmp_path / "pmi.tar.gz"])
    assert (dest / "65162-0253" / "x.png").read_bytes() == payload


# ---------------------------------------------------------------- tables


def _write(frame, path: Path) -> Path:
    (frame.to_parquet if path.suffix == ".parquet" else frame.to_csv)(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_split_column_by_hand(tmp_path: Path, suffix: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({
        "f1": [0.0, 2.0, 4.0, 6.0, 3.0, 8.0], "f2": [1, 1, 1, 1, 1, 5],
        "label": [10, 2, 10, 2, 2, 10], "split": ["train"] * 4 + ["test", "val"]})
    data = tables.load_table(_write(frame, tmp_path / f"t{suffix}"), "label")
    # Integer labels sort numerically: "2" before "10".
    assert data.classes == ["2", "10"] and data.input_shape == (2,) and data.name == "t"
    assert data.labels("train").tolist() == [1, 0, 1, 0] and list(data.splits) == ["train", "val", "test"]
    # Train f1 = (0, 2, 4, 6): mean 3, population std sqrt(5); f2 is constant: std taken as 1.
    assert data.normalization.mean == pytest.approx((3.0, 1.0))
    assert data.normalization.std == pytest.approx((5 ** 0.5, 1.0))
    assert data.input_bounds() is None
    np.testing.assert_allclose(data.splits["test"].x.numpy(), [[0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(data.splits["val"].x.numpy(), [[5 / 5 ** 0.5, 4.0]], atol=1e-6)


def test_table_stratified_split_and_string_labels(tmp_path: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = ["pear"] * 10 + ["apple"] * 10 + ["fig"] * 5
    frame = pd.DataFrame({"a": rng.normal(size=25), "b": rng.normal(size=25), "id": range(25),
                          "kind": labels})
    path = _write(frame, tmp_path / "fruit.csv")
    data = tables.load_table(path, "kind", feature_columns=["a", "b"], seed=2)
    assert data.classes == ["apple", "fig", "pear"]
    assert {k: np.bincount(data.labels(k)).tolist() for k in data.splits} == {
        "train": [6, 3, 6], "val": [2, 1, 2], "test": [2, 1, 2]}
    train = data.splits["train"].x.double()
    np.testing.assert_allclose(train.mean(0).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(train.std(0, unbiased=False).numpy(), 1.0, atol=1e-6)
    again = tables.load_table(path, "kind", feature_columns=["a", "b"], seed=2)
    assert torch.equal(again.splits["test"].x, data.splits["test"].x)


def test_table_errors_name_the_problem(tmp_path: Path) -> None:
    import pandas as pd

    good = {"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": ["a", "a", "a", "b", "b", "b"]}
    path = _write(pd.DataFrame(good), tmp_path / "t.csv")
    with pytest.raises(DatasetError, match=r"label column 'target' not in .*columns: \['x', 'y'\]"):
        tables.load_table(path, "target")
    with pytest.raises(DatasetError, match=r"feature column\(s\) \['z'\] not in"):
        tables.load_table(path, "y", feature_columns=["z"])
    _write(pd.DataFrame({**good, "colour": ["r"] * 6}), path)
    with pytest.raises(DatasetError, match="'colour' .* not numeric"):
        tables.load_table(path, "y")
    _write(pd.DataFrame({**good, "w": [1, None, 3, None, 5, 6]}), path)
    with pytest.raises(DatasetError, match=r"NaN .*'w' in 2 row\(s\)"):
        tables.load_table(path, "y")
    _write(pd.DataFrame({"x": range(8), "y": ["a"] * 6 + ["b"] * 2}), path)
    with pytest.raises(DatasetError, match=r"class 'b' has 2 sample\(s\)"):
        tables.load_table(path, "y")
    _write(pd.DataFrame({**good, "split": ["train"] * 5 + ["holdout"]}), path)
    with pytest.raises(DatasetError, match=r"\['holdout'\]; valid: train, val, test"):
        tables.load_table(path, "y")
    with pytest.raises(DatasetError, match=r"unsupported table type '.xlsx'.*\.csv, \.parquet"):
        tables.load_table(tmp_path / "t.xlsx", "y")
    with pytest.raises(DatasetMissingError, match="does not exist"):
        tables.load_table(tmp_path / "absent.csv", "y")
