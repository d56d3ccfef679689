"""The Pharmacy Medication Image (PMI) dataset: pill photos in one folder per NDC (Section 5.3).

Layout read by :func:`load_pmi` (an ImageFolder tree)::

    <root>/50111-0434/<any name>.jpg
    <root>/57664-0377/...

Classes are the folder names in sorted order; hidden folders (".name") are ignored. A folder name
that does not look like an NDC (4-5 digits, dash, 3-4 digits, optional dash and package code) is
accepted with a warning, so a user's own pill photos load too; a class folder without any image
is an error. Images are split 6:2:2 per class (Section 5.3.2) by :func:`stratified_split`.

Transforms (Section 5.3.3), with ``crop_size``/``image_size`` defaulting to the paper's 960/224:

* train: center crop to ``crop_size`` square (1024x960 -> 960x960), random resized crop with area
  scale in (0.8, 1) (torchvision's default aspect range 3/4..4/3) resized to ``image_size``,
  rotation by a random multiple of 90 degrees, standardisation.
* eval: center crop, resize to ``image_size``, standardisation.

Standardisation uses the per-channel mean and std of the training images after center crop and
resize, pooled over every pixel of every training image (all images weigh the same, as they have
the same size) and computed in float64 as ``sqrt(E[x^2] - E[x]^2)`` on [0, 1] pixel values. Pass
``mean``/``std`` to skip that pass over the training images. A constant channel gets std 1. An
image smaller than ``crop_size`` is zero-padded by the center crop.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapter import DatasetAdapter, FetchRequest, Inventory, no_options
from .common import (
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
    channel_stats,
    image_folder_root,
    link_or_copy,
    path_positions,
    scan_image_folder,
)

PMI_DATASET_URL = "https://deepblue.lib.umich.edu/data/concern/data_sets/6d56zw997"
NDC_PATTERN = re.compile(r"^\d{4,5}-\d{3,4}(-\d{1,2})?$")


class RandomRightAngleRotation:
    """Rotate a (..., H, W) tensor by 0, 90, 180 or 270 degrees, uniformly (Section 5.3.3).

    ``torch.rot90`` moves pixels exactly, with no interpolation or corner fill.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, int(torch.randint(4, (1,))), dims=(-2, -1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def pmi_transforms(mean: Sequence[float], std: Sequence[float], *, crop_size: int = 960,
                   image_size: int = 224, scale: tuple[float, float] = (0.8, 1.0)) -> tuple[Any, Any]:
    """``(train_transform, eval_transform)`` from PIL images to standardised (3, S, S) tensors."""
    import torchvision.transforms as T

    standardise = T.Normalize(tuple(mean), tuple(std))
    train = T.Compose([T.CenterCrop(crop_size), T.RandomResizedCrop(image_size, scale=scale),
                       T.ToTensor(), RandomRightAngleRotation(), standardise])
    return train, T.Compose([*_unnormalised_eval(crop_size, image_size).transforms, standardise])


def _unnormalised_eval(crop_size: int, image_size: int) -> Any:
    import torchvision.transforms as T

    return T.Compose([T.CenterCrop(crop_size), T.Resize(image_size), T.ToTensor()])


class ImageFiles(torch.utils.data.Dataset):
    """``(PIL RGB image, class index)`` per file; ``targets`` lists labels without decoding."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, target = self.samples[index]
        with Image.open(path) as image:
            return image.convert("RGB"), target


def scan_pmi(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class folder names under ``root`` and ``(path, class index)`` of every image.

    Images are found at any depth below their class folder, sorted by path within a class
    (:func:`~pipeline.datasets.image_folders.scan_image_folder`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(
            f"PMI image folder {root} does not exist. Download the dataset from {PMI_DATASET_URL} "
            f"and run fetch_pmi({str(root)!r}, archive=<the downloaded file>), or extract it so "
            f"that {root}/<NDC>/<image>.jpg")
    classes, samples = scan_image_folder(root, example="<NDC>/<image>.jpg")
    odd = [c for c in classes if not NDC_PATTERN.match(c)]
    if odd:
        warnings.warn(f"class folder(s) {odd} under {root} do not look like NDCs "
                      f"(e.g. 50111-0434); loading them anyway", UserWarning, stacklevel=2)
    return classes, samples


def load_pmi(root: str | os.PathLike[str], *, seed: int = 0,
             fractions: Mapping[str, float] | None = None, crop_size: int = 960,
             image_size: int = 224, scale: tuple[float, float] = (0.8, 1.0),
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             stats_workers: int = 0, augment: bool = True,
             indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """PMI as train/val/test splits of (3, image_size, image_size) tensors (see module doc).

    ``augment=False`` gives the train split the eval transform. ``indices`` (split -> positions in
    the sorted image list of :func:`scan_pmi`, e.g. from a manifest) replaces the seeded split.
    """
    for key, value in {"crop_size": crop_size, "image_size": image_size}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DatasetError(f"{key} must be a positive int; got {value!r}")
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise DatasetError(f"scale must be (low, high) with 0 < low <= high <= 1; got {scale!r}")
    if (mean is None) != (std is None):
        raise DatasetError("pass both mean and std, or neither (then they are computed)")
    fractions = check_split_fractions_named(fractions)
    classes, samples = scan_pmi(root)
    base = ImageFiles(samples)
    if indices is not None:
        parts = check_indices(indices, len(base), f"the PMI images under {root}")
    else:
        parts = stratified_split(np.asarray(base.targets), fractions, seed, classes)
    if mean is None:
        mean, std = channel_stats(
            TransformedSubset(base, parts["train"], _unnormalised_eval(crop_size, image_size)),
            num_workers=stats_workers)
    norm = Normalization(mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    if len(norm.mean) != 3:
        raise DatasetError(f"PMI images are RGB; mean/std need 3 values, got {len(norm.mean)}")
    train_tf, eval_tf = pmi_transforms(norm.mean, norm.std, crop_size=crop_size,
                                       image_size=image_size, scale=scale)
    splits = {k: TransformedSubset(base, idx, train_tf if k == "train" and augment else eval_tf)
              for k, idx in parts.items()}
    return ClassificationData(
        name="pmi", classes=classes, splits=splits, input_shape=(3, image_size, image_size),
        normalization=norm,
        metadata={"root": os.fspath(root), "seed": seed, "crop_size": crop_size,
                  "files": {k: [base.samples[i][0] for i in idx] for k, idx in parts.items()}})


def fetch_pmi(dest: str | os.PathLike[str],
              archive: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None) -> Path:
    """Extract downloaded PMI archive(s) (zip or tar, any compression) into the tree at ``dest``.

    The dataset is never downloaded here: Deep Blue serves it through a web page. The class
    folders may sit at any depth inside the archive; the shallowest folder whose sub-folders hold
    images becomes ``dest``. Extraction goes to a temporary folder next to ``dest`` that is moved
    into place at the end, so an interrupted run leaves no half-filled ``dest``.
    """
    dest = Path(dest)
    if archive is None:
        raise DatasetMissingError(
            f"the PMI dataset is not downloaded automatically. Download it in a browser from "
            f"{PMI_DATASET_URL}, then run fetch_pmi({str(dest)!r}, archive=<downloaded .zip or "
            f".tar.gz>), or extract it yourself so that {dest}/<NDC>/<image>.jpg")
    archives = [Path(archive)] if isinstance(archive, (str, os.PathLike)) else [Path(a) for a in archive]
    absent = [str(a) for a in archives if not a.is_file()]
    if absent or not archives:
        raise DatasetMissingError(f"PMI archive(s) not found: {absent or 'none given'}; download "
                                  f"them from {PMI_DATASET_URL}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError(f"{dest} already exists and is not an empty folder; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".pmi-extract-", dir=dest.parent))
    scratch.chmod(0o755)  # mkdtemp's 0700 would stick to dest when the classes sit at the top
    try:
        for path in archives:
            _extract(path, scratch)
        tree = image_folder_root(scratch, what="the archive", example="50111-0434/<image>.jpg")
        if dest.exists():
            dest.rmdir()
        os.replace(tree, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    scan_pmi(dest)  # fail (or warn) now rather than at the first training run
    return dest


def _extract(path: Path, into: Path) -> None:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(into)  # ZipFile drops absolute paths and ".." parts
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                tar.extractall(into, filter="data")  # refuses paths and links leaving `into`
        else:
            raise DatasetError(f"{path} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as err:
        raise DatasetError(f"cannot extract {path}: {err}") from err


class PmiAdapter(DatasetAdapter):
    """``<NDC>/<image>``: an ImageFolder tree of one folder per class; manifest rows name files."""

    name = "pmi"
    needs_source = True
    loader = staticmethod(load_pmi)

    def instructions(self, raw_dir: Path) -> str:
        return (f"the PMI dataset is not downloaded automatically. Download it in a browser from "
                f"{PMI_DATASET_URL}, then set `data.source` in params.yaml to the downloaded archive "
                f"(.zip or .tar.gz) or to a folder of <NDC>/<image>.jpg class folders; fetch extracts "
                f"or copies it to {raw_dir}/.")

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        assert request.source is not None  # missing_message explained how to get it
        if request.source.is_file():
            fetch_pmi(work, archive=request.source)  # extracts into place of the empty `work`
            return {}
        try:
            root = image_folder_root(request.source, example="50111-0434/<image>.jpg")
        except DatasetError:
            raise DatasetError(f"data.source {request.source} holds no <class>/<image> folders; "
                               f"expected e.g. {request.source}/50111-0434/<image>.jpg") from None
        _, samples = scan_pmi(root)
        for path, _ in samples:
            target = work / Path(path).relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(Path(path), target)
        return {}

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        classes, samples = scan_pmi(raw_dir)
        return Inventory(classes, np.array([t for _, t in samples], dtype=np.int64),
                         paths=[Path(p).relative_to(raw_dir).as_posix() for p, _ in samples])

    def positions(self, raw_dir: Path, frame: Any) -> np.ndarray:
        """Each manifest row's position in the sorted image list of ``raw_dir``, by its path."""
        paths = self.inventory(raw_dir, "label").paths
        assert paths is not None
        return path_positions(paths, frame, raw_dir)

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, image_size: int = 224, crop_size: int = 960,
             **options: Any) -> ClassificationData:
        no_options(self.name, options)
        return load_pmi(raw_dir, indices=parts, augment=augment, image_size=image_size,
                        crop_size=crop_size)
