"""Dataset loaders returning one common :class:`ClassificationData`, and a registry of them.

Heavy libraries (torchvision, PIL, pandas, scikit-learn) are imported inside the loaders that use
them, so importing this package costs only numpy and torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .common import (ArrayDataset, ClassificationData, DatasetError, DatasetMissingError,
                     Normalization, TransformedSubset, dataset_labels, stratified_split)
from .digits import load_digits
from .pmi import PMI_DATASET_URL, fetch_pmi, load_pmi
from .tables import load_table
from .toy import TOY_CLASSES, TOY_COVARIANCE, TOY_MEANS, load_toy
from .vision import load_cifar10, load_mnist

DATASETS: dict[str, Callable[..., ClassificationData]] = {
    "toy": load_toy,
    "digits": load_digits,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "pmi": load_pmi,
    "table": load_table,
}


def load_dataset(name: str, **kwargs: Any) -> ClassificationData:
    """``DATASETS[name](**kwargs)``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)


__all__ = [
    "ArrayDataset", "ClassificationData", "DATASETS", "DatasetError", "DatasetMissingError",
    "Normalization", "PMI_DATASET_URL", "TOY_CLASSES", "TOY_COVARIANCE", "TOY_MEANS",
    "TransformedSubset", "dataset_labels", "fetch_pmi", "load_cifar10", "load_dataset",
    "load_digits", "load_mnist", "load_pmi", "load_table", "load_toy", "stratified_split",
]
