"""The one interface every dataset module implements, so that the stages never ask which it is.

A :class:`DatasetAdapter` owns three things for its dataset:

* **fetch**: materialise the data in a fresh work folder (from ``data.source``, a download, a
  generator or a bundled copy). :func:`pipeline.datasets.prepare.fetch_dataset` does the rest that is the
  same for all: checks, the work folder, ``FETCHED.json`` with checksums, the atomic swap.
* **inventory**: read back what fetch wrote without decoding inputs: class names, labels in the
  dataset's canonical sample order, image paths where samples are files, and the splits the data
  itself fixes. :func:`pipeline.datasets.prepare.make_manifest` turns it into the manifest via ``split``.
* **load**: the :class:`~pipeline.datasets.common.ClassificationData` for given row positions
  per split (from the manifest).

Adding a dataset is one module with one adapter and one line in ``pipeline.datasets.DATASETS``.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    check_split_fractions_named,
    stratified_split,
)


@dataclass(frozen=True)
class FetchRequest:
    """What params.yaml asks fetch for (checked before any file is touched)."""

    raw_dir: Path
    source: Path | None
    download: bool
    seed: int
    label_column: str
    verify_checksums: bool

    def origin(self) -> str:
        return f"data.source {self.source}" if self.source is not None else "the download"


@dataclass(frozen=True)
class Inventory:
    """A fetched dataset without its inputs: class names and labels in canonical sample order,
    relative file paths where samples are files, and the splits the data itself fixes (toy's
    generated splits, MNIST/CIFAR-10's official train and test sets, a table's split column)."""

    classes: list[str]
    labels: np.ndarray
    paths: list[str] | None = None
    given: dict[str, np.ndarray] | None = None


class DatasetAdapter:
    """Base of every dataset's adapter; subclasses set ``name`` and override what differs."""

    name: str = ""
    # toy and digits are generated or bundled: a data.source left set for another dataset
    # must not stop them.
    uses_source: bool = True
    # PMI and a user's table: there is nothing to fetch without data.source.
    needs_source: bool = False
    # MNIST and CIFAR-10 are pinned by official checksums: a verified earlier fetch can stand.
    keeps_verified_fetch: bool = False
    # The standalone loader (``pipeline.datasets.load_dataset``), for use without the pipeline.
    loader: Callable[..., ClassificationData]

    def instructions(self, raw_dir: Path) -> str:
        """How to get the data into ``raw_dir`` when there is nothing to fetch it from."""
        return f"nothing to fetch {self.name} from; set data.source in params.yaml"

    def missing_message(self, request: FetchRequest) -> str | None:
        """Instructions when there is nothing to fetch from; None when fetch can go ahead."""
        if self.needs_source and request.source is None:
            return self.instructions(request.raw_dir)
        return None

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        """Materialise the dataset in the empty folder ``work``; return options for FETCHED.json."""
        raise NotImplementedError

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        raise NotImplementedError

    def split(self, inventory: Inventory, *, seed: int, val_fraction: float,
              fractions: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """Row positions per split: the data's own splits, else 6:2:2 per class (section 5.3.2)."""
        if inventory.given is not None:
            return inventory.given
        return stratified_split(inventory.labels, check_split_fractions_named(fractions), seed,
                                inventory.classes)

    def positions(self, raw_dir: Path, frame: Any) -> np.ndarray:
        """Each manifest row's position in the canonical sample order."""
        return frame["sample_id"].to_numpy()

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, **options: Any) -> ClassificationData:
        raise NotImplementedError


def no_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise DatasetError(f"option(s) {sorted(options)} do not apply to dataset {name!r}")


def missing_fetch(path: Path) -> DatasetMissingError:
    return DatasetMissingError(f"{path} does not exist; run the fetch stage first (dvc repro fetch)")


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` without the wall-clock time zipfile stamps on each member, so that the same
    arrays give the same bytes (a DVC output reproducible byte for byte)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise missing_fetch(path)
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def read_classes_json(raw_dir: Path) -> list[str]:
    path = raw_dir / "classes.json"
    if not path.is_file():
        raise missing_fetch(path)
    return [str(c) for c in json.loads(path.read_text())]
