"""ImageFolder trees: class folders of image files, scanned, measured and decoded per item.

Two datasets come as such trees: the folder form of ``images`` (:mod:`pipeline.datasets.images`,
which also takes ``.npz`` arrays) and the PMI pills (:mod:`pipeline.datasets.pmi`). Their tree code
lives here, apart from the arrays and from each dataset's fetch and adapter, so that both share one
folder scan, one hard-link-or-copy and one pass of channel statistics.

Layouts: a folder of class folders, ``<root>/<class>/<image>`` (images at any depth below their
class folder, suffixes of :data:`IMAGE_EXTENSIONS`; hidden folders are not classes), or of split
folders ``<root>/{train,test}/<class>/<image>`` with an optional ``val/``, every split folder
holding the same class folders.

Geometry: one (height, width) and channel count for every image of a tree, from the image headers:
the most common (height, width) (a tie: the larger area, then the taller), shrunk keeping its
aspect ratio until the long side is at most :data:`MAX_SIDE` (224, what the ImageNet models take);
each image is resized (bilinear) to exactly that shape, distorting the aspect of any image of
another shape. Images become grayscale (1 channel) when most of them are, else RGB (3; alpha is
dropped).

A tree is never held in memory: each image is decoded, standardised and augmented per item, in
DataLoader workers, so the per-item transforms live here too; the ``.npz`` arrays of ``images``
reuse the augmentation.

Augmentation (``augment=True``, training split only): a random crop of the image padded with
black by an eighth of the shorter side, rounded (at least 1), on every side: 4 pixels for 32x32
(CIFAR-10's recipe) and for 28x28 (the authors' MNIST code).
Horizontal flips change what characters and digits mean, so they are off unless ``hflip=True``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import (
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    Normalization,
    TransformedSubset,
    check_indices,
)

# The suffixes torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif",
                                     ".tiff", ".webp")
MAX_SIDE = 224
# stratified_split puts every class in every part, so a class needs one image per part.
MIN_PER_CLASS = len(DEFAULT_FRACTIONS)
# PIL modes without colour; every other mode (RGB, RGBA, P, CMYK, ...) counts as colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# ---------------------------------------------------------------------------- shared with pmi.py
# The folder scan, the archive root finder, hard-link-or-copy, the manifest lookup by path, and the
# per-channel statistics over a dataset of tensors (images.py's arrays use pixel_stats too).


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


# ---------------------------------------------------------------------------- trees of 'images'


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


# images.py checks its .npz arrays with this too; it lives here so that only images.py imports the
# other module, never the reverse.
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


# ---------------------------------------------------------------------------- per item
# Picklable classes, for DataLoader workers. images.py's arrays reuse crop_augmentation: it lives
# here, beside tree_data, for the same one-way import.


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
    return RandomCropPad(max(1, round(min(height, width) / 8)), norm.clamp_min, hflip)


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
