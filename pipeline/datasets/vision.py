"""What MNIST and CIFAR-10 share (Section 5.1): torchvision's files, official splits, downloads.

Both keep the official test set and carve a seeded stratified validation split out of the
official training set; inputs are standardised with the usual whole-dataset channel statistics.
Nothing is downloaded unless asked, and an offline download fails within seconds
(:func:`try_download`). :class:`OfficialAdapter` is their common dataset adapter: a fetched copy
that still matches the official checksums is kept, and the manifest's test split must be the
official test set.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from torch.utils.data import Dataset

from .adapter import DatasetAdapter, FetchRequest, Inventory, no_options
from .common import (
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    Normalization,
    TransformedSubset,
    check_indices,
    dataset_labels,
    stratified_split,
)


class PILImages(Dataset):
    """``(PIL image, label)`` from a uint8 array (N, H, W) or (N, H, W, C), as torchvision serves.

    The torchvision objects are dropped after reading, so DataLoader workers pickle only arrays
    (and the CIFAR subclass below never needs to be importable by name).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return Image.fromarray(self.images[index]), int(self.targets[index])


def check_options(name: str, channels: int, val_fraction: float, mean: Sequence[float],
                   std: Sequence[float]) -> Normalization:
    """Validate the options before any file is read; the standardisation they define."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DatasetError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    norm = Normalization(mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    if len(norm.mean) != channels:
        raise DatasetError(f"{name} has {channels} channel(s); got mean/std of length "
                           f"{len(norm.mean)}")
    return norm


def assemble(name: str, classes: list[str], bases: tuple[Any, Any], input_shape: tuple[int, ...],
              norm: Normalization, *, augment: list[Any] | None, val_fraction: float, seed: int,
              root: str | os.PathLike[str],
              indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """Train/val carve-out of the official train set plus the official test set, as splits."""
    import torchvision.transforms as T

    to_input = [T.ToTensor(), T.Normalize(norm.mean, norm.std)]
    eval_tf = T.Compose(to_input)
    train_tf = T.Compose((augment or []) + to_input)
    train_base, test_base = bases
    train_labels = dataset_labels(train_base)
    if indices is not None:
        parts = check_indices(indices, train_labels.shape[0], f"the official {name} training set",
                              allowed=("train", "val"))
    else:
        parts = carve_validation(train_labels, val_fraction, seed, classes)
    splits = {"train": TransformedSubset(train_base, parts["train"], train_tf)}
    if "val" in parts:
        splits["val"] = TransformedSubset(train_base, parts["val"], eval_tf)
    splits["test"] = TransformedSubset(test_base, np.arange(len(test_base)), eval_tf)
    return ClassificationData(name=name, classes=classes, splits=splits, input_shape=input_shape,
                              normalization=norm,
                              metadata={"root": os.fspath(root), "seed": seed,
                                        "val_fraction": val_fraction})


def carve_validation(train_labels: np.ndarray, val_fraction: float, seed: int,
                     classes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Rows of an official training set kept for training and, if ``val_fraction > 0``, a seeded
    stratified ``val_fraction`` of them held out for validation."""
    if val_fraction > 0:
        return stratified_split(train_labels, {"train": 1 - val_fraction, "val": val_fraction},
                                seed, classes)
    return {"train": np.arange(np.asarray(train_labels).shape[0])}


