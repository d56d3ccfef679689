"""A user's own images as a classification dataset: an ``.npz`` of arrays or an ImageFolder tree.

``data.source`` is either

* an ``.npz`` holding ``x``, the images, (N, H, W) or (N, H, W, C) with C 1 or 3, as pixels
  0..255 (uint8, or any integer type within that range) or floats in [0, 1]; ``y``, one integer
  label >= 0 per image; and optionally ``classes``, one name per class (a string array): labels
  must then be 0..K-1, label k naming ``classes[k]``. Without ``classes`` the class names are the
  distinct labels, sorted numerically, as strings, and each label becomes its position in that
  order. Fetch writes ``images.npz`` (``x`` channels last as uint8 or float32, ``y`` as 0..K-1,
  ``classes``) with :func:`~pipeline.datasets.adapter.write_npz`, so the bytes are reproducible.
* a folder of class folders, or of split folders ``train/``, ``test/`` and an optional ``val/``
  (layouts: :mod:`pipeline.datasets.image_folders`). Fetch hard-links the images (copies them where
  links cannot be made) with their relative paths and writes ``images.json``: the one shape all
  images take.

Splits: split folders stand as given, a missing ``val/`` being a seeded stratified
``val_fraction`` of ``train/`` (as MNIST and CIFAR-10 carve theirs); otherwise every class is split
6:2:2 with a seed (Section 5.3.2). So every class needs 3 images, or 2 in ``train/`` when ``val/``
is carved from it.

Size and channels of a folder tree are decided once, by fetch, from the image headers (the rule:
:mod:`pipeline.datasets.image_folders`), and recorded in ``images.json`` so that every stage
agrees. Arrays keep their own shape.

Inputs are pixels in [0, 1] standardised per channel with the mean and population std of the
training split (a constant channel gets std 1); ``normalization.raw_range`` is (0, 1), so attacks
clamp to valid pixels. Arrays are converted at once into in-memory tensors (:class:`ArrayDataset`,
no per-sample work); a tree's images are decoded per item, in DataLoader workers, and the training
statistics take one pass over the training images at load.

Augmentation (``augment=True``, training split only; flips only with ``hflip=True``): the padded
random crop of :func:`~pipeline.datasets.image_folders.crop_augmentation`, for arrays and trees.

Everything about a source is checked by fetch before anything is written; each problem is one
:class:`DatasetError` line naming the file, key or value and what would be valid.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .adapter import DatasetAdapter, FetchRequest, Inventory, no_options, write_npz
from .common import (
    ArrayDataset,
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    Normalization,
    TransformedSubset,
    check_indices,
    check_split_fractions_named,
    stratified_split,
)
from .image_folders import (
    MIN_PER_CLASS,
    _check_classes,
    crop_augmentation,
    image_geometry,
    link_or_copy,
    path_positions,
    pixel_stats,
    scan_image_tree,
    tree_data,
)
from .tables import TABLE_READERS
from .vision import carve_validation

ARRAYS_FILE = "images.npz"
LAYOUT_FILE = "images.json"
NPZ_KEYS: tuple[str, ...] = ("x", "y", "classes")
_STATS_CHUNK = 4096  # images per float64 block when summing pixels: bounded extra memory


# ---------------------------------------------------------------------------- arrays (.npz)


@dataclass(frozen=True)
class ImageArrays:
    """Checked image arrays: ``x`` (N, H, W, C) uint8 pixels or float32 in [0, 1], ``y`` (N,)
    int64 labels 0..K-1, ``classes`` the K names in label order."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]


def read_image_arrays(path: str | os.PathLike[str]) -> ImageArrays:
    """The ``.npz`` at ``path`` as :class:`ImageArrays`, after every check of the module doc."""
    path = Path(path)
    if not path.is_file():
        raise DatasetMissingError(f"image arrays {path} do not exist")
    arrays = _read_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if missing or unknown:
        raise DatasetError(f"{path} has keys {sorted(arrays)}; it needs x (the images) and y (the "
                           f"labels), may have classes (the names), and nothing else")
    x = _pixels(arrays["x"], path)
    y, classes = _labels(arrays["y"], arrays.get("classes"), x.shape[0], path)
    _check_classes(classes, y, MIN_PER_CLASS, f"{path}", "the 6:2:2 split")
    return ImageArrays(x, y, classes)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} holds a single array, not an .npz archive of x and y; save "
                               f"it with np.savez(path, x=images, y=labels)")
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        hint = ("; store classes as np.array(names, dtype=str), not as Python objects"
                if "Object arrays" in str(err) else "")
        raise DatasetError(f"cannot read {path} as an .npz archive of arrays ({err}){hint}"
                           ) from err


