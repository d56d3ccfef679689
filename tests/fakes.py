"""Tiny stand-ins for the datasets' files (MNIST idx, CIFAR-10 pickles, PMI pill photos), and a
damaged copy of a checkpoint.

Shared by tests/test_datasets.py and tests/test_prepare.py (the checkpoint by the tests of
checksums); everything is generated from fixed seeds, so the same call writes the same bytes.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
# NDC -> (number of images, pill colour): 10, 7 and 5 images split 6:2:2 as 6/2/2, 4/2/1, 3/1/1.
NDCS = {"50111-0434": (10, (200, 40, 40)), "57664-0377": (7, (40, 160, 60)),
        "65162-0253": (5, (230, 230, 210))}


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's idx format: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist_arrays(per_class: int = 3, test: int = 5) -> dict[str, np.ndarray]:
    """MNIST's four arrays: ``per_class`` training images per digit, ``test`` test images
    labelled 0, 1, ..., 9, 0, ..."""
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (10 * per_class, 28, 28)),
        "train-labels-idx1-ubyte": np.tile(np.arange(10), per_class),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(test) % 10,
    }


def write_fake_mnist(root: Path, per_class: int = 3, test: int = 5, *, layout: bool = True,
                     gz: bool = True) -> dict[str, np.ndarray]:
    """Write :func:`fake_mnist_arrays` to ``root/MNIST/raw`` (``layout``) or ``root`` itself,
    gzipped as downloaded (``gz``) or not; returns the arrays."""
    arrays = fake_mnist_arrays(per_class, test)
    raw = root / "MNIST" / "raw" if layout else root
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (raw / name).write_bytes(data)
    return arrays


def cifar_payloads() -> dict[str, bytes]:
    """Ten images per batch (one per class) in CIFAR's pickled (N, 3072) channel-major layout."""
    rng = np.random.default_rng(1)
    payloads = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10, 3072)).astype(np.uint8),
                 "labels": list(range(10))}
        payloads[name] = pickle.dumps(batch, protocol=2)
    payloads["batches.meta"] = pickle.dumps({"label_names": CIFAR_NAMES}, protocol=2)
    return payloads


def write_fake_cifar(folder: Path) -> Path:
    """The fake batches as files in ``folder`` (e.g. ``<root>/cifar-10-batches-py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in cifar_payloads().items():
        (folder / name).write_bytes(payload)
    return folder


def write_fake_cifar_archive(path: Path) -> Path:
    """The fake batches as ``cifar-10-batches-py/<name>`` members of a .tar.gz at ``path``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in cifar_payloads().items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def pill_image(rng: np.random.Generator, colour: tuple[int, int, int], size=(40, 36)):
    """A PIL image of one coloured ellipse on a random dark background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(20, 90, 3)))
    x, y = rng.integers(2, 16), rng.integers(2, 12)
    ImageDraw.Draw(image).ellipse([x, y, x + rng.integers(8, 20), y + rng.integers(5, 12)],
                                  fill=colour)
    return image


def write_pill_tree(root: Path, ndcs: dict = NDCS) -> Path:
    """An ImageFolder tree ``root/<NDC>/img_<i>.png`` of :func:`pill_image` photos."""
    rng = np.random.default_rng(0)
    for ndc, (count, colour) in ndcs.items():
        (root / ndc).mkdir(parents=True)
        for i in range(count):
            pill_image(rng, colour).save(root / ndc / f"img_{i:03d}.png")
    return root


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    """An 8x8 PNG of one colour."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def flip_bit_in_tensor(saved: bytes, tensor: Tensor, index: int = 0) -> bytes:
    """``saved`` (a ``torch.save``d file holding ``tensor``) with the lowest bit of the tensor's
    element ``index`` flipped, found by the tensor's bytes: still a file ``torch.load`` reads."""
    raw = tensor.detach().contiguous().numpy().tobytes()
    at = saved.find(raw)
    assert at >= 0, "the tensor's bytes are not in the file"
    damaged = bytearray(saved)
    damaged[at + index * tensor.element_size()] ^= 0x01  # little-endian: the lowest mantissa bit
    return bytes(damaged)
