"""The data layer under the DVC stages: fetch a dataset, split it, and rebuild it from both.

Each dataset's own logic lives in its adapter (:mod:`pipeline.datasets`); what is the same for all
of them lives here:

* ``fetch``: :func:`fetch_dataset` checks the request, lets the adapter materialise the data in a
  temporary folder next to ``data/raw/<name>``, writes ``FETCHED.json`` there (the files with
  their sha256, the number of samples and the class names) and swaps the folder into place. Same
  inputs give the same bytes (no timestamps anywhere).
* ``split``: :func:`make_manifest` and :func:`write_manifest`: one row per sample saying which
  split it belongs to.
* training and evaluation: :func:`load_prepared` rebuilds a
  :class:`~pipeline.datasets.ClassificationData` with exactly the manifest's splits.

The manifest has the columns of :data:`MANIFEST_COLUMNS`, one row per sample, sorted by
``sample_id``, which indexes the dataset's canonical sample order (its adapter's inventory).
``path`` is the sample's file path relative to ``data/raw/<name>`` (POSIX separators) where
samples are files, so that the manifest names files rather than positions, and the empty string
otherwise (one column type throughout).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets import (
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    dataset_adapter,
)
from pipeline.datasets.adapter import FetchRequest
from pipeline.datasets.common import SPLIT_NAMES
from pipeline.fileio import atomic_write_bytes

FETCHED_FILE = "FETCHED.json"
MANIFEST_COLUMNS: tuple[str, ...] = ("sample_id", "path", "label", "class_name", "split")


def fetch_dataset(name: str, raw_dir: str | os.PathLike[str], *,
                  source: str | os.PathLike[str] | None = None, download: bool = False,
                  seed: int = 0, label_column: str = "label",
                  verify_checksums: bool = True) -> dict[str, Any]:
    """Materialise dataset ``name`` in ``raw_dir`` and return the summary written to FETCHED.json.

    ``source`` is a local copy to import: a folder (MNIST/CIFAR-10 files in torchvision's layout
    or bare, a CIFAR-10 archive, a PMI ImageFolder tree), an archive (CIFAR-10, PMI) or a file
    (table). Without one, MNIST/CIFAR-10 are downloaded by torchvision if ``download`` is true.
    toy is generated with ``seed`` and digits come with scikit-learn (both ignore ``source``). ``verify_checksums`` checks
    MNIST's ``.gz`` files and CIFAR-10's files against the md5s torchvision lists; an MNIST or
    CIFAR-10 folder that an earlier fetch filled and that still matches its FETCHED.json is kept
    as it is. Everything is built in a temporary folder next to ``raw_dir`` that replaces it only
    once complete, so a failure leaves ``raw_dir`` as it was.
    """
    adapter = dataset_adapter(name)
    request = _check_request(adapter.uses_source, raw_dir, source, download, seed, label_column,
                             verify_checksums)
    if adapter.keeps_verified_fetch:
        kept = _valid_earlier_fetch(name, request)
        if kept is not None:
            return kept
    problem = adapter.missing_message(request)
    if problem is not None:
        raise DatasetMissingError(problem)
    request.raw_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{request.raw_dir.name}.fetching-",
                                 dir=request.raw_dir.parent))
    try:
        work.chmod(0o755)  # mkdtemp's 0700 would stick to raw_dir once it is moved there
        options = adapter.fetch(request, work)
        inventory = adapter.inventory(work, label_column)  # reads back what was written
        summary = {"dataset": name, "classes": inventory.classes,
                   "num_samples": int(inventory.labels.shape[0]), "files": _checksums(work),
                   "options": options}
        (work / FETCHED_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _swap_in(work, request.raw_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # still there only if something failed
    return summary


def _check_request(uses_source: bool, raw_dir: str | os.PathLike[str],
                   source: str | os.PathLike[str] | None, download: bool, seed: int,
                   label_column: str, verify_checksums: bool) -> FetchRequest:
    """All checks that need no data, so that bad options fail before any file is touched."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DatasetError(f"seed must be an int; got {seed!r}")
    if not isinstance(label_column, str) or not label_column:
        raise DatasetError(f"label_column must be a non-empty string; got {label_column!r}")
    raw_dir = Path(raw_dir)
    if raw_dir.exists() and not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir} exists and is not a folder; remove it or choose another path")
    # data.source is one key for every dataset: one left set for another dataset must not stop
    # the generated toy data or the bundled digits.
    source_path = None if source is None or not uses_source else Path(source)
    if source_path is not None and not source_path.exists():
        raise DatasetMissingError(f"data.source {source_path} does not exist; fix data.source in "
                                  f"params.yaml")
    return FetchRequest(raw_dir, source_path, bool(download), int(seed), label_column,
                        bool(verify_checksums))


