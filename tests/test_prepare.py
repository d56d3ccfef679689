"""Tests for pipeline.datasets.prepare: fetch -> manifest -> load_prepared for every dataset, offline."""

from __future__ import annotations

import hashlib
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.datasets import (
    PMI_DATASET_URL,
    TOY_CLASSES,
    ArrayDataset,
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    cifar10,
    load_digits,
    load_toy,
    mnist,
    pmi,
    tables,
)
from pipeline.datasets.prepare import (
    FETCHED_FILE,
    MANIFEST_COLUMNS,
    check_manifest,
    fetch_dataset,
    load_prepared,
    make_manifest,
    read_manifest,
    write_manifest,
)
from tests.fakes import (
    CIFAR_NAMES,
    NDCS,
    write_fake_cifar,
    write_fake_cifar_archive,
    write_fake_mnist,
    write_pill_tree,
)

MNIST_RAW = [f"MNIST/raw/{name}" for name in sorted(mnist.MNIST_FILES)]


def _sizes(frame: pd.DataFrame) -> dict[str, list[int]]:
    """Samples per class (in label order) of each split present."""
    k = frame["label"].max() + 1
    return {s: np.bincount(frame.loc[frame["split"] == s, "label"], minlength=k).tolist()
            for s in ("train", "val", "test") if (frame["split"] == s).any()}


