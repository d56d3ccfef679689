"""Tests for pipeline/datasets/images.py and image_folders.py: a user's images as an .npz or an
ImageFolder tree, through fetch -> manifest -> load, with every source problem failing in fetch,
by name."""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.datasets import (
    DATASETS,
    ArrayDataset,
    DatasetError,
    DatasetMissingError,
    image_folders,
    images,
)
from pipeline.datasets.prepare import fetch_dataset, load_prepared, make_manifest
from pipeline.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]


def _arrays(labels: list[int], per_class: int, shape: tuple[int, ...] = (6, 5),
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of ``shape`` whose brightness grows with the label, ``per_class`` per label,
    interleaved so that a class's images are not contiguous."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.asarray(labels), per_class)
    x = (rng.integers(0, 60, (y.shape[0], *shape)) + 40 * np.searchsorted(sorted(labels), y)
         .reshape(-1, *([1] * len(shape)))).astype(np.uint8)
    return x, y


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    """A PNG of ``size`` (width, height) whose pixels vary with position and ``value``."""
    from PIL import Image

    width, height = size
    ramp = (np.add.outer(np.arange(height) * 7, np.arange(width) * 3) + value) % 256
    pixels = ramp.astype(np.uint8)
    if mode == "RGB":
        pixels = np.stack([pixels, 255 - pixels, np.full_like(pixels, value)], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def _tree(root: Path, counts: dict[str, int], size: tuple[int, int] = (10, 8),
          mode: str = "RGB") -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _png(root / name / f"{i:02d}.png", size, 30 * c + 5 * i, mode)
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_standardised(x: torch.Tensor) -> None:
    """Mean 0 and population std 1 per channel over a batch (N, C, H, W)."""
    x = x.double()
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-5)


def _stack(split) -> torch.Tensor:
    return torch.stack([split[i][0] for i in range(len(split))])


# ---------------------------------------------------------------- arrays


def test_npz_round_trip_labels_classes_shape_and_training_statistics(tmp_path: Path) -> None:
    x, y = _arrays([10, 3, 7], per_class=5)  # labels need not be 0..K-1 without classes
    source = _npz(tmp_path / "digits.npz", x=x, y=y)
    raw = tmp_path / "raw" / "images"
    summary = fetch_dataset("images", raw, source=source)
    # Names sort numerically ("3" < "7" < "10"); each label becomes its position in that order.
    assert summary["classes"] == ["3", "7", "10"] and summary["num_samples"] == 15
    assert sorted(summary["files"]) == ["images.npz"]
    first = _sha256(raw / "images.npz")
    fetch_dataset("images", raw, source=source)
    assert _sha256(raw / "images.npz") == first  # same arrays, same bytes

    manifest = make_manifest("images", raw, seed=0)
    index = {3: 0, 7: 1, 10: 2}
    assert (manifest["label"].to_numpy() == [index[v] for v in y]).all()
    assert manifest["split"].value_counts().to_dict() == {"train": 9, "val": 3, "test": 3}
    data = load_prepared("images", raw, manifest, augment=False)
    assert data.classes == ["3", "7", "10"] and data.input_shape == (1, 6, 5)
    assert all(isinstance(s, ArrayDataset) for s in data.splits.values())  # in memory, no decoding
    train = data.splits["train"]
    _assert_standardised(train.x)
    # Statistics of the training rows only, over [0, 1] pixels, applied to every split.
    rows = manifest.loc[manifest["split"] == "train", "sample_id"].to_numpy()
    pixels = x[rows].astype(np.float64) / 255
    mean, std = pixels.mean(), pixels.std()
    assert data.normalization.mean == pytest.approx((mean,)) and data.normalization.std == pytest.approx((std,))
    test_rows = manifest.loc[manifest["split"] == "test", "sample_id"].to_numpy()
    np.testing.assert_allclose(data.splits["test"].x[:, 0].numpy(), (x[test_rows] / 255 - mean) / std,
                               atol=1e-5)
    low, high = data.input_bounds()
    assert low.shape == (1, 1, 1)
    assert low.item() == pytest.approx(-mean / std) and high.item() == pytest.approx((1 - mean) / std)
    # The standalone loader draws the same split from the same seed.
    alone = images.load_images(source, seed=0)
    assert torch.equal(alone.splits["train"].x, train.x)


def test_npz_with_string_classes_and_rgb_float_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 4)
    x = rng.random((12, 8, 10, 3)) * np.array([0.2, 0.6, 1.0])  # channels differ in range
    source = _npz(tmp_path / "rgb.npz", x=x, y=y, classes=np.array(["cat", "dog", "emu"]))
    raw = tmp_path / "images"
    assert fetch_dataset("images", raw, source=source)["classes"] == ["cat", "dog", "emu"]
    data = load_prepared("images", raw, make_manifest("images", raw, seed=3), augment=False)
    assert data.classes == ["cat", "dog", "emu"] and data.input_shape == (3, 8, 10)
    assert len(data.normalization.mean) == 3 and data.input_bounds()[0].shape == (3, 1, 1)
    _assert_standardised(data.splits["train"].x)
    assert data.normalization.mean[0] < data.normalization.mean[2]  # per channel, not pooled
    for split in data.splits:
        assert np.bincount(data.labels(split), minlength=3).min() >= 1