def _checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but FETCHED.json, by POSIX path relative to it."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != FETCHED_FILE:
            with open(path, "rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def _valid_earlier_fetch(name: str, request: FetchRequest) -> dict[str, Any] | None:
    """The FETCHED.json summary of ``raw_dir`` if it is this dataset, verified at least as
    strictly as asked now, with every file still matching its sha256; else None."""
    record = request.raw_dir / FETCHED_FILE
    if not record.is_file():
        return None
    try:
        summary = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(summary, dict) or summary.get("dataset") != name
            or (request.verify_checksums
                and not summary.get("options", {}).get("checksums_verified"))):
        return None
    return summary if _checksums(request.raw_dir) == summary.get("files") else None


def _swap_in(work: Path, raw_dir: Path) -> None:
    """Move the finished ``work`` folder to ``raw_dir``, replacing what was there."""
    if not raw_dir.exists():
        os.replace(work, raw_dir)
        return
    # A folder cannot replace a non-empty one in one rename: move the old one aside first.
    retired = Path(tempfile.mkdtemp(prefix=f".{raw_dir.name}.retired-", dir=raw_dir.parent))
    os.replace(raw_dir, retired)
    try:
        os.replace(work, raw_dir)
    except OSError:
        os.replace(retired, raw_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


# -------------------------------------------------------------------------------- manifest


def make_manifest(name: str, raw_dir: str | os.PathLike[str], *, seed: int = 0,
                  fractions: Mapping[str, float] | None = None, val_fraction: float = 0.1,
                  label_column: str = "label") -> Any:
    """One row per sample of the fetched dataset with its split (columns: module doc).

    The dataset's adapter decides the split (``DatasetAdapter.split``): splits the data fixes
    stand (toy's generated train/val/test, a table's ``split`` column); MNIST and CIFAR-10 keep the
    official test set and hold out a seeded stratified ``val_fraction`` of the official training
    set; everything else is split per class by ``fractions`` (default 6:2:2, Section 5.3.2) with
    ``seed``. The splits are exactly those the loaders of :mod:`pipeline.datasets` draw for the
    same seed. Every class must appear in every split.
    """
    import pandas as pd

    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DatasetError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    adapter = dataset_adapter(name)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetMissingError(f"{raw_dir} does not exist; run the fetch stage first "
                                  f"(dvc repro fetch)")
    inventory = adapter.inventory(raw_dir, label_column)
    labels, classes = inventory.labels, inventory.classes
    parts = adapter.split(inventory, seed=seed, val_fraction=val_fraction, fractions=fractions)
    absent = [split for split in SPLIT_NAMES if len(parts.get(split, ())) == 0]
    if absent:
        raise DatasetError(f"{name} data in {raw_dir} has no {' or '.join(absent)} samples; training needs all of "
                           f"{', '.join(SPLIT_NAMES)} (a table's split column must name each of them)")

    ids = np.concatenate(list(parts.values()))
    splits = np.repeat(np.array(list(parts), dtype=object), [v.shape[0] for v in parts.values()])
    order = np.argsort(ids, kind="stable")
    ids, splits = ids[order], splits[order]
    frame = pd.DataFrame({
        "sample_id": ids.astype(np.int64),
        "path": (np.asarray(inventory.paths, dtype=object)[ids] if inventory.paths is not None
                 else np.full(ids.shape[0], "", dtype=object)),
        "label": labels[ids],
        "class_name": np.asarray(classes, dtype=object)[labels[ids]],
        "split": splits,
    })
    return check_manifest(frame, classes)


def check_manifest(frame: Any, classes: Sequence[str] | None = None) -> Any:
    """``frame`` checked as a manifest, with plain dtypes, sorted by ``sample_id``.

    Checks the columns, unique non-negative sample ids, split names, a one-to-one label <->
    class_name mapping over labels 0..K-1 (``classes``, if given, must be those names in label
    order) and that every class has a sample in every split present.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise DatasetError(f"a manifest must be a pandas DataFrame; got {type(frame).__name__}")
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"manifest lacks column(s) {missing}; needs {list(MANIFEST_COLUMNS)}, "
                           f"has {[str(c) for c in frame.columns]}")
    if frame.empty:
        raise DatasetError("manifest has no rows")
    for column in ("sample_id", "label"):
        if not pd.api.types.is_integer_dtype(frame[column]) or (frame[column] < 0).any():
            raise DatasetError(f"manifest column {column!r} must hold non-negative ints; got "
                               f"dtype {frame[column].dtype}")
    out = pd.DataFrame({
        "sample_id": frame["sample_id"].astype(np.int64), "path": frame["path"].fillna("").astype(str),
        "label": frame["label"].astype(np.int64), "class_name": frame["class_name"].astype(str),
        "split": frame["split"].astype(str),
    }).sort_values("sample_id", kind="stable").reset_index(drop=True)
    repeated = out["sample_id"][out["sample_id"].duplicated()].unique()
    if repeated.size:
        raise DatasetError(f"manifest repeats sample_id(s) {repeated[:5].tolist()}")
    unknown = sorted(set(out["split"]) - set(SPLIT_NAMES))
    if unknown or "train" not in set(out["split"]):
        raise DatasetError(f"manifest split values must include 'train' and be among "
                           f"{', '.join(SPLIT_NAMES)}; got unknown {unknown}")
    names = manifest_classes(out)
    if classes is not None and list(classes) != names:
        raise DatasetError(f"manifest classes {names} differ from the dataset's {list(classes)}")
    _check_every_class_in_every_split(out, names)
    return out


def manifest_classes(frame: Any) -> list[str]:
    """Class names of a manifest in label order; the label <-> name mapping must be one-to-one
    and the labels must be 0..K-1."""
    pairs = frame[["label", "class_name"]].drop_duplicates().sort_values("label", kind="stable")
    labels, names = pairs["label"].to_numpy(), pairs["class_name"].astype(str).tolist()
    if len(set(labels.tolist())) != len(labels) or len(set(names)) != len(names):
        raise DatasetError(f"manifest labels and class names must map one to one; got pairs "
                           f"{list(zip(labels.tolist(), names))[:10]}")
    if labels.tolist() != list(range(len(labels))):
        raise DatasetError(f"manifest labels must be 0..K-1 with every value used; got "
                           f"{labels.tolist()[:20]}")
    return names


def _check_every_class_in_every_split(frame: Any, classes: list[str]) -> None:
    present = [s for s in SPLIT_NAMES if s in set(frame["split"])]
    split_index = frame["split"].map({s: i for i, s in enumerate(present)}).to_numpy()
    counts = np.zeros((len(present), len(classes)), dtype=np.int64)
    np.add.at(counts, (split_index, frame["label"].to_numpy()), 1)
    empty = np.argwhere(counts == 0)
    if empty.size:
        listed = "; ".join(f"class {classes[c]!r} has no sample in split {present[s]!r}"
                           for s, c in empty[:10])
        listed += f"; and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise DatasetError(f"every class must appear in every split: {listed}. Give those "
                           f"classes more samples, or change the split")


def write_manifest(frame: Any, path: str | os.PathLike[str]) -> None:
    """Write a checked manifest to ``path`` as Parquet, atomically; the same frame gives the
    same bytes (no timestamps, no index)."""
    frame = check_manifest(frame)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def read_manifest(path: str | os.PathLike[str]) -> Any:
    """The manifest at ``path``, checked by :func:`check_manifest`."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetMissingError(f"manifest {path} does not exist; run the split stage first "
                                  f"(dvc repro split)")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read manifest {path}: {err}") from err
    return check_manifest(frame)


