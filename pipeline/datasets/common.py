"""The object every loader returns, the seeded stratified splitter, and the dataset errors.

A loader turns files (or a generator) into a :class:`ClassificationData`: class names, a dict of
split name -> ``torch.utils.data.Dataset`` whose items are ``(x: FloatTensor, y: int)``, the shape
of one ``x``, and, where inputs were standardised, the :class:`Normalization` that maps the raw
valid range (e.g. pixels in [0, 1]) to the model's input units so an attack can clamp to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}


class DatasetError(UserError):
    """Bad dataset input: a malformed file, an invalid option, a class too small to split."""


class DatasetMissingError(DatasetError):
    """The dataset's files are not where the loader looks; the message says what to put where."""


class ArrayDataset(Dataset):
    """An in-memory dataset of a float tensor ``x`` (N, ...) and integer labels ``y`` (N,).

    Training on small data (toy, digits, tables) slices ``.x`` and ``.y`` in whole batches rather
    than going through a DataLoader item by item.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DatasetError(f"x must be a floating-point tensor, got {type(x).__name__} "
                               f"{getattr(x, 'dtype', '')}".rstrip())
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise DatasetError(f"y must be an integer tensor, got {type(y).__name__} "
                               f"{getattr(y, 'dtype', '')}".rstrip())
        if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
            raise DatasetError(f"x and y must have the same first dimension and y must be 1-D; "
                               f"got x {tuple(x.shape)}, y {tuple(y.shape)}")
        self.x = x
        self.y = y.long()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, x_shape={tuple(self.x.shape[1:])})"


class TransformedSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the input.

    One decoded base dataset serves several splits with different transforms (augmentation on
    train only), instead of loading the files once per split.
    """

    def __init__(self, base: Dataset, indices: np.ndarray | Sequence[int],
                 transform: Callable[[Any], torch.Tensor] | None) -> None:
        self.dataset = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x, y = self.dataset[int(self.indices[index])]
        return (self.transform(x) if self.transform is not None else x), int(y)

    def __repr__(self) -> str:
        return f"TransformedSubset(n={len(self)}, of={type(self.dataset).__name__})"


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Integer labels of ``dataset`` as an int64 array, without decoding inputs where possible."""
    if isinstance(dataset, ArrayDataset):
        return dataset.y.numpy()
    if isinstance(dataset, (TransformedSubset, torch.utils.data.Subset)):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:  # torchvision datasets (MNIST, CIFAR10, ImageFolder) keep their targets
        return np.asarray(targets, dtype=np.int64)
    # Last resort for a foreign dataset: this decodes every input.
    return np.fromiter((int(dataset[i][1]) for i in range(len(dataset))), dtype=np.int64,
                       count=len(dataset))


@dataclass(frozen=True)
class Normalization:
    """Per-channel (images) or per-feature (tables) standardisation ``(raw - mean) / std``.

    ``mean``/``std`` index the first axis of one input. ``raw_range`` is the valid range of raw
    values (pixels are in [0, 1] after ``ToTensor``); None where inputs are unbounded (tables).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    raw_range: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise DatasetError(f"mean and std need the same non-zero length; got {len(self.mean)} "
                               f"and {len(self.std)}")
        if not all(s > 0 for s in self.std):
            raise DatasetError(f"every std must be > 0; got {self.std}")

    def _standardised(self, raw: float) -> tuple[float, ...]:
        return tuple((raw - m) / s for m, s in zip(self.mean, self.std))

    @property
    def clamp_min(self) -> tuple[float, ...] | None:
        """Standardised value of the smallest raw value, per channel (None if unbounded)."""
        return None if self.raw_range is None else self._standardised(self.raw_range[0])

    @property
    def clamp_max(self) -> tuple[float, ...] | None:
        """Standardised value of the largest raw value, per channel (None if unbounded)."""
        return None if self.raw_range is None else self._standardised(self.raw_range[1])

    def bounds(self, ndim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(low, high)`` tensors of shape (C, 1, ..., 1) with ``ndim`` axes, for ``torch.clamp``."""
        if self.clamp_min is None or self.clamp_max is None:
            return None
        shape = (len(self.mean),) + (1,) * (ndim - 1)
        return (torch.tensor(self.clamp_min, dtype=torch.float32).reshape(shape),
                torch.tensor(self.clamp_max, dtype=torch.float32).reshape(shape))


@dataclass(frozen=True)
class ClassificationData:
    """A classification dataset: class names, splits of ``(x, y)`` items, the shape of one ``x``."""

    name: str
    classes: list[str]
    splits: dict[str, Dataset]
    input_shape: tuple[int, ...]
    normalization: Normalization | None = None
    # Loader-specific facts worth recording next to a run (feature names, source path, seed).
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.splits) - set(SPLIT_NAMES))
        if unknown:
            raise DatasetError(f"unknown split name(s) {unknown}; valid: {', '.join(SPLIT_NAMES)}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"classes must be non-empty and unique; got {self.classes}")
        if not self.input_shape or not all(isinstance(d, int) and d > 0 for d in self.input_shape):
            raise DatasetError(f"input_shape must be positive ints; got {self.input_shape}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Dataset:
        if name not in self.splits:
            raise DatasetError(f"dataset {self.name!r} has no split {name!r}; "
                               f"available: {', '.join(self.splits) or 'none'}")
        return self.splits[name]

    def labels(self, split: str) -> np.ndarray:
        """Integer labels (int64) of one split, without decoding images where the dataset can."""
        return dataset_labels(self.split(split))

    def input_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Valid input range in model units, broadcastable to one input; None if unbounded."""
        if self.normalization is None:
            return None
        return self.normalization.bounds(len(self.input_shape))


def stratified_split(labels: np.ndarray | Sequence[int], fractions: Mapping[str, float] | None = None,
                     seed: int = 0, class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Split sample indices into named parts with the same class proportions in each part.

    Per class (in sorted label order, one ``np.random.default_rng(seed)`` for all), the class's
    indices are shuffled and cut into parts of ``floor(n * fraction)`` samples, the leftover samples
    going to the parts with the largest fractional remainders (ties: earlier part). A part left
    empty takes one sample from the largest part, so every class with at least as many samples as
    parts appears in every part. Returned indices are sorted ascending within each part.
    ``class_names[label]`` only names a class in error messages.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not fractions:
        raise DatasetError("fractions must name at least one split")
    bad = {k: v for k, v in fractions.items() if not (isinstance(v, (int, float)) and v > 0)}
    if bad:
        raise DatasetError(f"split fractions must be positive numbers; got {bad}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must sum to 1; got {fractions} (sum {total:g})")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D; got shape {labels.shape}")

    names = list(fractions)
    frac = np.array([fractions[k] for k in names], dtype=np.float64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    too_small = counts < len(names)
    if too_small.any():
        which = [(_class_label(classes[i], class_names), int(counts[i]))
                 for i in np.flatnonzero(too_small)]
        listed = ", ".join(f"class {c!r} has {n}" for c, n in which)
        raise DatasetError(f"cannot split into {len(names)} parts ({', '.join(names)}) with every "
                           f"class in each: {listed} sample(s); each class needs >= {len(names)}")

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    order = np.argsort(inverse, kind="stable")  # indices grouped by class, ascending within
    starts = np.concatenate([[0], np.cumsum(counts)])
    for c in range(len(classes)):
        members = rng.permutation(order[starts[c]:starts[c + 1]])
        sizes = _part_sizes(int(counts[c]), frac)
        for name, chunk in zip(names, np.split(members, np.cumsum(sizes)[:-1])):
            parts[name].append(chunk)
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def _part_sizes(n: int, frac: np.ndarray) -> np.ndarray:
    """Largest-remainder sizes of ``n`` items over ``frac``, none empty (requires n >= len(frac))."""
    exact = n * frac
    sizes = np.floor(exact).astype(np.int64)
    leftover = n - int(sizes.sum())
    # Stable sort on the negated remainder: largest remainder first, earlier part wins a tie.
    sizes[np.argsort(-(exact - sizes), kind="stable")[:leftover]] += 1
    while (sizes == 0).any():
        sizes[int(np.argmax(sizes))] -= 1
        sizes[int(np.flatnonzero(sizes == 0)[0])] += 1
    return sizes


def _class_label(label: Any, class_names: Sequence[str] | None) -> Any:
    if class_names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(class_names):
        return class_names[int(label)]
    return label.item() if isinstance(label, np.generic) else label


def train_mean_std(x_train: np.ndarray, axis: int | tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the training inputs over ``axis`` (float64).

    A constant feature (std 0) gets std 1, so standardising it leaves it at 0 instead of NaN.
    """
    x64 = np.asarray(x_train, dtype=np.float64)
    mean = x64.mean(axis=axis)
    std = x64.std(axis=axis)
    return mean, np.where(std > 0, std, 1.0)


def check_split_fractions_named(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """``fractions`` (default 6:2:2) after checking that every key is a known split name."""
    out = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    unknown = sorted(set(out) - set(SPLIT_NAMES))
    if unknown or "train" not in out:
        raise DatasetError(f"split fractions must include 'train' and use only "
                           f"{', '.join(SPLIT_NAMES)}; got {sorted(out)}")
    return out


def check_indices(indices: Mapping[str, Sequence[int] | np.ndarray], n: int, what: str,
                  allowed: Sequence[str] = SPLIT_NAMES) -> dict[str, np.ndarray]:
    """Given split indices (e.g. from a manifest) as int64 arrays, in ``allowed`` order.

    Every key must be one of ``allowed`` and "train" must be present; every index must lie in
    ``[0, n)`` and belong to one split only (a sample in two splits would leak between them).
    ``what`` names the data in error messages.
    """
    unknown = sorted(set(indices) - set(allowed))
    if unknown or "train" not in indices:
        raise DatasetError(f"indices for {what} must include 'train' and use only "
                           f"{', '.join(allowed)}; got {sorted(indices)}")
    parts: dict[str, np.ndarray] = {}
    for key in (k for k in allowed if k in indices):
        idx = np.asarray(indices[key])
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise DatasetError(f"indices[{key!r}] for {what} must be a 1-D sequence of ints; "
                               f"got dtype {idx.dtype}, shape {idx.shape}")
        outside = idx[(idx < 0) | (idx >= n)]
        if outside.size:
            raise DatasetError(f"indices[{key!r}] for {what} must lie in [0, {n}); got "
                               f"{outside[:5].tolist()}{' ...' if outside.size > 5 else ''}")
        parts[key] = idx.astype(np.int64)
    together = np.concatenate(list(parts.values()))
    values, counts = np.unique(together, return_counts=True)
    if (counts > 1).any():
        repeated = values[counts > 1]
        raise DatasetError(f"indices for {what} repeat sample(s) {repeated[:5].tolist()}"
                           f"{' ...' if repeated.size > 5 else ''}; each sample belongs to one split")
    return parts