def test_ten_thousand_small_images_load_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    source = _npz(tmp_path / "many.npz", x=rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8),
                  y=rng.integers(0, 10, 10_000))
    start = time.perf_counter()
    data = images.load_images(source)
    elapsed = time.perf_counter() - start
    assert isinstance(data.splits["train"], ArrayDataset) and data.input_shape == (1, 28, 28)
    assert sum(len(s) for s in data.splits.values()) == 10_000
    assert elapsed < 3.0, f"loading 10,000 28x28 images took {elapsed:.2f} s"


def _matching_crops(out: torch.Tensor, x: torch.Tensor, fill: float, pad: int,
                    flipped: bool = False) -> int:
    """How many of the (2 pad + 1)^2 padded crops of ``x`` (optionally flipped) equal ``out``."""
    c, h, w = x.shape
    canvas = torch.full((c, h + 2 * pad, w + 2 * pad), fill)
    canvas[:, pad:pad + h, pad:pad + w] = x
    crops = [canvas[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return sum(torch.equal(out, crop.flip(-1) if flipped else crop) for crop in crops)


def test_augmentation_is_a_padded_crop_and_flips_only_when_asked(tmp_path: Path) -> None:
    x, y = _arrays([0, 1], per_class=6, shape=(16, 16))
    source = _npz(tmp_path / "a.npz", x=x, y=y)
    plain = images.load_images(source, augment=False)
    data = images.load_images(source, augment=True)
    assert repr(data.splits["train"].transform) == "RandomCropPad(pad=2, hflip=False)"  # 16 // 8
    assert torch.equal(data.splits["val"].x, plain.splits["val"].x)  # eval splits untouched
    fill = data.normalization.clamp_min[0]  # black, in standardised units
    torch.manual_seed(0)
    shifted = 0
    for i in range(len(data.splits["train"])):
        out, reference = data.splits["train"][i][0], plain.splits["train"][i][0]
        assert out.shape == reference.shape
        assert _matching_crops(out, reference, fill, 2) >= 1
        shifted += not torch.equal(out, reference)
    assert shifted >= 4
    flips = images.load_images(source, augment=True, hflip=True)
    torch.manual_seed(0)
    flipped = sum(_matching_crops(flips.splits["train"][i][0], plain.splits["train"][i][0], fill, 2)
                  == 0 for i in range(len(plain.splits["train"])) for _ in range(3))
    assert flipped >= 3


# ---------------------------------------------------------------- folders


def test_folder_tree_fetch_manifest_and_load(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", {"ant": 5, "bee": 5, "cat": 4})
    (source / ".thumbs").mkdir()  # hidden: not a class
    (source / "ant" / "notes.txt").write_text("not an image: not copied")
    raw = tmp_path / "raw" / "images"
    summary = fetch_dataset("images", raw, source=source)
    assert summary["classes"] == ["ant", "bee", "cat"]
    assert summary["options"] == {"format": "folder", "height": 8, "width": 10, "channels": 3}
    assert "ant/notes.txt" not in summary["files"] and "images.json" in summary["files"]
    assert (raw / "bee/00.png").stat().st_ino == (source / "bee/00.png").stat().st_ino  # linked

    manifest = make_manifest("images", raw, seed=0)
    assert manifest["path"].tolist()[:2] == ["ant/00.png", "ant/01.png"]
    data = load_prepared("images", raw, manifest, augment=False)
    assert data.input_shape == (3, 8, 10) and data.classes == ["ant", "bee", "cat"]
    _assert_standardised(_stack(data.splits["train"]))
    # A sample is its PNG's pixels / 255, standardised with the training statistics.
    from PIL import Image

    row = manifest[manifest["split"] == "test"].iloc[0]
    pixels = np.asarray(Image.open(raw / row["path"]), dtype=np.float64).transpose(2, 0, 1) / 255
    mean, std = (np.array(v).reshape(3, 1, 1) for v in (data.normalization.mean, data.normalization.std))
    np.testing.assert_allclose(data.splits["test"][0][0].numpy(), (pixels - mean) / std, atol=1e-5)
    # Rows are found by path, whatever their sample_id.
    shuffled = manifest.assign(sample_id=manifest["sample_id"][::-1].to_numpy())
    again = load_prepared("images", raw, shuffled, augment=False)
    assert torch.equal(again.splits["test"][0][0], data.splits["test"][0][0])
    with pytest.raises(DatasetError, match=r"option\(s\) \['image_size'\] do not apply to dataset 'images'"):
        load_prepared("images", raw, manifest, image_size=16)


def test_split_folders_are_kept_and_a_missing_val_is_carved_from_train(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _tree(source / "train", {"a": 4, "b": 4})
    _tree(source / "test", {"a": 2, "b": 1})
    raw = tmp_path / "raw"
    fetch_dataset("images", raw, source=source)
    manifest = make_manifest("images", raw, seed=0, val_fraction=0.25)
    by_split = {s: sorted(manifest.loc[manifest["split"] == s, "path"]) for s in ("train", "val", "test")}
    assert by_split["test"] == ["test/a/00.png", "test/a/01.png", "test/b/00.png"]
    assert len(by_split["val"]) == 2 and all(p.startswith("train/") for p in by_split["val"])
    assert len(by_split["train"]) == 6
    assert np.bincount(manifest.loc[manifest["split"] == "val", "label"]).tolist() == [1, 1]

    _tree(source / "val", {"a": 1, "b": 2})  # a val/ folder is used as it is
    fetch_dataset("images", raw, source=source)
    manifest = make_manifest("images", raw, seed=0, val_fraction=0.25)
    assert sorted(manifest.loc[manifest["split"] == "val", "path"]) == [
        "val/a/00.png", "val/b/00.png", "val/b/01.png"]
    assert (manifest["split"] == "train").sum() == 8
    data = load_prepared("images", raw, manifest, augment=True)
    assert data.splits["train"][0][0].shape == (3, 8, 10)


def test_mixed_sizes_and_modes_take_the_most_common_shape(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for c, name in enumerate(["x", "y"]):
        for i in range(3):
            _png(source / name / f"{i}.png", (12, 9), 40 * c + i, mode="L")  # most: 9 high, 12 wide
        _png(source / name / "odd.png", (20, 31), 99, mode="RGB")
    raw = tmp_path / "raw"
    summary = fetch_dataset("images", raw, source=source)
    assert summary["options"] == {"format": "folder", "height": 9, "width": 12, "channels": 1}
    for augment in (False, True):
        data = load_prepared("images", raw, make_manifest("images", raw), augment=augment)
        assert data.input_shape == (1, 9, 12)
        for split in data.splits.values():
            assert all(split[i][0].shape == (1, 9, 12) for i in range(len(split)))


def test_choose_geometry_ties_cap_and_channels() -> None:
    gray = np.array([True, False, False])
    # Equal counts: the larger area wins, then the taller; 2 of 3 in colour -> RGB.
    assert image_folders.choose_geometry(np.array([[10, 20], [20, 10], [5, 5]]), gray) == (20, 10, 3)
    # The long side is capped at 224, keeping the aspect ratio.
    assert image_folders.choose_geometry(np.array([[300, 150]] * 2 + [[10, 10]]), ~gray) == (224, 112, 1)
    assert image_folders.choose_geometry(np.array([[4, 6], [4, 6]]), np.array([True, False])) == (4, 6, 3)


# ---------------------------------------------------------------- errors


def _save(tmp_path: Path, **arrays) -> Path:
    return _npz(tmp_path / "bad.npz", **arrays)


X9 = np.zeros((9, 6, 6), dtype=np.uint8)
Y9 = np.repeat([0, 1, 2], 3)

NPZ_ERRORS = {
    "no y": ({"x": X9}, r"bad.npz has keys \['x'\]; it needs x .* and y"),
    "extra key": ({"x": X9, "y": Y9, "labels": Y9}, r"keys \['labels', 'x', 'y'\].*nothing else"),
    "table": ({"x": np.zeros((9, 4)), "y": Y9}, r"x has shape \(9, 4\), one feature vector per row.*dataset: table"),
    "4 channels": ({"x": np.zeros((9, 6, 6, 4)), "y": Y9}, r"x has shape \(9, 6, 6, 4\), 4 channels last.*1 or 3"),
    "channels first": ({"x": np.zeros((9, 3, 6, 6)), "y": Y9}, r"channels-first.*transpose\(0, 2, 3, 1\)"),
    "rank 5": ({"x": np.zeros((9, 2, 6, 6, 3)), "y": Y9}, r"x has shape \(9, 2, 6, 6, 3\); images must be \(N, H, W\)"),
    "strings": ({"x": np.full((9, 6, 6), "a"), "y": Y9}, r"x has dtype <U1; images must be"),
    "length": ({"x": X9, "y": Y9[:8]}, r"x holds 9 images but y holds 8 labels"),
    "non-integer": ({"x": X9, "y": Y9 + np.r_[0, 0.5, np.zeros(7)]}, r"non-integer label 0.5 at index 1"),
    "string labels": ({"x": X9, "y": Y9.astype(str)}, r"y has dtype <U21; labels must be integers"),
    "negative": ({"x": X9, "y": np.r_[Y9[:4], -1, Y9[5:]]}, r"negative label -1 at index 4"),
    "classes short": ({"x": X9, "y": Y9, "classes": np.array(["a", "b"])},
                      r"label 2 at index 6, outside 0..1.*classes' 2 names"),
    "classes long": ({"x": X9, "y": Y9, "classes": np.array(["a", "b", "c", "d"])},
                     r"classes has 4 names but no image has label\(s\) \[3\] \(\['d'\]\)"),
    "classes repeat": ({"x": X9, "y": Y9, "classes": np.array(["a", "b", "a"])}, r"repeats .* \['a'\]"),
    "NaN": ({"x": np.where(np.arange(9)[:, None, None] == 7, np.nan, X9 / 255.0), "y": Y9},
            r"NaN or infinite pixels in 1 image\(s\), e.g. index 7"),
    "float range": ({"x": X9 + 2.0, "y": Y9}, r"float x must hold pixels in \[0, 1\]; got min 2, max 2"),
    "int range": ({"x": X9.astype(np.int64) + 300, "y": Y9}, r"integer x must hold pixels 0..255; got min 300"),
    "one class": ({"x": X9, "y": np.zeros(9, dtype=int)}, r"has 1 class \['0'\]; a classifier needs at least 2"),
    "small class": ({"x": X9, "y": np.r_[Y9[:-1], 0]}, r"'2' has 2; each class needs at least 3 for the 6:2:2"),
}


@pytest.mark.parametrize("case", sorted(NPZ_ERRORS))
def test_npz_problems_fail_in_fetch_naming_the_problem(tmp_path: Path, case: str) -> None:
    arrays, match = NPZ_ERRORS[case]
    source = _save(tmp_path, **arrays)
    with pytest.raises(DatasetError, match=match) as caught:
        fetch_dataset("images", tmp_path / "raw", source=source)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "raw").exists()  # nothing written


def test_source_files_that_are_not_images_fail_in_fetch(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match=r"absent.npz does not exist"):
        fetch_dataset("images", tmp_path / "raw", source=tmp_path / "absent.npz")
    (tmp_path / "rows.csv").write_text("a,label\n1,0\n")
    with pytest.raises(DatasetError, match=r"rows.csv .* must be an .npz file .*got a .csv file; "
                                           r"for a table of features use `dataset: table`"):
        fetch_dataset("images", tmp_path / "raw", source=tmp_path / "rows.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DatasetError, match=r"cannot read .*broken.npz as an .npz archive"):
        fetch_dataset("images", tmp_path / "raw", source=tmp_path / "broken.npz")
    np.save(tmp_path / "single.npy", X9)
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DatasetError, match=r"single.npz holds a single array, not an .npz"):
        fetch_dataset("images", tmp_path / "raw", source=tmp_path / "single.npz")
    with pytest.raises(DatasetMissingError, match=r"needs your images: set `data.source`"):
        fetch_dataset("images", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def _flat(root: Path) -> None:
    _tree(root, {"a": 3, "b": 3})


def _unreadable(root: Path) -> None:
    _flat(root)
    (root / "b" / "02.png").write_bytes(b"\x89PNG but not really")


def _truncated(root: Path) -> None:
    _flat(root)
    whole = (root / "a" / "01.png").read_bytes()
    (root / "a" / "01.png").write_bytes(whole[:len(whole) // 2])  # the header still reads


def _no_classes(root: Path) -> None:
    _png(root / "loose.png", (4, 4), 0)


def _empty_class(root: Path) -> None:
    _flat(root)
    (root / "c").mkdir()


def _small_class(root: Path) -> None:
    _tree(root, {"a": 3, "b": 2})


def _one_class(root: Path) -> None:
    _tree(root, {"only": 4})


def _split_classes_differ(root: Path) -> None:
    _tree(root / "train", {"a": 3, "b": 3})
    _tree(root / "test", {"a": 1, "c": 1})


def _split_and_class_folders(root: Path) -> None:
    _tree(root / "train", {"a": 3, "b": 3})
    _tree(root, {"c": 3})


def _split_without_test(root: Path) -> None:
    _tree(root / "train", {"a": 3, "b": 3})
    _tree(root / "val", {"a": 1, "b": 1})


def _train_too_small_to_carve(root: Path) -> None:
    _tree(root / "train", {"a": 2, "b": 1})
    _tree(root / "test", {"a": 1, "b": 1})


TREE_ERRORS = {
    "unreadable image": (_unreadable, r"cannot read image .*src/b/02.png \(cannot identify image file"),
    "truncated image": (_truncated, r"cannot read image .*src/a/01.png \(Truncated File Read\)"),
    "no class folders": (_no_classes, r"src has no class folders; expected .*src/<class>/<image>.png"),
    "empty class": (_empty_class, r"class folder\(s\) \['c'\] under .*src contain no image"),
    "small class": (_small_class, r"'b' has 2; each class needs at least 3"),
    "one class": (_one_class, r"has 1 class \['only'\]; a classifier needs at least 2"),
    "split classes differ": (_split_classes_differ, r"test/ lacks \['b'\] and has \['c'\] beyond train/'s \['a', 'b'\]"),
    "split and class folders": (_split_and_class_folders, r"mixes split folders \['train'\] with other folders \['c'\]"),
    "no test folder": (_split_without_test, r"split folder\(s\) \['train', 'val'\]; split folders need train/ and test/"),
    "train too small": (_train_too_small_to_carve, r"src/train: 'b' has 1; each class needs at least 2"),
}


@pytest.mark.parametrize("case", sorted(TREE_ERRORS))
def test_folder_problems_fail_in_fetch_naming_the_problem(tmp_path: Path, case: str) -> None:
    make, match = TREE_ERRORS[case]
    make(tmp_path / "src")
    with pytest.raises(DatasetError, match=match) as caught:
        fetch_dataset("images", tmp_path / "raw", source=tmp_path / "src")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "raw").exists()


def test_an_image_that_breaks_after_fetch_fails_at_load_by_name(tmp_path: Path) -> None:
    (tmp_path / "gone.png").write_bytes(b"GIF89a and then nothing")
    with pytest.raises(DatasetError, match=r"cannot read image .*gone.png \(cannot identify"):
        image_folders.decode_image(tmp_path / "gone.png", 4, 4, 3)


# ---------------------------------------------------------------- recipe and model


def test_recipe_loads_and_its_model_builds_for_the_data(tmp_path: Path) -> None:
    assert "images" in DATASETS and DATASETS["images"].needs_source
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["dataset"] = "images"
    params.setdefault("data", {})["source"] = "sources/my_images.npz"
    # The methods this recipe has sections for (params.yaml may list more as methods are added).
    params.setdefault("finetune", {})["methods"] = ["csada", "ap", "sosr", "penalty"]
    config = load_config(params, recipe_dir=REPO / "recipes", available_cpus=2)
    assert config.model == "small_cnn" and dict(config.model_options) == {"hidden": 128, "pool": 7}
    assert config.data.val_fraction == 0.2
    csada = {m.name: m for m in config.methods}["csada"]
    assert csada.optim.epochs == 8 and csada.options["eps"] == 10.0
    x, y = _arrays([0, 1, 2], per_class=3, shape=(28, 28))
    data = images.load_images(_npz(tmp_path / "d.npz", x=x, y=y))
    model = build_model(config.model, num_classes=data.num_classes, input_shape=data.input_shape,
                        **config.model_options).eval()
    with torch.no_grad():
        assert model(data.splits["train"].x).shape == (len(data.splits["train"]), 3)


# ---------------------------------------------------------------- what the fetch stage checks first
# (pipeline/datasets/sources.py: checks the readers, which are training code, do not make)


def _fetch_stage(project: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fetch stage's main on dataset 'images' with ``data.source`` under ``project``."""
    from stages import fetch

    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params.update(dataset="images", data={**params.get("data", {}), "source": source})
    monkeypatch.chdir(project)
    return fetch.main(load_config(params, recipe_dir=REPO / "recipes", available_cpus=2))


def _deep_png(path: Path, values: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)  # 16-bit grayscale: Pillow mode I;16


def test_a_16_bit_image_is_refused_at_fetch_not_clipped_to_white(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    tree = _tree(tmp_path / "sources" / "scans", {"a": 3, "b": 3}, mode="L")
    assert "ready" in _fetch_stage(tmp_path, "sources/scans", monkeypatch)  # 8-bit images pass
    # What decoding would make of a 16-bit scan whose values are all above 255: white throughout.
    _deep_png(tree / "b" / "deep.png", np.full((8, 10), 4000))
    with Image.open(tree / "b" / "deep.png") as image:
        assert image.mode == "I;16" and np.asarray(image.convert("L")).min() == 255
    _deep_png(tree / "a" / "deep.png", np.full((8, 10), 300))
    with pytest.raises(DatasetError) as caught:
        _fetch_stage(tmp_path, "sources/scans", monkeypatch)
    assert str(caught.value) == (
        "sources/scans/a/deep.png is a 16-bit image (Pillow mode I;16), one of 2 such images among the 8 under "
        "sources/scans; images are read as 8-bit pixels, which would clip every value above 255 to white: "
        "convert them to 8-bit first, scaled to fit the data (the full 16-bit range: pixel // 257; 12-bit data: "
        "pixel // 16)")


def test_a_text_file_named_npz_is_said_not_to_be_an_archive_without_pickle_advice(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "labels.npz").write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError) as caught:
        _fetch_stage(tmp_path, "sources/labels.npz", monkeypatch)
    assert str(caught.value) == ("data.source sources/labels.npz is not an .npz archive: it is text (starting 'x,y'); "
                                 "an .npz is the zip of arrays np.savez writes: np.savez('labels.npz', x=images, "
                                 "y=labels)")
    assert "pickle" not in str(caught.value)


def test_a_missing_source_that_dvc_tracks_says_pull_it_or_how_to_make_it(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sources").mkdir()
    with pytest.raises(DatasetMissingError, match=r"^data.source sources/mine.npz does not exist; fix data.source"):
        _fetch_stage(tmp_path, "sources/mine.npz", monkeypatch)
    # The paper's images: their .dvc file says how to make them where no remote has them.
    paper = REPO / "paper" / "sources" / "kmnist-10k.npz.dvc"
    (tmp_path / "sources" / paper.name).write_text(paper.read_text())
    with pytest.raises(DatasetMissingError) as caught:
        _fetch_stage(tmp_path, "sources/kmnist-10k.npz", monkeypatch)
    assert str(caught.value) == (
        "data.source sources/kmnist-10k.npz is not in this checkout; DVC tracks it (sources/kmnist-10k.npz.dvc): "
        "`dvc pull sources/kmnist-10k.npz` fetches it from the project's remote, or make it from torchvision's "
        "KMNIST test images with the one-line command in docs/paper.md (\"Default size\")")
    assert "## Default size" in (REPO / "docs" / "paper.md").read_text() and "kmnist-10k.npz" in (
        REPO / "docs" / "paper.md").read_text()