def _pixels(x: np.ndarray, path: Path) -> np.ndarray:
    """``x`` as (N, H, W, C) uint8, or float32 in [0, 1]."""
    if x.dtype == bool or x.dtype.kind not in "uif":
        raise DatasetError(f"{path}: x has dtype {x.dtype}; images must be integer pixels 0..255 "
                           f"(e.g. uint8) or floats in [0, 1]")
    if x.ndim == 2:
        raise DatasetError(f"{path}: x has shape {x.shape}, one feature vector per row; images are "
                           f"(N, H, W) or (N, H, W, C). For feature vectors use `dataset: table`")
    if x.ndim == 4 and x.shape[-1] not in (1, 3):
        hint = ("; it looks channels-first, so use x.transpose(0, 2, 3, 1)"
                if x.shape[1] in (1, 3) else "")
        raise DatasetError(f"{path}: x has shape {x.shape}, {x.shape[-1]} channels last; images "
                           f"need 1 or 3 channels as (N, H, W, C){hint}")
    if x.ndim not in (3, 4):
        raise DatasetError(f"{path}: x has shape {x.shape}; images must be (N, H, W) or "
                           f"(N, H, W, C) with C 1 or 3")
    if 0 in x.shape:
        raise DatasetError(f"{path}: x has shape {x.shape}; it needs at least one image of at "
                           f"least 1x1 pixel")
    x = x.reshape(*x.shape[:3], -1)
    if x.dtype.kind == "f":
        finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DatasetError(f"{path}: x holds NaN or infinite pixels in {bad.size} image(s), "
                               f"e.g. index {int(bad[0])}; pixels must be finite floats in [0, 1]")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise DatasetError(f"{path}: float x must hold pixels in [0, 1]; got min {low:g}, max "
                               f"{high:g} (divide 0..255 pixels by 255, or store them as uint8)")
        return x.astype(np.float32, copy=False)
    low, high = int(x.min()), int(x.max())
    if low < 0 or high > 255:
        raise DatasetError(f"{path}: integer x must hold pixels 0..255; got min {low}, max {high} "
                           f"(scale to 0..255, or store floats in [0, 1])")
    return x.astype(np.uint8, copy=False)


def _labels(y: np.ndarray, names: np.ndarray | None, n: int,
            path: Path) -> tuple[np.ndarray, list[str]]:
    """``y`` as labels 0..K-1 and the K class names (module doc)."""
    if y.ndim != 1:
        raise DatasetError(f"{path}: y has shape {y.shape}; it must be 1-D, one label per image")
    if y.shape[0] != n:
        raise DatasetError(f"{path}: x holds {n} images but y holds {y.shape[0]} labels; one label "
                           f"per image")
    if y.dtype == bool or y.dtype.kind not in "uif":
        raise DatasetError(f"{path}: y has dtype {y.dtype}; labels must be integers >= 0 (names "
                           f"go in classes)")
    if y.dtype.kind == "f":
        fractional = np.flatnonzero(~np.isfinite(y) | (np.mod(y, 1) != 0))
        if fractional.size:
            i = int(fractional[0])
            raise DatasetError(f"{path}: y holds non-integer label {y[i].item()!r} at index {i}; "
                               f"labels must be integers >= 0")
    negative = np.flatnonzero(y < 0)
    if negative.size:
        i = int(negative[0])
        raise DatasetError(f"{path}: y holds negative label {y[i].item()!r} at index {i} "
                           f"({negative.size} in all); labels must be integers >= 0")
    y = y.astype(np.int64)
    if names is None:
        values, y = np.unique(y, return_inverse=True)
        return y.astype(np.int64), [str(v) for v in values]
    if names.ndim != 1 or names.dtype.kind not in "US" or names.shape[0] == 0:
        raise DatasetError(f"{path}: classes has dtype {names.dtype} and shape {names.shape}; it "
                           f"must be a 1-D array of class names (strings)")
    classes = [str(c) for c in names.astype(str)]
    values, counts = np.unique(np.array(classes, dtype=str), return_counts=True)
    repeated = sorted(set(values[counts > 1].tolist()) | ({""} & set(classes)))
    if repeated:
        raise DatasetError(f"{path}: classes repeats or leaves empty name(s) {repeated}; each "
                           f"class needs its own non-empty name")
    k = len(classes)
    outside = np.flatnonzero(y >= k)
    if outside.size:
        i = int(outside[0])
        raise DatasetError(f"{path}: y holds label {int(y[i])} at index {i}, outside 0..{k - 1}, "
                           f"the labels that classes' {k} names cover; label k names classes[k]")
    unused = np.flatnonzero(np.bincount(y, minlength=k) == 0)
    if unused.size:
        raise DatasetError(f"{path}: classes has {k} names but no image has label(s) "
                           f"{unused.tolist()} ({[classes[i] for i in unused[:5]]}); give one name "
                           f"per label, for labels 0..K-1")
    return y, classes


