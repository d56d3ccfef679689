"""CIFAR-10 through torchvision (Section 5.1): (3, 32, 32) inputs, the official test set.

Files are looked up where torchvision 0.29 reads them,
``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; a
``<root>/cifar-10-python.tar.gz`` is extracted on load. Training images get the standard
augmentation of He et al. (random 32x32 crop of the image padded by 4, random horizontal flip),
on the train split only.

torchvision's CIFAR10 refuses files whose md5 differs from the official release. We check the
md5s ourselves (``verify_checksums=True``, the default, with an error naming the file) and load
through a subclass whose ``_check_integrity``/``_load_meta`` only require the files to exist, so
``verify_checksums=False`` can read other files in the same format (tests write tiny fakes).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .adapter import FetchRequest
from .common import ClassificationData, DatasetError, DatasetMissingError
from .vision import (
    OfficialAdapter,
    PILImages,
    assemble,
    check_options,
    copy_files,
    download_note,
    find_files,
    missing_files,
    suggested_folder,
    try_download,
)

CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_URL = f"https://www.cs.toronto.edu/~kriz/{CIFAR10_ARCHIVE}"
CIFAR10_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",
                                                                                   "batches.meta")


def load_cifar10(root: str | os.PathLike[str], download: bool = False, *, val_fraction: float = 0.1,
                 seed: int = 0, augment: bool = True, verify_checksums: bool = True,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 download_timeout: float = 10.0,
                 indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """CIFAR-10, (3, 32, 32) inputs; ``augment`` adds crop+flip to the train split only.

    ``indices`` as for :func:`load_mnist`.
    """
    norm = check_options("cifar10", 3, val_fraction, mean, std)
    folder = Path(root) / CIFAR10_FOLDER
    archive = Path(root) / CIFAR10_ARCHIVE
    if missing_files(folder, CIFAR10_FILES) and archive.is_file():
        _extract_tar(archive, Path(root))
    problem = None
    if download and missing_files(folder, CIFAR10_FILES):
        problem = download_cifar10(root, download_timeout)
    missing = missing_files(folder, CIFAR10_FILES)
    if missing:
        raise DatasetMissingError(
            f"CIFAR-10 not found: missing {', '.join(missing)} in {folder}/. Download {CIFAR10_URL} "
            f"and put it at {archive} (extracted on load), or extract it yourself with "
            f"`tar -xzf {CIFAR10_ARCHIVE} -C {root}`; or call load_cifar10(root, download=True) "
            f"with network access." + download_note(download, problem))
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
    return assemble("cifar10", list(official[0].classes), bases, (3, 32, 32), norm,
                     augment=_he_augmentation() if augment else None, val_fraction=val_fraction,
                     seed=seed, root=root, indices=indices)


def download_cifar10(root: str | os.PathLike[str], timeout: float = 10.0) -> str | None:
    """Download and extract CIFAR-10 into ``root`` (md5-checked); as :func:`download_mnist`."""
    return try_download(lambda: _download_cifar10(root), CIFAR10_URL, timeout)


def _he_augmentation() -> list[Any]:
    import torchvision.transforms as T

    return [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]


@lru_cache(maxsize=1)
def _existence_checked_cifar10() -> type:
    """torchvision's CIFAR10 with its md5 checks reduced to existence checks (see module doc)."""
    from torchvision.datasets import CIFAR10

    class ExistenceCheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return not missing_files(Path(self.root) / self.base_folder, CIFAR10_FILES)

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


def _verify_cifar_md5(folder: Path) -> None:
    bad = cifar10_md5_mismatches(folder)
    if bad:
        raise DatasetError(f"CIFAR-10 files {', '.join(bad)} in {folder} do not match the official "
                           f"md5s; re-download {CIFAR10_URL}, or pass verify_checksums=False to "
                           f"load files in the same format that are not the official release")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths, links out of dest and device files.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"cannot extract {archive} ({err}); re-download {CIFAR10_URL}") from err


class Cifar10Adapter(OfficialAdapter):
    """``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""

    name = "cifar10"
    loader = staticmethod(load_cifar10)

    def instructions(self, raw_dir: Path) -> str:
        folder = suggested_folder(raw_dir, "cifar10")
        return (f"CIFAR-10 is not in {raw_dir} and there is nothing to fetch it from (data.source "
                f"is not set and data.download is false). Download {CIFAR10_URL}, put "
                f"{CIFAR10_ARCHIVE} in a folder, e.g. {folder}/, and set `data.source: {folder}` in "
                f"params.yaml (the archive itself, or its extracted {CIFAR10_FOLDER}/ folder, works "
                f"too); fetch checks the md5s and puts the files in {raw_dir}/{CIFAR10_FOLDER}/. Or "
                f"set `data.download: true` on a machine with network access.")

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        folder, source = work / CIFAR10_FOLDER, request.source
        if source is None:
            self.explain_download(request, download_cifar10(work))
        elif source.is_file():
            shutil.copyfile(source, work / CIFAR10_ARCHIVE)  # extracted by the loader below
        elif (source / CIFAR10_ARCHIVE).is_file() and not (source / CIFAR10_FOLDER).is_dir():
            shutil.copyfile(source / CIFAR10_ARCHIVE, work / CIFAR10_ARCHIVE)
        else:
            copy_files(find_files(source, (CIFAR10_FOLDER, "."), CIFAR10_FILES, packed=None,
                                  what="CIFAR-10", hint=f"or put {CIFAR10_ARCHIVE} itself in {source}/"),
                       folder)
        load_cifar10(work, val_fraction=0, augment=False, verify_checksums=False)  # extracts, parses
        if request.verify_checksums:
            bad = cifar10_md5_mismatches(folder)
            if bad:
                raise DatasetError(
                    f"CIFAR-10 file(s) {', '.join(bad)} from {request.origin()} differ from the md5s "
                    f"torchvision lists for the official release; use {CIFAR10_URL}, or fetch with "
                    f"verify_checksums=False to accept other files in CIFAR-10's format")
        # Keep only what the loader reads (no archive, no readme.html), so that the output is the
        # same however the files came.
        keep = {folder, *(folder / f for f in CIFAR10_FILES)}
        for entry in [*work.iterdir(), *folder.iterdir()]:
            if entry not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return {"checksums_verified": request.verify_checksums}

    def official(self, raw_dir: Path, *, augment: bool,
                 indices: Mapping[str, np.ndarray] | None) -> ClassificationData:
        return load_cifar10(raw_dir, val_fraction=0, augment=augment, verify_checksums=False,
                            indices=indices)
