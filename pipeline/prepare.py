"""The data layer under the DVC stages: fetch a dataset, split it, and rebuild it from both.

* ``fetch`` calls :func:`fetch_dataset`, which materialises dataset ``name`` in ``data/raw/<name>``
  (the stage's output) and writes ``FETCHED.json`` there: the files with their sha256, the number
  of samples and the class names. Same inputs give the same bytes (no timestamps anywhere).
* ``split`` calls :func:`make_manifest` and :func:`write_manifest`: one row per sample saying
  which split it belongs to.
* Training and evaluation call :func:`load_prepared`, which rebuilds a
  :class:`~pipeline.datasets.ClassificationData` with exactly the manifest's splits, through the
  loaders of :mod:`pipeline.datasets`.

What ``data/raw/<name>`` holds:

=========  ==================================================================================
toy        ``toy.npz`` (``x_train``, ``y_train``, ``x_val``, ``y_val``, ``x_test``, ``y_test``;
           Table 1's data plus :data:`TOY_VAL_PER_CLASS` validation points per class so that
           model selection has a validation set) and ``classes.json``
digits     ``digits.npz``: scikit-learn's ``images`` (N, 8, 8) as raw counts 0..16 and ``target``
mnist      ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision's layout)
cifar10    ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
pmi        ``<NDC>/<image>``: an ImageFolder tree of one folder per class
table      ``table.csv`` / ``table.parquet`` / ``table.pq``: a copy of the user's file
=========  ==================================================================================

The manifest has the columns of :data:`MANIFEST_COLUMNS`, one row per sample, sorted by
``sample_id``. ``sample_id`` indexes the dataset's canonical sample order: toy's train, val, test
arrays one after the other; the rows of the digits arrays or of the table; MNIST's and
CIFAR-10's official training set followed by their official test set; PMI's images sorted by
class folder, then by path. ``path`` is the image's path relative to ``data/raw/pmi`` (POSIX
separators) for PMI, which :func:`load_prepared` follows so that the manifest names files rather
than positions, and the empty string for the other datasets (one column type throughout).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.datasets import (DATASETS, ArrayDataset, ClassificationData, DatasetError,
                               DatasetMissingError, load_cifar10, load_mnist, load_pmi, load_table,
                               load_toy)
from pipeline.datasets.common import (SPLIT_NAMES, atomic_write_bytes, check_indices,
                                      check_split_fractions_named, stratified_split)
from pipeline.datasets.digits import DIGITS_CLASSES, digits_arrays, digits_data
from pipeline.datasets.pmi import PMI_DATASET_URL, fetch_pmi, image_folder_root, scan_pmi
from pipeline.datasets.tables import TABLE_READERS, read_table, table_labels, table_splits
from pipeline.datasets.vision import (CIFAR10_ARCHIVE, CIFAR10_FILES, CIFAR10_FOLDER,
                                      CIFAR10_URL, MNIST_CLASSES, MNIST_FILES, MNIST_URL,
                                      carve_validation, cifar10_md5_mismatches, download_cifar10,
                                      download_mnist, mnist_md5_mismatches)

TOY_VAL_PER_CLASS = 50
FETCHED_FILE = "FETCHED.json"
MANIFEST_COLUMNS: tuple[str, ...] = ("sample_id", "path", "label", "class_name", "split")
# These two are pinned by official checksums, so a valid earlier fetch can stand (no re-download).
_PINNED = ("mnist", "cifar10")


# ---------------------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class _Request:
    name: str
    raw_dir: Path
    source: Path | None
    download: bool
    seed: int
    label_column: str
    verify_checksums: bool


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
    request = _check_request(name, raw_dir, source, download, seed, label_column,
                             verify_checksums)
    if name in _PINNED:
        kept = _valid_earlier_fetch(request)
        if kept is not None:
            return kept
    if request.source is None and name in _INSTRUCTIONS and not (download and name in _PINNED):
        raise DatasetMissingError(_INSTRUCTIONS[name](request.raw_dir))
    request.raw_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{request.raw_dir.name}.fetching-",
                                 dir=request.raw_dir.parent))
    try:
        work.chmod(0o755)  # mkdtemp's 0700 would stick to raw_dir once it is moved there
        options = _MATERIALISERS[name](request, work)
        inventory = _inventory(name, work, label_column)  # reads back what was written
        summary = {"dataset": name, "classes": inventory.classes,
                   "num_samples": int(inventory.labels.shape[0]), "files": _checksums(work),
                   "options": options}
        (work / FETCHED_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _swap_in(work, request.raw_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # still there only if something failed
    return summary


def _check_request(name: str, raw_dir: str | os.PathLike[str],
                   source: str | os.PathLike[str] | None, download: bool, seed: int,
                   label_column: str, verify_checksums: bool) -> _Request:
    """All checks that need no data, so that bad options fail before any file is touched."""
    _check_name(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DatasetError(f"seed must be an int; got {seed!r}")
    if not isinstance(label_column, str) or not label_column:
        raise DatasetError(f"label_column must be a non-empty string; got {label_column!r}")
    raw_dir = Path(raw_dir)
    if raw_dir.exists() and not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir} exists and is not a folder; remove it or choose another path")
    # data.source is one key for every dataset: one left set for another dataset must not stop
    # the generated toy data or the bundled digits.
    source_path = None if source is None or name in ("toy", "digits") else Path(source)
    if source_path is not None and not source_path.exists():
        raise DatasetMissingError(f"data.source {source_path} does not exist; fix data.source in "
                                  f"params.yaml")
    return _Request(name, raw_dir, source_path, bool(download), int(seed), label_column,
                    bool(verify_checksums))


def _fetch_toy(request: _Request, work: Path) -> dict[str, Any]:
    data = load_toy(seed=request.seed, val_per_class=TOY_VAL_PER_CLASS)
    arrays = {}
    for split, dataset in data.splits.items():
        arrays[f"x_{split}"], arrays[f"y_{split}"] = dataset.x.numpy(), dataset.y.numpy()
    _write_npz(work / "toy.npz", arrays)
    (work / "classes.json").write_text(json.dumps(data.classes) + "\n")
    return {"seed": request.seed, "val_per_class": TOY_VAL_PER_CLASS}


def _fetch_digits(request: _Request, work: Path) -> dict[str, Any]:
    images, target = digits_arrays()
    _write_npz(work / "digits.npz", {"images": images, "target": target})
    return {}


def _fetch_mnist(request: _Request, work: Path) -> dict[str, Any]:
    raw = work / "MNIST" / "raw"
    if request.source is not None:
        raw.mkdir(parents=True)
        for found in _find_files(request.source, ("MNIST/raw", "raw", "."), MNIST_FILES,
                                 packed=".gz", what="MNIST", hint=f"downloaded from {MNIST_URL}"):
            shutil.copyfile(found, raw / found.name)
    else:
        _download_or_explain(request, download_mnist(work))
    if request.verify_checksums:
        bad = mnist_md5_mismatches(raw)
        if bad:
            raise DatasetError(
                f"MNIST file(s) {', '.join(bad)} from {_origin(request)} are missing or differ "
                f"from the md5s torchvision lists for the official release (it lists the .gz "
                f"files only); use the .gz files from {MNIST_URL}, or fetch with "
                f"verify_checksums=False to accept other files in MNIST's format")
    load_mnist(work, val_fraction=0)  # decompresses the .gz files and checks the idx format
    for packed in raw.glob("*.gz"):
        packed.unlink()  # the decompressed files are what torchvision reads
    return {"checksums_verified": request.verify_checksums}


def _fetch_cifar10(request: _Request, work: Path) -> dict[str, Any]:
    folder = work / CIFAR10_FOLDER
    if request.source is None:
        _download_or_explain(request, download_cifar10(work))
    elif request.source.is_file():
        shutil.copyfile(request.source, work / CIFAR10_ARCHIVE)  # extracted by the loader below
    elif (request.source / CIFAR10_ARCHIVE).is_file() and not (request.source / CIFAR10_FOLDER).is_dir():
        shutil.copyfile(request.source / CIFAR10_ARCHIVE, work / CIFAR10_ARCHIVE)
    else:
        folder.mkdir()
        for found in _find_files(request.source, (CIFAR10_FOLDER, "."), CIFAR10_FILES,
                                 packed=None, what="CIFAR-10",
                                 hint=f"or put {CIFAR10_ARCHIVE} itself in {request.source}/"):
            shutil.copyfile(found, folder / found.name)
    load_cifar10(work, val_fraction=0, augment=False, verify_checksums=False)  # extracts, parses
    if request.verify_checksums:
        bad = cifar10_md5_mismatches(folder)
        if bad:
            raise DatasetError(
                f"CIFAR-10 file(s) {', '.join(bad)} from {_origin(request)} differ from the md5s "
                f"torchvision lists for the official release; use {CIFAR10_URL}, or fetch with "
                f"verify_checksums=False to accept other files in CIFAR-10's format")
    # Keep only what the loader reads (no archive, no readme.html), so that the output is the
    # same however the files came.
    keep = {folder, *(folder / f for f in CIFAR10_FILES)}
    for entry in [*work.iterdir(), *folder.iterdir()]:
        if entry not in keep:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return {"checksums_verified": request.verify_checksums}


def _fetch_pmi(request: _Request, work: Path) -> dict[str, Any]:
    assert request.source is not None  # _check_request explained how to get it
    if request.source.is_file():
        fetch_pmi(work, archive=request.source)  # extracts into place of the empty `work`
        return {}
    try:
        root = image_folder_root(request.source)
    except DatasetError:
        raise DatasetError(f"data.source {request.source} holds no <class>/<image> folders; "
                           f"expected e.g. {request.source}/50111-0434/<image>.jpg") from None
    _, samples = scan_pmi(root)
    for path, _ in samples:
        target = work / Path(path).relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(Path(path), target)
    return {}


def _fetch_table(request: _Request, work: Path) -> dict[str, Any]:
    assert request.source is not None
    suffix = request.source.suffix.lower()
    if not request.source.is_file() or suffix not in TABLE_READERS:
        raise DatasetError(f"data.source for a table must be a {', '.join(TABLE_READERS)} file; "
                           f"got {request.source}")
    shutil.copyfile(request.source, work / f"table{suffix}")
    table_labels(read_table(work / f"table{suffix}"), request.label_column, request.source)
    return {"label_column": request.label_column}


_MATERIALISERS: dict[str, Callable[[_Request, Path], dict[str, Any]]] = {
    "toy": _fetch_toy, "digits": _fetch_digits, "mnist": _fetch_mnist,
    "cifar10": _fetch_cifar10, "pmi": _fetch_pmi, "table": _fetch_table,
}


def _suggested_folder(raw_dir: Path, name: str) -> Path:
    return raw_dir.parent.parent / "downloads" / name


def _mnist_instructions(raw_dir: Path) -> str:
    folder = _suggested_folder(raw_dir, "mnist")
    files = ", ".join(f"{f}.gz" for f in MNIST_FILES)
    return (f"MNIST is not in {raw_dir} and there is nothing to fetch it from (data.source is not "
            f"set and data.download is false). Download the four files {files} from {MNIST_URL}, "
            f"put them in a folder, e.g. {folder}/, and set `data.source: {folder}` in "
            f"params.yaml (torchvision's layout {folder}/MNIST/raw/ works too); fetch checks their "
            f"md5s and puts them in {raw_dir}/MNIST/raw/. Or set `data.download: true` on a "
            f"machine with network access.")


def _cifar10_instructions(raw_dir: Path) -> str:
    folder = _suggested_folder(raw_dir, "cifar10")
    return (f"CIFAR-10 is not in {raw_dir} and there is nothing to fetch it from (data.source is "
            f"not set and data.download is false). Download {CIFAR10_URL}, put {CIFAR10_ARCHIVE} "
            f"in a folder, e.g. {folder}/, and set `data.source: {folder}` in params.yaml (the "
            f"archive itself, or its extracted {CIFAR10_FOLDER}/ folder, works too); fetch checks "
            f"the md5s and puts the files in {raw_dir}/{CIFAR10_FOLDER}/. Or set "
            f"`data.download: true` on a machine with network access.")


def _pmi_instructions(raw_dir: Path) -> str:
    return (f"the PMI dataset is not downloaded automatically. Download it in a browser from "
            f"{PMI_DATASET_URL}, then set `data.source` in params.yaml to the downloaded archive "
            f"(.zip or .tar.gz) or to a folder of <NDC>/<image>.jpg class folders; fetch extracts "
            f"or copies it to {raw_dir}/.")


def _table_instructions(raw_dir: Path) -> str:
    return (f"dataset 'table' needs your table: set `data.source` in params.yaml to a "
            f"{' / '.join(TABLE_READERS)} file with one row per sample and a label column "
            f"(data.label_column); fetch copies it to {raw_dir}/.")


_INSTRUCTIONS: dict[str, Callable[[Path], str]] = {
    "mnist": _mnist_instructions, "cifar10": _cifar10_instructions,
    "pmi": _pmi_instructions, "table": _table_instructions,
}


def _download_or_explain(request: _Request, problem: str | None) -> None:
    if problem is not None:
        raise DatasetMissingError(f"{_INSTRUCTIONS[request.name](request.raw_dir)} "
                                  f"(data.download is true, but {problem}.)")


def _origin(request: _Request) -> str:
    return f"data.source {request.source}" if request.source is not None else "the download"


def _find_files(source: Path, folders: Sequence[str], names: Sequence[str], *,
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


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` (no copy of a large image set) or copy it where links cannot be made."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` without the wall-clock time zipfile stamps on each member, so that the same
    arrays give the same bytes (a DVC output reproducible byte for byte)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetMissingError(f"{path} does not exist; run the fetch stage first "
                                  f"(dvc repro fetch)")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but FETCHED.json, by POSIX path relative to it."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != FETCHED_FILE:
            with open(path, "rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def _valid_earlier_fetch(request: _Request) -> dict[str, Any] | None:
    """The FETCHED.json summary of ``raw_dir`` if it is this dataset, verified at least as
    strictly as asked now, with every file still matching its sha256; else None."""
    record = request.raw_dir / FETCHED_FILE
    if not record.is_file():
        return None
    try:
        summary = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(summary, dict) or summary.get("dataset") != request.name
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


# ------------------------------------------------------------------------------- inventory


@dataclass(frozen=True)
class _Inventory:
    """A fetched dataset without its inputs: class names and labels in canonical sample order,
    PMI's relative image paths, and the splits the data itself fixes (toy's generated splits,
    MNIST/CIFAR-10's official train and test sets, a table's split column)."""

    classes: list[str]
    labels: np.ndarray
    paths: list[str] | None = None
    given: dict[str, np.ndarray] | None = None


def _inventory(name: str, raw_dir: Path, label_column: str) -> _Inventory:
    _check_name(name)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetMissingError(f"{raw_dir} does not exist; run the fetch stage first "
                                  f"(dvc repro fetch)")
    if name == "toy":
        arrays = _read_npz(raw_dir / "toy.npz")
        sizes = [arrays[f"y_{k}"].shape[0] for k in SPLIT_NAMES]
        bounds = np.cumsum([0] + sizes)
        return _Inventory(_read_classes_json(raw_dir),
                          np.concatenate([arrays[f"y_{k}"] for k in SPLIT_NAMES]).astype(np.int64),
                          given={k: np.arange(bounds[i], bounds[i + 1])
                                 for i, k in enumerate(SPLIT_NAMES)})
    if name == "digits":
        return _Inventory(list(DIGITS_CLASSES),
                          _read_npz(raw_dir / "digits.npz")["target"].astype(np.int64))
    if name in _PINNED:
        data = _load_official(name, raw_dir, augment=False, indices=None)
        train, test = data.labels("train"), data.labels("test")
        return _Inventory(data.classes, np.concatenate([train, test]),
                          given={"train": np.arange(train.shape[0]),
                                 "test": train.shape[0] + np.arange(test.shape[0])})
    if name == "pmi":
        classes, samples = scan_pmi(raw_dir)
        return _Inventory(classes, np.array([t for _, t in samples], dtype=np.int64),
                          paths=[Path(p).relative_to(raw_dir).as_posix() for p, _ in samples])
    frame = read_table(_table_file(raw_dir))
    classes, labels = table_labels(frame, label_column, raw_dir)
    given = table_splits(frame, labels, classes) if "split" in frame.columns else None
    return _Inventory(classes, labels, given=given)


def dataset_classes(name: str, raw_dir: str | os.PathLike[str],
                    label_column: str = "label") -> list[str]:
    """Class names of the dataset fetched into ``raw_dir``, in label order.

    Reads no pixels: toy's classes.json, the fixed digit/MNIST names, CIFAR-10's batches.meta,
    PMI's class folders, a table's label column.
    """
    _check_name(name)
    raw_dir = Path(raw_dir)
    if name == "toy":
        return _read_classes_json(raw_dir)
    if name in ("digits", "mnist"):
        needed = raw_dir / ("digits.npz" if name == "digits" else "MNIST/raw")
        if not needed.exists():
            raise DatasetMissingError(f"{needed} does not exist; run the fetch stage first "
                                      f"(dvc repro fetch)")
        return list(DIGITS_CLASSES if name == "digits" else MNIST_CLASSES)
    if name == "cifar10":
        import pickle

        meta = raw_dir / CIFAR10_FOLDER / "batches.meta"
        if not meta.is_file():
            raise DatasetMissingError(f"{meta} does not exist; run the fetch stage first "
                                      f"(dvc repro fetch)")
        with open(meta, "rb") as fh:
            return [str(c) for c in pickle.load(fh, encoding="latin1")["label_names"]]
    return _inventory(name, raw_dir, label_column).classes


def _read_classes_json(raw_dir: Path) -> list[str]:
    path = raw_dir / "classes.json"
    if not path.is_file():
        raise DatasetMissingError(f"{path} does not exist; run the fetch stage first "
                                  f"(dvc repro fetch)")
    return [str(c) for c in json.loads(path.read_text())]


def _table_file(raw_dir: Path) -> Path:
    found = [raw_dir / f"table{suffix}" for suffix in TABLE_READERS
             if (raw_dir / f"table{suffix}").is_file()]
    if len(found) != 1:
        raise DatasetMissingError(f"{raw_dir} must hold exactly one of "
                                  f"{', '.join('table' + s for s in TABLE_READERS)}; found "
                                  f"{[p.name for p in found]}; run the fetch stage (dvc repro fetch)")
    return found[0]


def _load_official(name: str, raw_dir: Path, *, augment: bool,
                   indices: Mapping[str, np.ndarray] | None) -> ClassificationData:
    # Fetch verified the official checksums, and DVC hashes its output, so no second md5 pass.
    if name == "mnist":
        return load_mnist(raw_dir, val_fraction=0, indices=indices)
    return load_cifar10(raw_dir, val_fraction=0, augment=augment, verify_checksums=False,
                        indices=indices)


# -------------------------------------------------------------------------------- manifest


def make_manifest(name: str, raw_dir: str | os.PathLike[str], *, seed: int = 0,
                  fractions: Mapping[str, float] | None = None, val_fraction: float = 0.1,
                  label_column: str = "label") -> Any:
    """One row per sample of the fetched dataset with its split (columns: module doc).

    digits, pmi and a table without a ``split`` column are split per class by ``fractions``
    (default 6:2:2, Section 5.3.2) with ``seed``; a table's own ``split`` column wins. MNIST and
    CIFAR-10 keep the official test set and hold out a seeded stratified ``val_fraction`` of the
    official training set. toy keeps its generated train/val/test. ``fractions`` and
    ``val_fraction`` are ignored where they do not apply. The splits are exactly those the
    loaders of :mod:`pipeline.datasets` draw for the same seed. Every class must appear in every
    split.
    """
    import pandas as pd

    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DatasetError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    inventory = _inventory(name, Path(raw_dir), label_column)
    labels, classes = inventory.labels, inventory.classes
    if name in _PINNED:
        assert inventory.given is not None
        pool = inventory.given["train"]
        carved = carve_validation(labels[pool], val_fraction, seed, classes)
        parts = {k: pool[v] for k, v in carved.items()} | {"test": inventory.given["test"]}
    elif inventory.given is not None:  # toy, or a table with its own split column
        parts = inventory.given
    else:
        parts = stratified_split(labels, check_split_fractions_named(fractions), seed, classes)

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
                  image_size: int | None = None, crop_size: int | None = None) -> ClassificationData:
    """The dataset fetched into ``raw_dir`` with exactly the splits of ``manifest`` (a
    DataFrame or the path of a Parquet manifest).

    Standardisation is the loaders': training-split statistics for digits, tables and PMI
    (computed on the manifest's train split), the usual channel statistics for MNIST/CIFAR-10,
    none for toy; ``normalization`` tells attacks the valid input range. ``augment`` turns the
    training augmentation of CIFAR-10 and PMI on or off. ``image_size``/``crop_size`` are PMI's
    (default 224 and 960, Section 5.3.3). The manifest's class names and labels must match the
    data (else it is stale: re-run the split stage).
    """
    _check_name(name)
    if name != "pmi" and (image_size is not None or crop_size is not None):
        raise DatasetError(f"image_size and crop_size apply to pmi only; got {image_size!r}, "
                           f"{crop_size!r} for {name!r}")
    raw_dir = Path(raw_dir)
    frame = (check_manifest(manifest) if not isinstance(manifest, (str, os.PathLike))
             else read_manifest(manifest))
    classes = manifest_classes(frame)
    if name == "pmi":
        ids = _pmi_positions(raw_dir, frame)
    else:
        ids = frame["sample_id"].to_numpy()
    split_values = frame["split"].to_numpy()
    labels = frame["label"].to_numpy()
    parts, expected = {}, {}
    for split in SPLIT_NAMES:
        mask = split_values == split
        if mask.any():
            order = np.argsort(ids[mask], kind="stable")
            parts[split], expected[split] = ids[mask][order], labels[mask][order]

    if name == "toy":
        data = _toy_data(raw_dir, parts)
    elif name == "digits":
        arrays = _read_npz(raw_dir / "digits.npz")
        data = digits_data(arrays["images"], arrays["target"], parts)
    elif name == "table":
        data = load_table(_table_file(raw_dir), label_column, indices=parts, name="table")
    elif name == "pmi":
        data = load_pmi(raw_dir, indices=parts, augment=augment,
                        image_size=224 if image_size is None else image_size,
                        crop_size=960 if crop_size is None else crop_size)
    else:
        data = _official_with_test(name, raw_dir, parts, augment)

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


def _toy_data(raw_dir: Path, parts: Mapping[str, np.ndarray]) -> ClassificationData:
    arrays = _read_npz(raw_dir / "toy.npz")
    x = torch.from_numpy(np.concatenate([arrays[f"x_{k}"] for k in SPLIT_NAMES]))
    y = torch.from_numpy(np.concatenate([arrays[f"y_{k}"] for k in SPLIT_NAMES]).astype(np.int64))
    parts = check_indices(parts, y.shape[0], f"{raw_dir / 'toy.npz'}")
    return ClassificationData(name="toy", classes=_read_classes_json(raw_dir),
                              splits={k: ArrayDataset(x[v], y[v]) for k, v in parts.items()},
                              input_shape=(2,), metadata={"raw_dir": os.fspath(raw_dir)})


def _official_with_test(name: str, raw_dir: Path, parts: Mapping[str, np.ndarray],
                        augment: bool) -> ClassificationData:
    """MNIST/CIFAR-10 with the manifest's train/val rows; its test split must be the official
    test set, which follows the official training set in sample_id order."""
    data = _load_official(name, raw_dir, augment=augment,
                          indices={k: v for k, v in parts.items() if k != "test"})
    n_train = len(data.splits["train"].dataset)
    official_test = n_train + np.arange(len(data.splits["test"]))
    if not np.array_equal(parts.get("test", np.empty(0, dtype=np.int64)), official_test):
        raise DatasetError(f"the manifest's test split must be the official {name} test set "
                           f"(sample_id {n_train}..{n_train + official_test.shape[0] - 1}); "
                           f"re-run the split stage (dvc repro split)")
    return data


def _pmi_positions(raw_dir: Path, frame: Any) -> np.ndarray:
    """Each manifest row's position in the sorted image list of ``raw_dir`` (by its path)."""
    inventory = _inventory("pmi", raw_dir, "label")
    assert inventory.paths is not None
    position = {p: i for i, p in enumerate(inventory.paths)}
    paths = frame["path"].tolist()
    absent = [p for p in paths if p not in position]
    if absent:
        raise DatasetError(f"{len(absent)} manifest image(s) are not in {raw_dir}, e.g. "
                           f"{absent[:3]}; re-run the split stage (dvc repro split)")
    return np.array([position[p] for p in paths], dtype=np.int64)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
