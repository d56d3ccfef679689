"""scikit-learn's bundled 8x8 handwritten digits: the offline default dataset (no download)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapter import (
    DatasetAdapter,
    FetchRequest,
    Inventory,
    no_options,
    read_npz,
    write_npz,
)
from .common import (
    ArrayDataset,
    ClassificationData,
    DatasetError,
    Normalization,
    check_indices,
    check_split_fractions_named,
    stratified_split,
    train_mean_std,
)

DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
_DIGITS_MAX = 16.0  # sklearn's digits are counts 0..16 of set pixels in 4x4 blocks


def load_digits(*, seed: int = 0, fractions: Mapping[str, float] | None = None) -> ClassificationData:
    """1797 images of shape (1, 8, 8), split 6:2:2 per class (the ratio of Section 5.3.2).

    Pixels are scaled to [0, 1], then standardised with one mean and std (the digits have a single
    channel) computed on the training split only, so val/test carry no information into the
    inputs. ``normalization.clamp_min/clamp_max`` are the standardised values of pixels 0 and 1.
    """
    images, targets = digits_arrays()
    parts = stratified_split(targets, check_split_fractions_named(fractions), seed, DIGITS_CLASSES)
    return digits_data(images, targets, parts, metadata={"seed": seed})


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's raw digits: images (1797, 8, 8) of counts 0..16 as uint8, int64 targets."""
    from sklearn.datasets import (
        load_digits as sklearn_digits,  # bundled with sklearn, no network
    )

    bunch = sklearn_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)


def digits_data(images: np.ndarray, targets: np.ndarray,
                parts: Mapping[str, np.ndarray], *,
                metadata: Mapping[str, Any] | None = None) -> ClassificationData:
    """Raw digit images (counts 0..16) and targets as splits ``parts`` (split -> row indices).

    The standardisation of :func:`load_digits`; ``parts`` may come from a manifest.
    """
    images = np.asarray(images)
    targets = np.asarray(targets, dtype=np.int64)
    if images.ndim != 3 or images.shape[1:] != (8, 8) or images.shape[0] != targets.shape[0]:
        raise DatasetError(f"digits need images (N, 8, 8) and N targets; got {images.shape} "
                           f"and {targets.shape}")
    parts = check_indices(parts, targets.shape[0], "digits")
    pixels = images.astype(np.float64) / _DIGITS_MAX
    mean, std = train_mean_std(pixels[parts["train"]], axis=None)
    x = torch.from_numpy(((pixels - mean) / std).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(targets)
    splits = {k: ArrayDataset(x[idx], y[idx]) for k, idx in parts.items()}
    return ClassificationData(
        name="digits", classes=list(DIGITS_CLASSES), splits=splits, input_shape=(1, 8, 8),
        normalization=Normalization(mean=(float(mean),), std=(float(std),), raw_range=(0.0, 1.0)),
        metadata={**(metadata or {}), "indices": {k: v.tolist() for k, v in parts.items()}})


class DigitsAdapter(DatasetAdapter):
    """``digits.npz``: scikit-learn's ``images`` (N, 8, 8) as raw counts 0..16 and ``target``."""

    name = "digits"
    uses_source = False
    loader = staticmethod(load_digits)

    def fetch(self, request: FetchRequest, work: Path) -> dict[str, Any]:
        images, target = digits_arrays()
        write_npz(work / "digits.npz", {"images": images, "target": target})
        return {}

    def inventory(self, raw_dir: Path, label_column: str) -> Inventory:
        return Inventory(list(DIGITS_CLASSES), read_npz(raw_dir / "digits.npz")["target"].astype(np.int64))

    def load(self, raw_dir: Path, parts: Mapping[str, np.ndarray], *, augment: bool,
             label_column: str, **options: Any) -> ClassificationData:
        no_options(self.name, options)
        arrays = read_npz(raw_dir / "digits.npz")
        return digits_data(arrays["images"], arrays["target"], parts)
