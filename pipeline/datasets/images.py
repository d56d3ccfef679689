"""A user's own images as a classification dataset: an ``.npz`` of arrays or an ImageFolder tree.

``data.source`` is either

* an ``.npz`` holding ``x``, the images, (N, H, W) or (N, H, W, C) with C 1 or 3, as pixels
  0..255 (uint8, or any integer type within that range) or floats in [0, 1]; ``y``, one integer
  label >= 0 per image; and optionally ``classes``, one name per class (a string array): labels
  must then be 0..K-1, label k naming ``classes[k]``. Without ``classes`` the class names are the
  distinct labels, sorted numerically, as strings, and each label becomes its position in that
  order. Fetch writes ``images.npz`` (``x`` channels last as uint8 or float32, ``y`` as 0..K-1,
  ``classes``) with :func:`~pipeline.datasets.adapter.write_npz`, so the bytes are reproducible.
* a folder of class folders, ``<source>/<class>/<image>`` (images at any depth below their class
  folder, suffixes of :data:`IMAGE_EXTENSIONS`; hidden folders are not classes), or of split
  folders ``<source>/{train,test}/<class>/<image>`` with an optional ``val/``, every split folder
  holding the same class folders. Fetch hard-links the images (copies them where links cannot be
  made) with their relative paths and writes ``images.json``: the one shape all images take.

Splits: split folders stand as given, a missing ``val/`` being a seeded stratified
``val_fraction`` of ``train/`` (as MNIST and CIFAR-10 carve theirs); otherwise every class is split
6:2:2 with a seed (Section 5.3.2). So every class needs 3 images, or 2 in ``train/`` when ``val/``
is carved from it.

Size and channels of a folder tree are decided once, by fetch, from the image headers, and recorded
in ``images.json`` so that every stage agrees: the most common (height, width) (a tie: the larger
area, then the taller), shrunk keeping its aspect ratio until the long side is at most
:data:`MAX_SIDE` (224, what the ImageNet models take); each image is resized (bilinear) to exactly
that shape, distorting the aspect of any image of another shape. Images become grayscale (1
channel) when most of them are, else RGB (3; alpha is dropped). Arrays keep their own shape.

Inputs are pixels in [0, 1] standardised per channel with the mean and population std of the
training split (a constant channel gets std 1); ``normalization.raw_range`` is (0, 1), so attacks
clamp to valid pixels. Arrays are converted at once into in-memory tensors (:class:`ArrayDataset`,
no per-sample work); a tree's images are decoded per item, in DataLoader workers, and the training
statistics take one pass over the training images at load.

Augmentation (``augment=True``, training split only): a random crop of the image padded with
black by ``min(H, W) // 8`` pixels (at least 1) on every side, as CIFAR-10's recipe does.
Horizontal flips change what characters and digits mean, so they are off unless ``hflip=True``.

Everything about a source is checked by fetch before anything is written; each problem is one
:class:`DatasetError` line naming the file, key or value and what would be valid.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .adapter import DatasetAdapter, FetchRequest, Inventory, no_options, write_npz
from .common import (
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
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
from .tables import TABLE_READERS
from .vision import carve_validation

# The suffixes torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif",
                                     ".tiff", ".webp")
MAX_SIDE = 224
ARRAYS_FILE = "images.npz"
LAYOUT_FILE = "images.json"
NPZ_KEYS: tuple[str, ...] = ("x", "y", "classes")
# stratified_split puts every class in every part, so a class needs one image per part.
MIN_PER_CLASS = len(DEFAULT_FRACTIONS)
# PIL modes without colour; every other mode (RGB, RGBA, P, CMYK, ...) counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_STATS_CHUNK = 4096  # images per float64 block when summing pixels: bounded extra memory


# ---------------------------------------------------------------------------- ImageFolder trees
# Shared with pmi.py: the folder scan, the archive root finder, hard-link-or-copy, and the
# per-channel statistics over a dataset of tensors.


def scan_image_folder(
    root: str | os.PathLike[str], *, example: str = "<class>/<image>.png"
) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class folder names under ``root`` and ``(path, class index)`` of every image.

    Hidden folders (".name") are not classes; images are found at any depth below their class
    folder, sorted by path within a class. ``example`` shows the expected layout in errors.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(f"image folder {root} does not exist; expected {root}/{example}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class folders; expected {root}/{example}")
    files = {c: sorted(str(p) for p in (root / c).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) for c in classes}
    empty = [c for c in classes if not files[c]]
    if empty:
        raise DatasetError(f"class folder(s) {empty} under {root} contain no image "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    return classes, [(path, i) for i, c in enumerate(classes) for path in files[c]]


def image_folder_root(top: Path, *, what: str | None = None,
                      example: str = "<class>/<image>.png") -> Path:
    """The shallowest folder under ``top`` (itself included) with a sub-folder holding images.

    ``what`` names ``top`` in the error (default: its path); ``example`` shows the layout sought.
    """
    level = [top]
    while level:
        for folder in level:
            subdirs = sorted(p for p in folder.iterdir()
                             if p.is_dir() and not p.name.startswith("."))
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for d in subdirs for p in d.iterdir()):
                return folder
        level = sorted(p for f in level for p in f.iterdir() if p.is_dir())
    raise DatasetError(f"{what or top} holds no <class>/<image> folders; expected e.g. {example} "
                       f"somewhere inside it")


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` (no copy of a large image set) or copy it where links cannot be made."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def path_positions(paths: Sequence[str], frame: Any, raw_dir: Path) -> np.ndarray:
    """Each manifest row's position in ``paths`` (the canonical image list), by its ``path``."""
    position = {p: i for i, p in enumerate(paths)}
    wanted = frame["path"].tolist()
    absent = [p for p in wanted if p not in position]
    if absent:
        raise DatasetError(f"{len(absent)} manifest image(s) are not in {raw_dir}, e.g. "
                           f"{absent[:3]}; re-run the split stage (dvc repro split)")
    return np.array([position[p] for p in wanted], dtype=np.int64)


