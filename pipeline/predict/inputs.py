"""What a predictor reads: arrays of images (or feature vectors), image files, ``.npz`` archives
and folders of images, each checked against the model's input geometry.

Pixels are read as the data sets read them (:mod:`pipeline.datasets.images`): integers 0..255
(uint8) or floats in [0, 1]; an image is (H, W) or (C, H, W), channels first, or (H, W, C),
channels last; a batch adds the first axis. An image file is decoded with PIL to the model's
channels (grey 'L' for one channel, 'RGB' for three) and must have the model's height and width:
nothing is resized, so the pixels are those the model was trained on. Feature vectors (toy,
table) are floats, used as they are before the model's standardisation.

Every problem is one :class:`InputError` line naming the file or array and what would be valid.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.image_folders import IMAGE_EXTENSIONS
from pipeline.errors import UserError

NPZ_KEYS = ("x", "y", "classes")
PIXEL_RANGE = (0.0, 1.0)


class InputError(UserError):
    """Input that does not fit the model: unreadable, or of the wrong geometry or values."""


def _expected(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"(N, {shape[0]}) feature vectors"
    c, h, w = shape
    grey = f" or (N, {h}, {w})" if c == 1 else ""
    return f"(N, {c}, {h}, {w}) channels first, (N, {h}, {w}, {c}) channels last{grey}"


def batch_layout(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``array`` as (N, *shape): channels moved first, a grey image's channel axis added."""
    if array.ndim >= 1 and array.shape[0] == 0:
        raise InputError(f"{what} holds no images")
    if array.shape[1:] == shape:
        return array
    if len(shape) == 3:
        c, h, w = shape
        if array.ndim == 4 and array.shape[1:] == (h, w, c):
            return array.transpose(0, 3, 1, 2)
        if array.ndim == 3 and c == 1 and array.shape[1:] == (h, w):
            return array[:, None]
    raise InputError(f"{what} has shape {tuple(array.shape)}; the model takes {_expected(shape)}")


def raw_values(array: Any, shape: tuple[int, ...], raw_range: tuple[float, float] | None,
               what: str = "the images") -> np.ndarray:
    """A batch as float64 (N, *shape) in raw units: pixels in [0, 1] (uint8 divided by 255), or
    feature values as given (``raw_range`` None: no range to check)."""
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == bool or array.dtype.kind not in "uif":
        raise InputError(f"{what} have dtype {array.dtype}; pixels are integers 0..255 (uint8) or floats in [0, 1]")
    array = batch_layout(array, shape, what)
    pixels = len(shape) == 3 and raw_range == PIXEL_RANGE
    if array.dtype.kind in "ui" and pixels:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InputError(f"{what}: integer pixels must be 0..255; got min {low}, max {high}")
        return array.astype(np.float64) / 255.0
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"{what} hold NaN or infinite values")
    if raw_range is not None:
        low, high = float(values.min()), float(values.max())
        if low < raw_range[0] or high > raw_range[1]:
            hint = " (divide 0..255 pixels by 255, or pass them as uint8)" if pixels else ""
            raise InputError(f"{what}: float values must lie in [{raw_range[0]:g}, {raw_range[1]:g}]; got min "
                             f"{low:g}, max {high:g}{hint}")
    return values


def decode_image(data: bytes | str | os.PathLike[str], shape: tuple[int, ...], what: str) -> np.ndarray:
    """One image file (its bytes or its path) as uint8 (C, H, W) of the model's geometry."""
    from PIL import Image

    if len(shape) != 3:
        raise InputError(f"{what}: the model takes feature vectors {_expected(shape)}, not image files; pass an "
                         ".npz holding x")
    c, h, w = shape
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            if image.size != (w, h):
                raise InputError(f"{what} is {image.size[0]}x{image.size[1]} pixels (width x height); the model "
                                 f"takes {w}x{h}: resize it as the training images were")
            pixels = np.array(image.convert("L" if c == 1 else "RGB"), dtype=np.uint8).reshape(h, w, c)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"cannot read image {what} ({error})") from None
    return pixels.transpose(2, 0, 1)


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, at any depth (hidden folders skipped), sorted by path."""
    found = [Path(top) / name for top, dirs, names in os.walk(folder)
             for name in names if Path(name).suffix.lower() in IMAGE_EXTENSIONS
             if not any(part.startswith(".") for part in Path(top).relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


@dataclass(frozen=True)
class Inputs:
    """What the CLI scores: ``sources`` names each item (``file.npz[i]`` or a path relative to the
    folder given); ``array`` holds an archive's images, ``files`` the image files (one or the other);
    ``labels`` are class indices when the archive has ``y``."""

    sources: list[str]
    array: np.ndarray | None = None
    files: list[Path] | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sources)


def read_npz(path: Path, shape: tuple[int, ...], classes: Sequence[str]) -> Inputs:
    """An ``.npz`` with ``x`` (the images), optionally ``y`` (class indices into the model's classes)
    and ``classes`` (which must then be the model's, in its order)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise InputError(f"{path} holds one array, not an .npz archive; save it with np.savez(path, x=images)")
            arrays = {k: npz[k] for k in npz.files}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read {path} as an .npz archive of arrays ({error})") from None
    if "x" not in arrays or set(arrays) - set(NPZ_KEYS):
        raise InputError(f"{path} has keys {sorted(arrays)}; it needs x (the images) and may have y (the labels) "
                         "and classes, nothing else")
    x = arrays["x"]
    batch_layout(x, shape, f"{path}: x")  # the geometry is checked before anything is scored
    labels = None
    if "classes" in arrays and [str(c) for c in arrays["classes"]] != list(classes):
        raise InputError(f"{path}: classes {[str(c) for c in arrays['classes']]} are not the model's {list(classes)}")
    if "y" in arrays:
        y = arrays["y"]
        if y.shape != (x.shape[0],) or y.dtype.kind not in "ui" or y.min() < 0 or y.max() >= len(classes):
            raise InputError(f"{path}: y must hold one class index in 0..{len(classes) - 1} per image of x "
                             f"(label k names class {classes[0]!r} for k = 0, ...); got dtype {y.dtype}, shape {y.shape}")
        labels = y.astype(np.int64)
    return Inputs(sources=[f"{path.name}[{i}]" for i in range(x.shape[0])], array=x, labels=labels)


def open_inputs(path: str | os.PathLike[str], shape: tuple[int, ...], classes: Sequence[str]) -> Inputs:
    """An ``.npz``, an image file or a folder of images (searched at any depth), checked."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist; give an .npz, an image file or a folder of images")
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise InputError(f"{path} holds no image file ({', '.join(IMAGE_EXTENSIONS)}) at any depth")
        return Inputs(sources=[f.relative_to(path).as_posix() for f in files], files=files)
    if path.suffix.lower() == ".npz":
        return read_npz(path, shape, classes)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return Inputs(sources=[path.name], files=[path])
    raise InputError(f"input {path} is neither an .npz, an image file ({', '.join(IMAGE_EXTENSIONS)}) nor a folder")