# ---------------------------------------------------------------------------- loading


def arrays_data(arrays: ImageArrays, parts: Mapping[str, np.ndarray], *, augment: bool,
                hflip: bool = False, name: str = "images",
                metadata: Mapping[str, Any] | None = None) -> ClassificationData:
    """Checked arrays as splits ``parts`` (split -> row positions) of standardised tensors."""
    parts = check_indices(parts, arrays.y.shape[0], "the image arrays")
    x = torch.from_numpy(np.ascontiguousarray(arrays.x.transpose(0, 3, 1, 2))).to(torch.float32)
    if arrays.x.dtype == np.uint8:
        x.div_(255.0)
    train = torch.from_numpy(parts["train"])
    norm = Normalization(*pixel_stats(x[i] for i in train.split(_STATS_CHUNK)))
    x.sub_(torch.tensor(norm.mean).reshape(1, -1, 1, 1))
    x.div_(torch.tensor(norm.std).reshape(1, -1, 1, 1))
    y = torch.from_numpy(arrays.y)
    splits: dict[str, Dataset] = {k: ArrayDataset(x[idx], y[idx]) for k, idx in parts.items()}
    _, height, width = x.shape[1:]
    if augment:
        base = splits["train"]
        splits["train"] = TransformedSubset(base, np.arange(len(base)),
                                            crop_augmentation(norm, height, width, hflip))
    return ClassificationData(name=name, classes=list(arrays.classes), splits=splits,
                              input_shape=tuple(int(d) for d in x.shape[1:]), normalization=norm,
                              metadata=dict(metadata or {}))


