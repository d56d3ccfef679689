"""Atomic file writes: readers never see a half-written file, a crash leaves no partial output."""

from __future__ import annotations

import os
import shutil


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(staging: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Put the finished folder ``staging`` at ``destination``, replacing what was there."""
    destination = os.fspath(destination)
    if os.path.exists(destination):
        shutil.rmtree(destination)
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    os.replace(staging, destination)


def fresh_dir(path: str | os.PathLike[str]) -> str:
    """An empty folder at ``path`` (anything left there by an interrupted run is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return os.fspath(path)
