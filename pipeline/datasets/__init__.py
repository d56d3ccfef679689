"""Datasets: one module each, behind one adapter interface, found by name in :data:`DATASETS`.

Every loader returns the common :class:`ClassificationData`. Each module's adapter
(:class:`~pipeline.datasets.adapter.DatasetAdapter`) owns the dataset's fetch, its inventory and
its load, so the pipeline (:mod:`pipeline.datasets.prepare`) never branches on a dataset's name. Adding a
dataset is one new module and one line below.

Heavy libraries (torchvision, PIL, pandas, scikit-learn) are imported inside the loaders that use
them, so importing this package costs only numpy and torch.
"""

from __future__ import annotations

from typing import Any

from .adapter import DatasetAdapter
from .cifar10 import Cifar10Adapter, load_cifar10
from .common import (
    ArrayDataset,
    ClassificationData,
    DatasetError,
    DatasetMissingError,
    Normalization,
    TransformedSubset,
    dataset_labels,
    stratified_split,
)
from .digits import DigitsAdapter, load_digits
from .images import ImagesAdapter, load_images
from .mnist import MnistAdapter, load_mnist
from .pmi import PMI_DATASET_URL, PmiAdapter, fetch_pmi, load_pmi
from .tables import TableAdapter, load_table
from .toy import TOY_CLASSES, TOY_COVARIANCE, TOY_MEANS, ToyAdapter, load_toy

DATASETS: dict[str, DatasetAdapter] = {
    "toy": ToyAdapter(),
    "digits": DigitsAdapter(),
    "mnist": MnistAdapter(),
    "cifar10": Cifar10Adapter(),
    "pmi": PmiAdapter(),
    "table": TableAdapter(),
    "images": ImagesAdapter(),
}


def dataset_adapter(name: str) -> DatasetAdapter:
    """``DATASETS[name]``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_dataset(name: str, **kwargs: Any) -> ClassificationData:
    """The standalone loader of dataset ``name`` (no fetch or manifest), e.g. ``load_dataset("toy")``."""
    return dataset_adapter(name).loader(**kwargs)


__all__ = [
    "ArrayDataset", "ClassificationData", "DATASETS", "DatasetAdapter", "DatasetError",
    "DatasetMissingError", "Normalization", "PMI_DATASET_URL", "TOY_CLASSES", "TOY_COVARIANCE",
    "TOY_MEANS", "TransformedSubset", "dataset_adapter", "dataset_labels", "fetch_pmi",
    "load_cifar10", "load_dataset", "load_digits", "load_images", "load_mnist", "load_pmi", "load_table",
    "load_toy", "stratified_split",
]
