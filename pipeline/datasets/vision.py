"""MNIST and CIFAR-10 through torchvision (Section 5.1), never downloading unless asked.

Both keep the official test set, and carve a seeded stratified validation split out of the
official training set. Inputs are standardised with the usual whole-dataset channel statistics.
CIFAR-10 training images get the standard augmentation of He et al. (random 32x32 crop of the
image padded by 4, random horizontal flip), on the train split only.

Files are looked up where torchvision 0.29 reads them:

* MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; a ``.gz`` of any of
  them in the same folder is decompressed on load.
* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; a
  ``<root>/cifar-10-python.tar.gz`` is extracted on load.

torchvision's CIFAR10 refuses files whose md5 differs from the official release. We check the
md5s ourselves (``verify_checksums=True``, the default, with an error naming the file) and load
through a subclass whose ``_check_integrity``/``_load_meta`` only require the files to exist, so
``verify_checksums=False`` can read other files in the same format (tests write tiny fakes).
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import tarfile
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from torch.utils.data import Dataset

from .common import (ClassificationData, DatasetError, DatasetMissingError, Normalization,
                     TransformedSubset, atomic_write_bytes, check_indices, dataset_labels,
                     stratified_split)

MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
MNIST_FILES: tuple[str, ...] = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL = f"https://www.cs.toronto.edu/~kriz/{CIFAR10_ARCHIVE}"
CIFAR10_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",
                                                                                   "batches.meta")


def load_mnist(root: str | os.PathLike[str], download: bool = False, *, val_fraction: float = 0.1,
               seed: int = 0, mean: Sequence[float] = MNIST_MEAN, std: Sequence[float] = MNIST_STD,
               download_timeout: float = 10.0,
               indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """MNIST, (1, 28, 28) inputs; train minus a ``val_fraction`` carve-out, val, official test.

    ``indices`` ("train" and optionally "val" -> rows of the official training set, e.g. from a
    manifest) replaces the seeded carve-out; the test split is always the official test set.
    """
    from torchvision.datasets import MNIST

    norm = _check_options("mnist", 1, val_fraction, mean, std)
    raw = Path(root) / "MNIST" / "raw"
    _gunzip_pending(raw, MNIST_FILES)
    if download and _missing(raw, MNIST_FILES):
        problem = download_mnist(root, download_timeout)
    else:
        problem = None
    missing = _missing(raw, MNIST_FILES)
    if missing:
        raise DatasetMissingError(
            f"MNIST not found: missing {', '.join(missing)} in {raw}/. Put the four files "
            f"{', '.join(MNIST_FILES)} there (or their .gz, decompressed on load), downloaded "
            f"from {MNIST_URL}<name>.gz, e.g. `mkdir -p {raw} && cd {raw} && curl -O "
            f"{MNIST_URL}train-images-idx3-ubyte.gz` for each; or call load_mnist(root, "
            f"download=True) with network access." + _download_note(download, problem))
    try:
        bases = tuple(PILImages(d.data.numpy(), d.targets.numpy())
                      for d in (MNIST(os.fspath(root), train=True), MNIST(os.fspath(root), train=False)))
    except (AssertionError, TypeError, ValueError, RuntimeError, KeyError) as err:
        raise DatasetError(f"MNIST files in {raw} are malformed ({type(err).__name__}: {err}); "
                           f"replace them with the originals from {MNIST_URL}") from err
    return _assemble("mnist", list(MNIST_CLASSES), bases, (1, 28, 28), norm,
                     augment=None, val_fraction=val_fraction, seed=seed, root=root, indices=indices)


def load_cifar10(root: str | os.PathLike[str], download: bool = False, *, val_fraction: float = 0.1,
                 seed: int = 0, augment: bool = True, verify_checksums: bool = True,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 download_timeout: float = 10.0,
                 indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """CIFAR-10, (3, 32, 32) inputs; ``augment`` adds crop+flip to the train split only.

    ``indices`` as for :func:`load_mnist`.
    """
    norm = _check_options("cifar10", 3, val_fraction, mean, std)
    folder = Path(root) / CIFAR10_FOLDER
    archive = Path(root) / CIFAR10_ARCHIVE
    if _missing(folder, CIFAR10_FILES) and archive.is_file():
        _extract_tar(archive, Path(root))
    problem = None
    if download and _missing(folder, CIFAR10_FILES):
        problem = download_cifar10(root, download_timeout)
    missing = _missing(folder, CIFAR10_FILES)
    if missing:
        raise DatasetMissingError(
            f"CIFAR-10 not found: missing {', '.join(missing)} in {folder}/. Download {CIFAR10_URL} "
            f"and put it at {archive} (extracted on load), or extract it yourself with "
            f"`tar -xzf {CIFAR10_ARCHIVE} -C {root}`; or call load_cifar10(root, download=True) "
            f"with network access." + _download_note(download, problem))
    if verify_checksums:
        _verify_cifar_md5(folder)
    cifar = _existence_checked_cifar10()
    try:
        official = cifar(os.fspath(root), train=True), cifar(os.fspath(root), train=False)
    except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError,
            pickle.UnpicklingError) as err:
        raise DatasetError(f"CIFAR-10 files in {folder} are malformed ({type(err).__name__}: "
                           f"{err}); re-extract {CIFAR10_ARCHIVE}") from err
    bases = tuple(PILImages(d.data, np.asarray(d.targets)) for d in official)
    return _assemble("cifar10", list(official[0].classes), bases, (3, 32, 32), norm,
                     augment=_he_augmentation() if augment else None, val_fraction=val_fraction,
                     seed=seed, root=root, indices=indices)


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


def _check_options(name: str, channels: int, val_fraction: float, mean: Sequence[float],
                   std: Sequence[float]) -> Normalization:
    """Validate the options before any file is read; the standardisation they define."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DatasetError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    norm = Normalization(mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    if len(norm.mean) != channels:
        raise DatasetError(f"{name} has {channels} channel(s); got mean/std of length "
                           f"{len(norm.mean)}")
    return norm