# ------------------------------------------------------------------------------------ load


def load_prepared(name: str, raw_dir: str | os.PathLike[str], manifest: Any, *,
                  augment: bool = True, label_column: str = "label",
                  **options: Any) -> ClassificationData:
    """The dataset fetched into ``raw_dir`` with exactly the splits of ``manifest`` (a
    DataFrame or the path of a Parquet manifest).

    Standardisation is the loaders' (see each dataset module); ``normalization`` tells attacks
    the valid input range. ``augment`` turns training augmentation on or off where a dataset has
    one. ``options`` are the dataset's own load options (PMI: ``image_size``, ``crop_size``). The
    manifest's class names and labels must match the data (else it is stale: re-run the split
    stage).
    """
    adapter = dataset_adapter(name)
    raw_dir = Path(raw_dir)
    frame = (check_manifest(manifest) if not isinstance(manifest, (str, os.PathLike))
             else read_manifest(manifest))
    classes = manifest_classes(frame)
    ids = adapter.positions(raw_dir, frame)
    split_values, labels = frame["split"].to_numpy(), frame["label"].to_numpy()
    parts, expected = {}, {}
    for split in SPLIT_NAMES:
        mask = split_values == split
        if mask.any():
            order = np.argsort(ids[mask], kind="stable")
            parts[split], expected[split] = ids[mask][order], labels[mask][order]
    data = adapter.load(raw_dir, parts, augment=augment, label_column=label_column, **options)
    if data.classes != classes:
        raise DatasetError(f"manifest classes {classes} differ from those of the data in "
                           f"{raw_dir}: {data.classes}; the manifest is stale: re-run the split "
                           f"stage (dvc repro split)")
    for split, want in expected.items():
        wrong = int((data.labels(split) != want).sum())
        if wrong:
            raise DatasetError(f"{wrong} manifest label(s) in split {split!r} differ from the data "
                               f"in {raw_dir}; the manifest is stale: re-run the split stage "
                               f"(dvc repro split)")
    return data