def pixel_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std over every pixel of (N, C, H, W) batches.

    Summed in float64 as ``sqrt(E[x^2] - E[x]^2)``; a constant channel gets std 1, so
    standardising it gives 0 rather than NaN.
    """
    total = squares = None
    count = 0
    for x in batches:
        x = x.to(torch.float64)
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if total is None or count == 0:
        raise DatasetError("cannot compute channel statistics of an empty dataset")
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def channel_stats(dataset: Dataset, *, batch_size: int = 32,
                  num_workers: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`pixel_stats` of a dataset of ``((C, H, W) tensor, label)`` items."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    return pixel_stats(x for x, _ in loader)


@dataclass(frozen=True)
class ImageTree:
    """A folder of images without their pixels: class names, and per image (in canonical order:
    split folder train, val, test; class; path) its path relative to the root and its label.
    ``given`` holds the positions per split folder, None for a tree without split folders."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    given: dict[str, np.ndarray] | None


def scan_image_tree(root: str | os.PathLike[str]) -> ImageTree:
    """The images under ``root`` (layouts: module doc), after every check that needs no pixels:
    class folders present and non-empty, split folders consistent, enough images per class."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(f"image folder {root} does not exist")
    top = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    splits = [s for s in SPLIT_NAMES if s in top]
    if not splits:
        classes, samples = scan_image_folder(root)
        tree = ImageTree(classes, [Path(p).relative_to(root).as_posix() for p, _ in samples],
                         np.array([t for _, t in samples], dtype=np.int64), None)
        _check_classes(tree.classes, tree.labels, MIN_PER_CLASS, f"{root}", "the 6:2:2 split")
        return tree
    others = [name for name in top if name not in SPLIT_NAMES]
    if others:
        raise DatasetError(f"{root} mixes split folders {splits} with other folders {others}; put "
                           f"every class folder inside {', '.join(f'{s}/' for s in SPLIT_NAMES)} "
                           f"or use no split folders")
    if "train" not in splits or "test" not in splits:
        raise DatasetError(f"{root} has split folder(s) {splits}; split folders need train/ and "
                           f"test/ (val/ is optional: it is carved from train/)")
    scanned = {s: scan_image_folder(root / s) for s in splits}
    classes = scanned["train"][0]
    for s in splits[1:]:
        lacks = sorted(set(classes) - set(scanned[s][0]))
        extra = sorted(set(scanned[s][0]) - set(classes))
        if lacks or extra:
            raise DatasetError(f"split folders of {root} hold different classes: {s}/ lacks "
                               f"{lacks} and has {extra} beyond train/'s {classes}; every split "
                               f"folder needs the same class folders")
    paths = [Path(p).relative_to(root).as_posix() for s in splits for p, _ in scanned[s][1]]
    labels = np.array([t for s in splits for _, t in scanned[s][1]], dtype=np.int64)
    sizes = np.array([len(scanned[s][1]) for s in splits])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    given = {s: np.arange(starts[i], starts[i + 1]) for i, s in enumerate(splits)}
    if "val" not in given:
        _check_classes(classes, labels[given["train"]], 2, f"{root}/train",
                       "train/ and the val split carved from it")
    return ImageTree(classes, paths, labels, given)


def image_geometry(root: Path, paths: Sequence[str]) -> tuple[int, int, int]:
    """``(height, width, channels)`` every image of the tree is brought to (module doc).

    Reads each image's header and checks the file's integrity without decoding its pixels; an
    unreadable image fails here, by name.
    """
    from PIL import Image

    sizes = np.empty((len(paths), 2), dtype=np.int64)
    gray = np.empty(len(paths), dtype=bool)
    for i, rel in enumerate(paths):  # one file each: a loop over files is the work itself
        try:
            with Image.open(root / rel) as image:
                width, height = image.size
                gray[i] = image.mode in GRAY_MODES
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise _unreadable(root / rel, err) from err
        sizes[i] = (height, width)
    return choose_geometry(sizes, gray)


def choose_geometry(sizes: np.ndarray, gray: np.ndarray) -> tuple[int, int, int]:
    """The most common (height, width) of ``sizes`` (a tie: larger area, then taller), its long
    side capped at :data:`MAX_SIDE`; 1 channel if most images are ``gray``, else 3."""
    shapes, counts = np.unique(np.asarray(sizes, dtype=np.int64).reshape(-1, 2), axis=0,
                               return_counts=True)
    if shapes.shape[0] == 0:
        raise DatasetError("no images to choose a size from")
    best = shapes[np.lexsort((shapes[:, 0], shapes[:, 0] * shapes[:, 1], counts))[-1]]
    height, width = int(best[0]), int(best[1])
    if max(height, width) > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    channels = 1 if 2 * int(np.count_nonzero(gray)) > len(gray) else 3
    return height, width, channels


def decode_image(path: str | os.PathLike[str], height: int, width: int,
                 channels: int) -> torch.Tensor:
    """The image at ``path`` as a (channels, height, width) float32 tensor of pixels in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.array(image, dtype=np.uint8).reshape(height, width, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(Path(path), err) from err
    return torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _unreadable(path: Path, err: BaseException) -> DatasetError:
    return DatasetError(f"cannot read image {path} ({err}); every file with an image suffix "
                        f"({', '.join(IMAGE_EXTENSIONS)}) in a class folder must be a readable "
                        f"image: remove or replace it")


class FolderImages(Dataset):
    """``(pixels (C, H, W) in [0, 1], label)`` per image file, every image brought to one shape;
    ``targets`` lists the labels without decoding."""

    def __init__(self, files: Sequence[str], labels: np.ndarray, height: int, width: int,
                 channels: int) -> None:
        self.files = list(files)
        self.targets = np.asarray(labels, dtype=np.int64)
        self.height, self.width, self.channels = height, width, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = decode_image(self.files[index], self.height, self.width, self.channels)
        return x, int(self.targets[index])


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


def _check_classes(classes: Sequence[str], labels: np.ndarray, need: int, where: str,
                   purpose: str) -> None:
    """At least 2 classes, and ``need`` samples of each in ``labels``."""
    if len(classes) < 2:
        raise DatasetError(f"{where} has {len(classes)} class {list(classes)}; a classifier needs "
                           f"at least 2 (one label, or one class folder, per class)")
    counts = np.bincount(labels, minlength=len(classes))
    small = np.flatnonzero(counts < need)
    if small.size:
        listed = ", ".join(f"{classes[i]!r} has {int(counts[i])}" for i in small[:10])
        raise DatasetError(f"too few images per class in {where}: {listed}; each class needs at "
                           f"least {need} for {purpose}")


# ---------------------------------------------------------------------------- loading


class RandomCropPad:
    """Random crop of a (C, H, W) tensor padded by ``pad`` pixels of ``fill`` (C values) on every
    side; a horizontal flip with probability 1/2 if ``hflip``."""

    def __init__(self, pad: int, fill: Sequence[float], hflip: bool = False) -> None:
        self.pad = pad
        self.fill = torch.tensor(tuple(fill), dtype=torch.float32).reshape(-1, 1, 1)
        self.hflip = hflip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape
        p = self.pad
        canvas = self.fill.expand(c, h + 2 * p, w + 2 * p).clone()
        canvas[:, p:p + h, p:p + w] = x
        top, left = torch.randint(2 * p + 1, (2,)).tolist()
        out = canvas[:, top:top + h, left:left + w]
        if self.hflip and bool(torch.rand(()) < 0.5):
            out = out.flip(-1)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pad={self.pad}, hflip={self.hflip})"