def _assert_same_data(got: ClassificationData, want: ClassificationData, *,
                      train_items: bool = True) -> None:
    """Same classes, shape, normalisation, and the same samples (tensors) in every split."""
    assert got.classes == want.classes and got.input_shape == want.input_shape
    assert got.normalization == want.normalization
    assert list(got.splits) == list(want.splits)
    for name, split in got.splits.items():
        other = want.splits[name]
        assert np.array_equal(got.labels(name), want.labels(name))
        if isinstance(split, ArrayDataset):
            assert torch.equal(split.x, other.x) and torch.equal(split.y, other.y)
        else:
            assert np.array_equal(split.indices, other.indices)
            if name != "train" or train_items:
                for i in range(min(len(split), 4)):
                    assert torch.equal(split[i][0], other[i][0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ toy, digits


def test_toy_round_trip_matches_load_toy(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw" / "toy"
    summary = fetch_dataset("toy", raw, seed=3)
    assert sorted(summary["files"]) == ["classes.json", "toy.npz"]
    assert summary["files"]["toy.npz"] == _sha256(raw / "toy.npz")
    # 50 train + 50 val + 500 test points for each of the three classes.
    assert summary["num_samples"] == 1800 and summary["classes"] == list(TOY_CLASSES)
    assert summary["options"] == {"seed": 3, "val_per_class": 50}
    assert (raw / FETCHED_FILE).read_text() == json.dumps(summary, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in raw.parent.iterdir()) == ["toy"]  # no work folder left

    frame = make_manifest("toy", raw)
    assert list(frame.columns) == list(MANIFEST_COLUMNS) and (frame["path"] == "").all()
    assert _sizes(frame) == {"train": [50] * 3, "val": [50] * 3, "test": [500] * 3}
    assert frame["sample_id"].tolist() == list(range(1800))
    assert frame.loc[frame["label"] == 1, "class_name"].unique().tolist() == ["green"]
    data = load_prepared("toy", raw, frame)
    _assert_same_data(data, load_toy(seed=3, val_per_class=50))
    assert data.normalization is None and data.classes == list(TOY_CLASSES)


def test_fetch_is_byte_reproducible_and_refetch_replaces(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "toy", tmp_path / "b" / "toy"
    fetch_dataset("toy", first, seed=1)
    fetch_dataset("toy", second, seed=1)
    assert _tree(first) == _tree(second)
    fetch_dataset("toy", second, seed=2)  # replaces the earlier output as a whole
    assert _tree(first)["toy.npz"] != _tree(second)["toy.npz"]
    assert [p.name for p in second.parent.iterdir()] == ["toy"]


def test_digits_round_trip_equals_load_digits(tmp_path: Path) -> None:
    raw = tmp_path / "digits"
    summary = fetch_dataset("digits", raw, source=tmp_path / "left over from another dataset")
    assert summary["num_samples"] == 1797 and summary["classes"] == [str(d) for d in range(10)]
    with np.load(raw / "digits.npz") as npz:  # raw counts 0..16, not standardised
        assert npz["images"].shape == (1797, 8, 8) and npz["images"].max() == 16
        assert npz["target"].tolist()[:3] == [0, 1, 2]

    reference = load_digits(seed=4)
    frame = make_manifest("digits", raw, seed=4)
    for split, indices in reference.metadata["indices"].items():
        assert frame.loc[frame["split"] == split, "sample_id"].tolist() == indices
    sizes = np.array(list(_sizes(frame).values()))
    # 6:2:2 of each class's 174..183 digits, to within one sample.
    assert (np.abs(sizes - np.array([[0.6], [0.2], [0.2]]) * sizes.sum(0)) < 1).all()
    data = load_prepared("digits", raw, frame)
    _assert_same_data(data, reference)
    train = data.splits["train"].x.double()  # standardised with the train split's statistics
    assert abs(train.mean().item()) < 1e-5 and abs(train.std(unbiased=False).item() - 1) < 1e-5


@pytest.fixture(scope="module")
def digits_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("data") / "digits"
    fetch_dataset("digits", raw)
    return raw


def test_manifest_is_deterministic_and_seeded(digits_raw: Path, tmp_path: Path) -> None:
    a, b = make_manifest("digits", digits_raw, seed=0), make_manifest("digits", digits_raw, seed=0)
    pd.testing.assert_frame_equal(a, b)
    write_manifest(a, tmp_path / "a.parquet")
    write_manifest(b, tmp_path / "sub" / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "sub" / "b.parquet").read_bytes()
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "a.parquet"), a)
    other = make_manifest("digits", digits_raw, seed=1)
    assert not a["split"].equals(other["split"])
    assert _sizes(a) == _sizes(other)  # the same per-class sizes, other samples
    # A manifest read from disk loads the same data as the frame.
    _assert_same_data(load_prepared("digits", digits_raw, tmp_path / "a.parquet"),
                      load_prepared("digits", digits_raw, a))


def test_manifest_checks(digits_raw: Path, tmp_path: Path) -> None:
    frame = make_manifest("digits", digits_raw)
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['split'\]"):
        check_manifest(frame.drop(columns="split"))
    bad = frame.copy()
    bad.loc[0, "split"] = "holdout"
    with pytest.raises(DatasetError, match=r"unknown \['holdout'\]"):
        check_manifest(bad)
    bad = frame.copy()
    bad.loc[0, "class_name"] = "seven"  # label 0 now has two names
    with pytest.raises(DatasetError, match="map one to one"):
        check_manifest(bad)
    with pytest.raises(DatasetMissingError, match="run the split stage"):
        read_manifest(tmp_path / "absent.parquet")
    # Valid but stale: two samples of different classes trade labels.
    stale = frame.copy()
    i, j = 0, int(np.flatnonzero(frame["label"] != frame.loc[0, "label"])[0])
    stale.loc[[i, j], ["label", "class_name"]] = stale.loc[[j, i], ["label", "class_name"]].to_numpy()
    with pytest.raises(DatasetError, match=r"2 manifest label\(s\) in split .* stale"):
        load_prepared("digits", digits_raw, stale)
    with pytest.raises(DatasetError, match=r"option\(s\) \[.image_size.\] do not apply to dataset .digits."):
        load_prepared("digits", digits_raw, frame, image_size=32)


def test_bad_requests_fail_before_any_output(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'; known: cifar10, digits"):
        fetch_dataset("imagenet", tmp_path / "x")
    with pytest.raises(DatasetMissingError, match="does not exist; fix data.source"):
        fetch_dataset("table", tmp_path / "x", source=tmp_path / "absent.csv")
    with pytest.raises(DatasetMissingError, match="needs your table: set `data.source`"):
        fetch_dataset("table", tmp_path / "x")
    with pytest.raises(DatasetMissingError, match="run the fetch stage"):
        make_manifest("digits", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- tables


def _fruit(rng_seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    return pd.DataFrame({"a": rng.normal(size=25), "b": rng.normal(3, 2, size=25),
                         "kind": ["pear"] * 10 + ["apple"] * 10 + ["fig"] * 5})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trip_matches_load_table(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"Fruit{suffix.upper()}"
    frame = _fruit()
    (frame.to_parquet if suffix == ".parquet" else frame.to_csv)(source, index=False)
    raw = tmp_path / "raw" / "table"
    summary = fetch_dataset("table", raw, source=source, label_column="kind")
    assert sorted(summary["files"]) == [f"table{suffix}"]
    assert (raw / f"table{suffix}").read_bytes() == source.read_bytes()
    assert summary["classes"] == ["apple", "fig", "pear"] and summary["num_samples"] == 25

    manifest = make_manifest("table", raw, seed=2, label_column="kind")
    assert _sizes(manifest) == {"train": [6, 3, 6], "val": [2, 1, 2], "test": [2, 1, 2]}
    data = load_prepared("table", raw, manifest, label_column="kind")
    _assert_same_data(data, tables.load_table(source, "kind", seed=2))
    train = data.splits["train"].x.double()
    np.testing.assert_allclose(train.mean(0).numpy(), 0.0, atol=1e-6)
    with pytest.raises(DatasetError, match="label column 'label' not in"):
        make_manifest("table", raw)


def test_table_split_column_wins_and_every_class_must_be_in_every_split(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(8.0), "label": [0, 0, 0, 0, 1, 1, 1, 1],
                          "split": ["train", "val", "test", "train", "train", "val", "test", "test"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    raw = tmp_path / "raw"
    fetch_dataset("table", raw, source=tmp_path / "t.csv")
    manifest = make_manifest("table", raw, seed=5)
    assert manifest["split"].tolist() == frame["split"].tolist()
    data = load_prepared("table", raw, manifest)
    assert data.splits["train"].x.shape == (3, 1)  # the split column is not a feature

    frame.loc[5, "split"] = "train"  # class 1 loses its only validation row
    frame.to_csv(tmp_path / "t.csv", index=False)
    fetch_dataset("table", raw, source=tmp_path / "t.csv")
    with pytest.raises(DatasetError, match="class '1' has no sample in split 'val'"):
        make_manifest("table", raw)


# ---------------------------------------------------------------------------- MNIST, CIFAR-10


def test_mnist_from_source_round_trip_and_kept_when_valid(tmp_path: Path) -> None:
    source = tmp_path / "downloads"
    write_fake_mnist(source, per_class=3, test=10)  # torchvision's layout, gzipped
    raw = tmp_path / "raw" / "mnist"
    summary = fetch_dataset("mnist", raw, source=source, verify_checksums=False)
    assert sorted(summary["files"]) == MNIST_RAW  # decompressed; the .gz files are not kept
    assert summary["num_samples"] == 40 and summary["options"] == {"checksums_verified": False}

    manifest = make_manifest("mnist", raw, seed=0, val_fraction=0.1)
    # 3 per class at 0.9/0.1 -> 2 train, 1 val; the official test set follows the 30 train rows.
    assert _sizes(manifest) == {"train": [2] * 10, "val": [1] * 10, "test": [1] * 10}
    assert manifest.loc[manifest["split"] == "test", "sample_id"].tolist() == list(range(30, 40))
    _assert_same_data(load_prepared("mnist", raw, manifest), mnist.load_mnist(raw, seed=0))

    # A valid earlier fetch stands: no source or download needed, nothing rewritten.
    before = {p: p.stat().st_ino for p in raw.rglob("*")}
    assert fetch_dataset("mnist", raw, verify_checksums=False) == summary
    assert {p: p.stat().st_ino for p in raw.rglob("*")} == before


def test_mnist_bare_files_and_checksum_failure_leaves_raw_dir_untouched(tmp_path: Path) -> None:
    source = tmp_path / "bare"
    write_fake_mnist(source, layout=False, gz=False, test=10)
    raw = tmp_path / "raw" / "mnist"
    fetch_dataset("mnist", raw, source=source, verify_checksums=False)
    before = _tree(raw)
    # Verified fetches need the official .gz files: these are neither gzipped nor official.
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz.*missing or differ .*md5"):
        fetch_dataset("mnist", raw, source=source)
    gz_source = tmp_path / "gz"
    write_fake_mnist(gz_source, test=10)
    with pytest.raises(DatasetError, match=r"data.source .*gz.* differ from the md5s"):
        fetch_dataset("mnist", raw, source=gz_source)
    assert _tree(raw) == before
    assert sorted(p.name for p in raw.parent.iterdir()) == ["mnist"]


def test_mnist_offline_without_source_says_what_to_put_where(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw" / "mnist"
    with pytest.raises(DatasetMissingError) as info:
        fetch_dataset("mnist", raw)
    message = str(info.value)
    for name in mnist.MNIST_FILES:
        assert f"{name}.gz" in message
    assert mnist.MNIST_URL in message and "data.source" in message and "params.yaml" in message
    assert f"{tmp_path}/data/downloads/mnist/" in message and f"{raw}/MNIST/raw/" in message
    assert not (tmp_path / "data").exists()


def test_download_offline_fails_fast_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def unreachable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    for name, host in (("mnist", "ossci-datasets.s3.amazonaws.com"), ("cifar10", "www.cs.toronto.edu")):
        with pytest.raises(DatasetMissingError, match=f"data.download is true, but cannot reach {host}"):
            fetch_dataset(name, tmp_path / "raw" / name, download=True)
    assert list((tmp_path / "raw").iterdir()) == []


def test_every_class_in_every_split_names_class_and_split(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "src", test=5)  # the test set holds digits 0..4 only
    fetch_dataset("mnist", tmp_path / "mnist", source=tmp_path / "src", verify_checksums=False)
    with pytest.raises(DatasetError, match="class '5' has no sample in split 'test'; class '6'"):
        make_manifest("mnist", tmp_path / "mnist")


@pytest.mark.parametrize("form", ["archive", "folder", "bare"])
def test_cifar10_from_source_round_trip(tmp_path: Path, form: str) -> None:
    if form == "archive":
        source = write_fake_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    else:
        source = tmp_path / "src"
        write_fake_cifar(source / cifar10.CIFAR10_FOLDER if form == "folder" else source)
    raw = tmp_path / "raw" / "cifar10"
    summary = fetch_dataset("cifar10", raw, source=source, verify_checksums=False)
    assert sorted(summary["files"]) == sorted(f"{cifar10.CIFAR10_FOLDER}/{f}" for f in cifar10.CIFAR10_FILES)
    assert summary["classes"] == CIFAR_NAMES

    manifest = make_manifest("cifar10", raw, seed=1)
    assert _sizes(manifest) == {"train": [4] * 10, "val": [1] * 10, "test": [1] * 10}
    data = load_prepared("cifar10", raw, manifest, augment=False)
    _assert_same_data(data, cifar10.load_cifar10(raw, seed=1, augment=False, verify_checksums=False))
    assert data.input_bounds()[0].shape == (3, 1, 1)
    augmented = load_prepared("cifar10", raw, manifest)
    assert "RandomCrop" in repr(augmented.splits["train"].transform)


def test_cifar10_checksums_verified_by_default(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path / "src")
    with pytest.raises(DatasetError, match=r"data_batch_1, .*batches.meta from data.source .* md5s"):
        fetch_dataset("cifar10", tmp_path / "raw" / "cifar10", source=tmp_path / "src")
    assert list((tmp_path / "raw").iterdir()) == []


# -------------------------------------------------------------------------------------- PMI


@pytest.fixture(scope="module")
def pill_source(tmp_path_factory) -> Path:
    root = write_pill_tree(tmp_path_factory.mktemp("pills") / "PMI" / "images")
    (root / "50111-0434" / "notes.txt").write_text("not an image: not copied")
    with zipfile.ZipFile(root.parent.parent / "PMI.zip", "w") as zf:
        for path in sorted(root.rglob("*.png")):
            zf.write(path, path.relative_to(root.parent.parent).as_posix())
    return root.parent.parent


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_pmi_round_trip_matches_load_pmi(tmp_path: Path, pill_source: Path, form: str) -> None:
    source = pill_source if form == "folder" else pill_source / "PMI.zip"
    raw = tmp_path / "raw" / "pmi"
    summary = fetch_dataset("pmi", raw, source=source)
    expected = sorted(f"{ndc}/img_{i:03d}.png" for ndc, (n, _) in NDCS.items() for i in range(n))
    assert sorted(summary["files"]) == expected and summary["classes"] == list(NDCS)
    if form == "folder":  # hard links, not copies, of the user's images (same file system here)
        first = "50111-0434/img_000.png"
        assert (raw / first).stat().st_ino == (pill_source / "PMI" / "images" / first).stat().st_ino

    manifest = make_manifest("pmi", raw, seed=0)
    assert _sizes(manifest) == {"train": [6, 4, 3], "val": [2, 2, 1], "test": [2, 1, 1]}
    assert manifest["path"].tolist() == expected
    reference = pmi.load_pmi(raw, seed=0, crop_size=32, image_size=16)
    data = load_prepared("pmi", raw, manifest, image_size=16, crop_size=32)
    _assert_same_data(data, reference, train_items=False)
    assert data.input_shape == (3, 16, 16) and data.input_bounds() is not None
    # Without augmentation a training sample is the eval view of its image.
    plain = load_prepared("pmi", raw, manifest, augment=False, image_size=16, crop_size=32)
    train = plain.splits["train"]
    assert torch.equal(train[0][0], reference.splits["val"].transform(train.dataset[int(train.indices[0])][0]))


def test_pmi_manifest_follows_paths(tmp_path: Path, pill_source: Path) -> None:
    raw = tmp_path / "pmi"
    fetch_dataset("pmi", raw, source=pill_source)
    manifest = make_manifest("pmi", raw)
    shuffled = manifest.assign(sample_id=manifest["sample_id"][::-1].to_numpy())  # ids ignored
    _assert_same_data(load_prepared("pmi", raw, shuffled, augment=False, image_size=16, crop_size=32),
                      load_prepared("pmi", raw, manifest, augment=False, image_size=16, crop_size=32))
    (raw / manifest.loc[0, "path"]).unlink()
    with pytest.raises(DatasetError, match=r"1 manifest image\(s\) are not in"):
        load_prepared("pmi", raw, manifest, image_size=16, crop_size=32)


def test_pmi_without_source_points_to_the_download_page(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=f"{PMI_DATASET_URL}.*`data.source` in params.yaml"):
        fetch_dataset("pmi", tmp_path / "pmi")
    assert list(tmp_path.iterdir()) == []
