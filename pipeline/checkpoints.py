"""Checkpoint I/O: plain dictionaries of tensors and values, and each run's folder of them.

A checkpoint holds state dicts, the epoch, the history and the job it was trained for; it is
written atomically and read with ``weights_only=True`` (never code). A :class:`RunStore` is one
training run's folder under ``ray.storage_path``, a local folder or an ``s3://`` URI (pyarrow's
file systems, as Ray uses)::

    <storage>/<run name>/checkpoint.pt           the latest state: a restarted run resumes here
    <storage>/<run name>/outcome/model.pt        once finished: the selected epoch's weights
    <storage>/<run name>/outcome/history.json    once finished: every epoch's metrics

The outcome is written last, history after model, so a run whose ``history.json`` exists has
finished and is reused instead of trained again.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.fileio import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
OUTCOME_DIR = "outcome"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file."""


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes, where: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's dict (``weights_only``: tensors and plain values, never code)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or not a torch file at all
        raise CheckpointError(f"checkpoint {where} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {where} holds no model state dict")
    return state


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, checkpoint_bytes(state))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return state_from_bytes(path.read_bytes(), path)


def load_model_state(model: nn.Module, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit model {type(model).__name__}: {first}") from None


class RunStore:
    """One run's folder (module doc) on a local path or an ``s3://`` URI."""

    def __init__(self, location: str) -> None:
        from pyarrow import fs

        self.location = location
        if "://" in location:
            self._fs, self._root = fs.FileSystem.from_uri(location)
        else:
            self._fs, self._root = fs.LocalFileSystem(), str(Path(location).resolve())

    def _path(self, *parts: str) -> str:
        return "/".join([self._root.rstrip("/"), *parts])

    def _exists(self, *parts: str) -> bool:
        from pyarrow import fs

        return self._fs.get_file_info(self._path(*parts)).type == fs.FileType.File

    def _read(self, *parts: str) -> bytes:
        with self._fs.open_input_stream(self._path(*parts)) as stream:
            return stream.read()

    def _write(self, data: bytes, *parts: str) -> None:
        """Whole or not at all: write a temporary file beside the target, then move it there."""
        target = self._path(*parts)
        self._fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        temporary = f"{target}.{uuid.uuid4().hex}.partial"
        with self._fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self._fs.move(temporary, target)

    def read_json(self, name: str) -> Any | None:
        """A JSON file of this folder, or None when it is absent."""
        return json.loads(self._read(name)) if self._exists(name) else None

    def write_json(self, name: str, data: Any) -> None:
        self._write(json.dumps(data, indent=1, sort_keys=True).encode(), name)

    def load_state(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None when the run has not saved one yet."""
        if not self._exists(CHECKPOINT_FILE):
            return None
        return state_from_bytes(self._read(CHECKPOINT_FILE), self._path(CHECKPOINT_FILE))

    def save_state(self, state: dict[str, Any]) -> None:
        self._write(checkpoint_bytes(state), CHECKPOINT_FILE)

    def finished(self) -> bool:
        return self._exists(OUTCOME_DIR, HISTORY_FILE) and self._exists(OUTCOME_DIR, MODEL_FILE)

    def write_outcome(self, model_state: dict[str, Any], summary: dict[str, Any]) -> None:
        """``model.pt`` (the selected weights, epoch and job) then ``history.json`` (``summary``)."""
        self._write(checkpoint_bytes({"model": model_state, "epoch": summary["best_epoch"],
                                      "job": summary["job"]}), OUTCOME_DIR, MODEL_FILE)
        self._write(json.dumps(summary, indent=1, sort_keys=True).encode(), OUTCOME_DIR, HISTORY_FILE)

    def copy_outcome(self, destination: Path) -> None:
        """The finished run's ``model.pt`` and ``history.json`` into the local ``destination``."""
        destination.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, HISTORY_FILE):
            atomic_write_bytes(destination / name, self._read(OUTCOME_DIR, name))