class Standardise:
    """``(x - mean) / std`` per channel of a (C, H, W) tensor."""

    def __init__(self, norm: Normalization) -> None:
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()})"


class Chain:
    """Apply ``steps`` in order (a picklable compose, for DataLoader workers)."""

    def __init__(self, *steps: Any) -> None:
        self.steps = steps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.steps))})"


def crop_augmentation(norm: Normalization, height: int, width: int,
                      hflip: bool = False) -> RandomCropPad:
    """The training augmentation of the module doc, padding with black in standardised units."""
    assert norm.clamp_min is not None  # images always have raw_range (0, 1)
    return RandomCropPad(max(1, min(height, width) // 8), norm.clamp_min, hflip)


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


def tree_data(root: Path, tree: ImageTree, geometry: tuple[int, int, int],
              parts: Mapping[str, np.ndarray], *, augment: bool, hflip: bool = False,
              stats_workers: int = 0, name: str = "images",
              metadata: Mapping[str, Any] | None = None) -> ClassificationData:
    """A folder of images as splits ``parts`` (split -> positions in ``tree.paths``), each image
    brought to ``geometry`` (height, width, channels) and standardised per item."""
    height, width, channels = geometry
    base = FolderImages([os.fspath(root / p) for p in tree.paths], tree.labels, height, width,
                        channels)
    parts = check_indices(parts, len(base), f"the images under {root}")
    norm = Normalization(*channel_stats(TransformedSubset(base, parts["train"], None),
                                        num_workers=stats_workers))
    standardise = Standardise(norm)
    train_tf = (Chain(standardise, crop_augmentation(norm, height, width, hflip)) if augment
                else standardise)
    splits: dict[str, Dataset] = {
        k: TransformedSubset(base, idx, train_tf if k == "train" else standardise)
        for k, idx in parts.items()}
    return ClassificationData(name=name, classes=list(tree.classes), splits=splits,
                              input_shape=(channels, height, width), normalization=norm,
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