def image_splits(labels: np.ndarray, classes: Sequence[str], given: Mapping[str, np.ndarray] | None,
                 *, seed: int, val_fraction: float,
                 fractions: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Positions per split: the split folders' (val carved from train when absent), else 6:2:2."""
    if given is None:
        return stratified_split(labels, check_split_fractions_named(fractions), seed, classes)
    if "val" in given:
        return dict(given)
    pool = np.asarray(given["train"])
    carved = carve_validation(labels[pool], val_fraction, seed, classes)
    return {k: pool[v] for k, v in carved.items()} | {"test": np.asarray(given["test"])}


def source_kind(source: Path) -> str:
    """``"npz"`` or ``"folder"``: which of the two forms of the module doc ``source`` is."""
    if source.is_dir():
        return "folder"
    if not source.exists():
        raise DatasetMissingError(f"data.source {source} does not exist; fix data.source in "
                                  f"params.yaml")
    if source.suffix.lower() == ".npz":
        return "npz"
    hint = ("; for a table of features use `dataset: table`"
            if source.suffix.lower() in TABLE_READERS else "")
    raise DatasetError(f"data.source {source} for dataset 'images' must be an .npz file (x, y) "
                       f"or a folder of <class>/<image> folders; got a "
                       f"{source.suffix or 'suffix-less'} file{hint}")


def load_images(source: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.2,
                fractions: Mapping[str, float] | None = None, augment: bool = False,
                hflip: bool = False,
                indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """A user's images (an ``.npz`` or a folder, see module doc) without fetch or manifest.

    ``indices`` (split -> positions in the canonical order: the rows of the arrays, or the sorted
    image list) replaces the seeded split.
    """
    source = Path(source)
    meta = {"source": os.fspath(source), "seed": seed}
    if source_kind(source) == "npz":
        arrays = read_image_arrays(source)
        parts = (indices if indices is not None
                 else image_splits(arrays.y, arrays.classes, None, seed=seed,
                                   val_fraction=val_fraction, fractions=fractions))
        return arrays_data(arrays, {k: np.asarray(v) for k, v in parts.items()}, augment=augment,
                           hflip=hflip, metadata=meta)
    tree = scan_image_tree(source)
    geometry = image_geometry(source, tree.paths)
    parts = (indices if indices is not None
             else image_splits(tree.labels, tree.classes, tree.given, seed=seed,
                               val_fraction=val_fraction, fractions=fractions))
    return tree_data(source, tree, geometry, {k: np.asarray(v) for k, v in parts.items()},
                     augment=augment, hflip=hflip, metadata=meta)


# ---------------------------------------------------------------------------- the adapter


class ImagesAdapter(DatasetAdapter):
    """``images.npz`` (checked arrays), or the user's image tree and ``images.json`` (its shape)."""

    name = "images"
    needs_source = True
    loader = staticmethod(load_images)

    def instructions(self, raw_dir: Path) -> str:
        return (f"dataset 'images' needs your images: set `data.source` in params.yaml to an .npz "
                f"with x (N, H, W) or (N, H, W, C) and y (N,) (and optionally classes), or to a "
                f"folder of <class>/<image> folders (optionally inside train/, val/, test/); fetch "
                f"copies them to {raw_dir}/.")

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        assert request.source is not None  # missing_message explained how to give one
        source = request.source
        if source_kind(source) == "npz":
            arrays = read_image_arrays(source)
            write_npz(work / ARRAYS_FILE, {"x": arrays.x, "y": arrays.y,
                                           "classes": np.array(arrays.classes, dtype=str)})
            return {"format": "npz"}
        tree = scan_image_tree(source)
        height, width, channels = image_geometry(source, tree.paths)
        for rel in tree.paths:
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source / rel, target)
        layout = {"height": height, "width": width, "channels": channels}
        (work / LAYOUT_FILE).write_text(json.dumps(layout, sort_keys=True) + "\n")
        return {"format": "folder", **layout}

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        if (raw_dir / ARRAYS_FILE).is_file():
            with np.load(raw_dir / ARRAYS_FILE, allow_pickle=False) as npz:  # labels only
                return Inventory([str(c) for c in npz["classes"]], npz["y"].astype(np.int64))
        _layout(raw_dir)  # a fetched tree, not a stray folder
        tree = scan_image_tree(raw_dir)
        return Inventory(tree.classes, tree.labels, paths=tree.paths, given=tree.given)

    def split(self, inventory: Inventory, *, seed: int, val_fraction: float,
              fractions: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        return image_splits(inventory.labels, inventory.classes, inventory.given, seed=seed,
                            val_fraction=val_fraction, fractions=fractions)

    def positions(self, raw_dir: Path, frame: Any) -> np.ndarray:
        """Rows of the arrays by ``sample_id``; images of a tree by their ``path``."""
        if (raw_dir / ARRAYS_FILE).is_file():
            return frame["sample_id"].to_numpy()
        paths = self.inventory(raw_dir, "label").paths
        assert paths is not None
        return path_positions(paths, frame, raw_dir)

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, hflip: bool = False, **options: Any) -> ClassificationData:
        no_options(self.name, options)
        if (raw_dir / ARRAYS_FILE).is_file():
            return arrays_data(read_image_arrays(raw_dir / ARRAYS_FILE), parts, augment=augment,
                               hflip=hflip)
        geometry = _layout(raw_dir)
        return tree_data(raw_dir, scan_image_tree(raw_dir), geometry, parts, augment=augment,
                         hflip=hflip)


def _layout(raw_dir: Path) -> tuple[int, int, int]:
    """The (height, width, channels) that fetch recorded for a tree in ``raw_dir``."""
    path = raw_dir / LAYOUT_FILE
    if not path.is_file():
        raise DatasetMissingError(f"{raw_dir} holds neither {ARRAYS_FILE} nor {LAYOUT_FILE}; run "
                                  f"the fetch stage first (dvc repro fetch)")
    try:
        layout = json.loads(path.read_text())
        return int(layout["height"]), int(layout["width"]), int(layout["channels"])
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path} is not what fetch writes ({err}); re-run the fetch stage "
                           f"(dvc repro fetch)") from err
