"""What the fetch stage checks of ``data.source`` before the data set's own fetch reads it.

Three inputs that the readers would take wrongly, silently or with the wrong advice:

* a source that is missing but tracked by DVC (``<source>.dvc`` beside it): ``dvc pull`` brings
  it, or the ``desc`` of that ``.dvc`` file says how to make it;
* an ``.npz`` that is not an archive (a text file, say), where numpy would advise loading it
  unsafely, with pickle;
* images with more than 8 bits per pixel (16-bit PNG or TIFF, 32-bit integer or float images):
  image folders are read as 8-bit pixels, and Pillow's conversion clips every value above 255 to
  white. The right 8-bit scale depends on the data (a 12-bit sensor's 0..4095 or the full
  0..65535), which only its owner knows, so such images are refused, not rescaled.

These checks live apart from the readers (:mod:`pipeline.datasets.images`,
:mod:`~pipeline.datasets.image_folders`, :mod:`~pipeline.datasets.prepare`) because the readers are
training code: every statement there is part of each training run's key, so a change there would
train every run again.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipeline.datasets import DatasetError, DatasetMissingError, dataset_adapter
from pipeline.datasets.image_folders import IMAGE_EXTENSIONS

# How an .npz (a zip archive of .npy files, np.savez) or a lone .npy array begins.
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"  # a single array: the images reader explains that one itself


def check_source(dataset: str, source: str | os.PathLike[str] | None) -> None:
    """Refuse a ``data.source`` that ``dataset`` would misread (module doc); a data set that
    ignores ``data.source`` (toy, digits) is not checked."""
    if source is None or not dataset_adapter(dataset).uses_source:
        return
    path = Path(source)
    if not path.exists():
        raise DatasetMissingError(missing_source(path))
    if path.is_file() and path.suffix.lower() == ".npz":
        check_npz_archive(path)
    elif path.is_dir():
        check_pixel_depth(path)


def missing_source(path: Path) -> str:
    """What to do about a ``data.source`` that is not there: pull or make it when DVC tracks it."""
    tracked = path.with_name(f"{path.name}.dvc")
    if not tracked.is_file():
        return f"data.source {path} does not exist; fix data.source in params.yaml"
    how = _description(tracked)
    return (f"data.source {path} is not in this checkout; DVC tracks it ({tracked}): `dvc pull {path}` "
            f"fetches it from the project's remote" + (f", or {how}" if how else ""))


def _description(dvc_file: Path) -> str | None:
    """The ``desc`` DVC keeps for the file a ``.dvc`` file tracks, if any."""
    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    desc = outs[0].get("desc") if isinstance(outs[0], dict) else None
    return " ".join(desc.split()) if isinstance(desc, str) and desc.strip() else None


def check_npz_archive(path: Path) -> None:
    """Refuse an ``.npz`` that is neither a zip archive of arrays nor a single ``.npy`` array."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(ARCHIVE_MAGIC) or head.startswith(NPY_MAGIC):
        return
    raise DatasetError(f"data.source {path} is not an .npz archive: it is {_what(head)}; an .npz is the zip "
                       f"of arrays np.savez writes: np.savez('{path.name}', x=images, y=labels)")


def _what(head: bytes) -> str:
    if not head:
        return "empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of another format"
    first = text.splitlines()[0] if text.strip() else text
    return f"text (starting {first[:30]!r})"


def deep_mode(mode: str) -> str | None:
    """How a Pillow mode's pixels exceed 8 bits ("16-bit", ...), or None for 8-bit modes."""
    if mode.startswith("I;16"):
        return "16-bit"
    if mode.startswith("I"):
        return "32-bit integer"
    if mode == "F":
        return "32-bit float"
    return None


def check_pixel_depth(folder: Path) -> None:
    """Refuse a folder holding images of more than 8 bits per pixel (module doc); hidden folders,
    which hold no classes, and unreadable files, which the reader names, are passed over."""
    from PIL import Image

    deep: list[tuple[Path, str]] = []
    count = 0
    for path in sorted(folder.rglob("*")):  # one header each: a loop over files is the work itself
        rel = path.relative_to(folder).parts
        if path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in rel) or not path.is_file():
            continue
        count += 1
        try:
            with Image.open(path) as image:
                depth = deep_mode(image.mode)
                mode = image.mode
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
        if depth is not None:
            deep.append((path, f"a {depth} image (Pillow mode {mode})"))
    if deep:
        first, what = deep[0]
        more = f", one of {len(deep)} such images among the {count} under {folder}" if len(deep) > 1 else ""
        raise DatasetError(f"{first} is {what}{more}; images are read as 8-bit pixels, which would clip "
                           f"every value above 255 to white: convert them to 8-bit first, scaled to fit the "
                           f"data (the full 16-bit range: pixel // 257; 12-bit data: pixel // 16)")
