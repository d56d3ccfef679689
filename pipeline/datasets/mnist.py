"""MNIST through torchvision (Section 5.1): (1, 28, 28) inputs, the official test set.

Files are looked up where torchvision 0.29 reads them,
``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; a ``.gz`` of any of them in
the same folder is decompressed on load. Fetch takes the four files from ``data.source`` (bare,
``raw/`` or torchvision's ``MNIST/raw/`` layout) or lets torchvision download them, and checks the
``.gz`` files against the md5s torchvision lists.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.fileio import atomic_write_bytes

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

MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
MNIST_FILES: tuple[str, ...] = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def load_mnist(root: str | os.PathLike[str], download: bool = False, *, val_fraction: float = 0.1,
               seed: int = 0, mean: Sequence[float] = MNIST_MEAN, std: Sequence[float] = MNIST_STD,
               download_timeout: float = 10.0,
               indices: Mapping[str, Sequence[int]] | None = None) -> ClassificationData:
    """MNIST, (1, 28, 28) inputs; train minus a ``val_fraction`` carve-out, val, official test.

    ``indices`` ("train" and optionally "val" -> rows of the official training set, e.g. from a
    manifest) replaces the seeded carve-out; the test split is always the official test set.
    """
    from torchvision.datasets import MNIST

    norm = check_options("mnist", 1, val_fraction, mean, std)
    raw = Path(root) / "MNIST" / "raw"
    _gunzip_pending(raw, MNIST_FILES)
    if download and missing_files(raw, MNIST_FILES):
        problem = download_mnist(root, download_timeout)
    else:
        problem = None
    missing = missing_files(raw, MNIST_FILES)
    if missing:
        raise DatasetMissingError(
            f"MNIST not found: missing {', '.join(missing)} in {raw}/. Put the four files "
            f"{', '.join(MNIST_FILES)} there (or their .gz, decompressed on load), downloaded "
            f"from {MNIST_URL}<name>.gz, e.g. `mkdir -p {raw} && cd {raw} && curl -O "
            f"{MNIST_URL}train-images-idx3-ubyte.gz` for each; or call load_mnist(root, "
            f"download=True) with network access." + download_note(download, problem))
    try:
        bases = tuple(PILImages(d.data.numpy(), d.targets.numpy())
                      for d in (MNIST(os.fspath(root), train=True), MNIST(os.fspath(root), train=False)))
    except (AssertionError, TypeError, ValueError, RuntimeError, KeyError) as err:
        raise DatasetError(f"MNIST files in {raw} are malformed ({type(err).__name__}: {err}); "
                           f"replace them with the originals from {MNIST_URL}") from err
    return assemble("mnist", list(MNIST_CLASSES), bases, (1, 28, 28), norm,
                     augment=None, val_fraction=val_fraction, seed=seed, root=root, indices=indices)


def download_mnist(root: str | os.PathLike[str], timeout: float = 10.0) -> str | None:
    """Let torchvision download MNIST into ``<root>/MNIST/raw`` (it checks the md5s).

    Returns None on success, else why it failed; gives up within ``timeout`` s when offline.
    """
    from torchvision.datasets import MNIST

    return try_download(lambda: MNIST(os.fspath(root), train=True, download=True), MNIST_URL,
                         timeout)


def mnist_md5_mismatches(folder: str | os.PathLike[str]) -> list[str]:
    """MNIST ``.gz`` files in ``folder`` that are absent or differ from torchvision's md5s.

    torchvision lists the md5s of the downloaded ``.gz`` files only, so the decompressed files
    cannot be checked against the official release.
    """
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    return [f for f, md5 in MNIST.resources if not check_integrity(os.path.join(folder, f), md5)]


def _gunzip_pending(folder: Path, names: Sequence[str]) -> None:
    """Decompress ``<name>.gz`` next to each missing ``<name>`` (atomically)."""
    for name in missing_files(folder, names):
        packed = folder / f"{name}.gz"
        if packed.is_file():
            try:
                with gzip.open(packed, "rb") as fh:
                    data = fh.read()
            except (OSError, EOFError) as err:
                raise DatasetError(f"{packed} is not a readable gzip file ({err}); replace it") from err
            atomic_write_bytes(folder / name, data)


class MnistAdapter(OfficialAdapter):
    """``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision's layout)."""

    name = "mnist"
    loader = staticmethod(load_mnist)

    def instructions(self, raw_dir: Path) -> str:
        folder = suggested_folder(raw_dir, "mnist")
        files = ", ".join(f"{f}.gz" for f in MNIST_FILES)
        return (f"MNIST is not in {raw_dir} and there is nothing to fetch it from (data.source is "
                f"not set and data.download is false). Download the four files {files} from "
                f"{MNIST_URL}, put them in a folder, e.g. {folder}/, and set `data.source: {folder}` "
                f"in params.yaml (torchvision's layout {folder}/MNIST/raw/ works too); fetch checks "
                f"their md5s and puts them in {raw_dir}/MNIST/raw/. Or set `data.download: true` on "
                f"a machine with network access.")

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        raw = work / "MNIST" / "raw"
        if request.source is not None:
            copy_files(find_files(request.source, ("MNIST/raw", "raw", "."), MNIST_FILES,
                                  packed=".gz", what="MNIST", hint=f"downloaded from {MNIST_URL}"), raw)
        else:
            self.explain_download(request, download_mnist(work))
        if request.verify_checksums:
            bad = mnist_md5_mismatches(raw)
            if bad:
                raise DatasetError(
                    f"MNIST file(s) {', '.join(bad)} from {request.origin()} are missing or differ "
                    f"from the md5s torchvision lists for the official release (it lists the .gz "
                    f"files only); use the .gz files from {MNIST_URL}, or fetch with "
                    f"verify_checksums=False to accept other files in MNIST's format")
        load_mnist(work, val_fraction=0)  # decompresses the .gz files and checks the idx format
        for packed in raw.glob("*.gz"):
            packed.unlink()  # the decompressed files are what torchvision reads
        return {"checksums_verified": request.verify_checksums}

    def official(self, raw_dir: Path, *, augment: bool,
                 indices: Mapping[str, np.ndarray] | None) -> ClassificationData:
        return load_mnist(raw_dir, val_fraction=0, indices=indices)