def missing_files(folder: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def try_download(fetch: Callable[[], object], url: str, timeout: float) -> str | None:
    """Run ``fetch`` (a torchvision download) so that no network fails within seconds.

    Returns None on success, else why it failed. torchvision's ``urlopen`` calls pass no timeout,
    so the process-wide socket default is set for the duration and restored after.
    """
    host = urlparse(url).hostname or url
    problem = _probe(host, 443, timeout)
    if problem is not None:
        return f"cannot reach {host}: {problem}"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        fetch()
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        return f"download from {url} failed: {err}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` cannot be reached within ``timeout`` s, or None if it can.

    Runs in a daemon thread because name resolution ignores socket timeouts and can stall.
    """
    outcome: dict[str, BaseException] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            outcome["error"] = err

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return f"no answer within {timeout:g} s"
    return str(outcome["error"]) if "error" in outcome else None


def download_note(download: bool, problem: str | None) -> str:
    if not download:
        return " (download=False, so nothing was fetched.)"
    return f" (download=True was tried: {problem or 'it finished but the files are still missing'}.)"


class OfficialAdapter(DatasetAdapter):
    """A dataset with an official train/test split and official checksums (MNIST, CIFAR-10)."""

    keeps_verified_fetch = True

    def official(self, raw_dir: Path, *, augment: bool,
                 indices: Mapping[str, np.ndarray] | None) -> ClassificationData:
        """The fetched files as train (or ``indices``' rows of it) and the official test set."""
        raise NotImplementedError

    def instructions(self, raw_dir: Path) -> str:
        raise NotImplementedError

    def missing_message(self, request: FetchRequest) -> str | None:
        if request.source is None and not request.download:
            return self.instructions(request.raw_dir)
        return None

    def explain_download(self, request: FetchRequest, problem: str | None) -> None:
        if problem is not None:
            raise DatasetMissingError(f"{self.instructions(request.raw_dir)} (data.download is true, "
                                      f"but {problem}.)")

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        # Fetch verified the official checksums, and DVC hashes its output: no second md5 pass.
        data = self.official(raw_dir, augment=False, indices=None)
        train, test = data.labels("train"), data.labels("test")
        return Inventory(data.classes, np.concatenate([train, test]),
                         given={"train": np.arange(train.shape[0]),
                                "test": train.shape[0] + np.arange(test.shape[0])})

    def split(self, inventory: Inventory, *, seed: int, val_fraction: float,
              fractions: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        assert inventory.given is not None
        pool = inventory.given["train"]
        carved = carve_validation(inventory.labels[pool], val_fraction, seed, inventory.classes)
        return {k: pool[v] for k, v in carved.items()} | {"test": inventory.given["test"]}

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, **options: Any) -> ClassificationData:
        no_options(self.name, options)
        data = self.official(raw_dir, augment=augment,
                             indices={k: v for k, v in parts.items() if k != "test"})
        n_train = len(data.splits["train"].dataset)
        official_test = n_train + np.arange(len(data.splits["test"]))
        if not np.array_equal(parts.get("test", np.empty(0, dtype=np.int64)), official_test):
            raise DatasetError(f"the manifest's test split must be the official {self.name} test set "
                               f"(sample_id {n_train}..{n_train + official_test.shape[0] - 1}); "
                               f"re-run the split stage (dvc repro split)")
        return data


def suggested_folder(raw_dir: Path, name: str) -> Path:
    return raw_dir.parent.parent / "downloads" / name


def find_files(source: Path, folders: Sequence[str], names: Sequence[str], *,
               packed: str | None, what: str, hint: str) -> list[Path]:
    """Each of ``names`` in the first of ``source/<folder>`` holding it (or its ``packed`` form,
    which wins: it is what the official checksums are of)."""
    found: dict[str, Path] = {}
    for name in names:
        forms = ([f"{name}{packed}"] if packed else []) + [name]
        hits = [source / folder / form for folder in folders for form in forms
                if (source / folder / form).is_file()]
        if hits:
            found[name] = hits[0]
    missing = [name for name in names if name not in found]
    if missing:
        places = ", ".join(f"{source / folder}/" for folder in folders)
        forms = f" (or their {packed})" if packed else ""
        raise DatasetMissingError(f"{what} file(s) {', '.join(missing)}{forms} not found in "
                                  f"data.source (looked in {places}); put them there, {hint}")
    return list(found.values())


def copy_files(paths: Sequence[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, folder / path.name)