def _assemble(name: str, classes: list[str], bases: tuple[Any, Any], input_shape: tuple[int, ...],
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


def download_mnist(root: str | os.PathLike[str], timeout: float = 10.0) -> str | None:
    """Let torchvision download MNIST into ``<root>/MNIST/raw`` (it checks the md5s).

    Returns None on success, else why it failed; gives up within ``timeout`` s when offline.
    """
    from torchvision.datasets import MNIST

    return _try_download(lambda: MNIST(os.fspath(root), train=True, download=True), MNIST_URL,
                         timeout)


def download_cifar10(root: str | os.PathLike[str], timeout: float = 10.0) -> str | None:
    """Download and extract CIFAR-10 into ``root`` (md5-checked); as :func:`download_mnist`."""
    return _try_download(lambda: _download_cifar10(root), CIFAR10_URL, timeout)


def _he_augmentation() -> list[Any]:
    import torchvision.transforms as T

    return [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]


@lru_cache(maxsize=1)
def _existence_checked_cifar10() -> type:
    """torchvision's CIFAR10 with its md5 checks reduced to existence checks (see module doc)."""
    from torchvision.datasets import CIFAR10

    class ExistenceCheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return not _missing(Path(self.root) / self.base_folder, CIFAR10_FILES)

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as fh:
                self.classes = list(pickle.load(fh, encoding="latin1")[self.meta["key"]])
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return ExistenceCheckedCIFAR10


def _download_cifar10(root: str | os.PathLike[str]) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(CIFAR10.url, os.fspath(root), filename=CIFAR10.filename,
                                 md5=CIFAR10.tgz_md5)


def cifar10_md5_mismatches(folder: str | os.PathLike[str]) -> list[str]:
    """CIFAR-10 files in ``folder`` that are absent or differ from the md5s torchvision lists."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    expected = dict(CIFAR10.train_list + CIFAR10.test_list)
    expected[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    return [f for f in CIFAR10_FILES if not check_integrity(os.path.join(folder, f), expected[f])]


def mnist_md5_mismatches(folder: str | os.PathLike[str]) -> list[str]:
    """MNIST ``.gz`` files in ``folder`` that are absent or differ from torchvision's md5s.

    torchvision lists the md5s of the downloaded ``.gz`` files only, so the decompressed files
    cannot be checked against the official release.
    """
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    return [f for f, md5 in MNIST.resources if not check_integrity(os.path.join(folder, f), md5)]


def _verify_cifar_md5(folder: Path) -> None:
    bad = cifar10_md5_mismatches(folder)
    if bad:
        raise DatasetError(f"CIFAR-10 files {', '.join(bad)} in {folder} do not match the official "
                           f"md5s; re-download {CIFAR10_URL}, or pass verify_checksums=False to "
                           f"load files in the same format that are not the official release")


def _missing(folder: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def _gunzip_pending(folder: Path, names: Sequence[str]) -> None:
    """Decompress ``<name>.gz`` next to each missing ``<name>`` (atomically)."""
    for name in _missing(folder, names):
        packed = folder / f"{name}.gz"
        if packed.is_file():
            try:
                with gzip.open(packed, "rb") as fh:
                    data = fh.read()
            except (OSError, EOFError) as err:
                raise DatasetError(f"{packed} is not a readable gzip file ({err}); replace it") from err
            atomic_write_bytes(folder / name, data)


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths, links out of dest and device files.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"cannot extract {archive} ({err}); re-download {CIFAR10_URL}") from err


def _try_download(fetch: Callable[[], object], url: str, timeout: float) -> str | None:
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


def _download_note(download: bool, problem: str | None) -> str:
    if not download:
        return " (download=False, so nothing was fetched.)"
    return f" (download=True was tried: {problem or 'it finished but the files are still missing'}.)"
