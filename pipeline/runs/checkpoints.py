"""Checkpoint I/O: plain dictionaries of tensors and values, and each run's folder of them.

A checkpoint holds state dicts, the epoch, the history and the job it was trained for; it is
written atomically and read with ``weights_only=True`` (never code). A :class:`RunStore` is one
training run's folder under ``ray.storage_path``, a local folder or an ``s3://`` URI (pyarrow's
file systems, as Ray uses)::

    <storage>/<run name>/checkpoint.pt           the latest state: a restarted run resumes here
    <storage>/<run name>/checkpoint.sha256.json  its sha256, written with it, checked before a resume
    <storage>/<run name>/outcome/model.pt        once finished: the selected epoch's weights
    <storage>/<run name>/outcome/history.json    once finished: every epoch's metrics

The outcome is written last, history after model, so a run whose ``history.json`` exists has
finished. ``history.json`` records the sha256 of ``model.pt`` and the job: a finished run is reused
only when both verify (:meth:`RunStore.outcome_problem`), and a checkpoint is resumed only when its
sha256 is the one written with it, it loads, and it was saved for the same job
(:meth:`RunStore.state_problem`); anything else is discarded and trained again. The checksum is
what catches a damaged copy: ``torch.load`` checks no CRC, so a bit flipped inside a tensor loads
without a word.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.fileio import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
CHECKSUM_FILE = "checkpoint.sha256.json"  # {"checkpoint_sha256": ..., "replaced_sha256": ... or null}
OUTCOME_DIR = "outcome"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"
PARTIAL_SUFFIX = ".partial"  # an interrupted atomic write leaves <name>.<uuid>.partial behind


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
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # garbage or a damaged file, not a foreign object
            raise CheckpointError(f"checkpoint {where} is not a PyTorch checkpoint, or is damaged; "
                                  "re-create it (run its stage again)") from None
        # torch's message runs over many lines and suggests weights_only=False
        raise CheckpointError(f"checkpoint {where} holds objects other than tensors and plain values; this project "
                              "does not load it (weights_only): use a checkpoint the pipeline wrote") from None
    except Exception as error:  # truncated, corrupt, or not a torch file at all
        first = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {where} cannot be read ({type(error).__name__}: {first})") from None
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
        self._in_place: str | None = None  # sha256 of the checkpoint this store last loaded or saved
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
        temporary = f"{target}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        with self._fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self._fs.move(temporary, target)

    def read_json(self, name: str) -> Any | None:
        """A JSON file of this folder, or None when it is absent."""
        return json.loads(self._read(name)) if self._exists(name) else None

    def write_json(self, name: str, data: Any) -> None:
        self._write(json.dumps(data, indent=1, sort_keys=True).encode(), name)

    def load_state(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None when the run has not saved one yet; a checkpoint whose
        sha256 is not one its checksum file accepts (:meth:`save_state`), or that has none, is
        refused with a :class:`CheckpointError`, never loaded."""
        if not self._exists(CHECKPOINT_FILE):
            return None
        where = self._path(CHECKPOINT_FILE)
        # The checkpoint is read before its checksum: a save in between leaves a checksum that still
        # accepts the checkpoint read (save_state), so a reader never mistakes a save for damage.
        data = self._read(CHECKPOINT_FILE)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._accepted_digests(where):
            raise CheckpointError(f"{where} differs from the checksum written with it (a damaged copy)")
        state = state_from_bytes(data, where)
        self._in_place = digest
        return state

    def _accepted_digests(self, where: str) -> set[str]:
        """The sha256 values the checksum file accepts for ``checkpoint.pt``."""
        if not self._exists(CHECKSUM_FILE):
            raise CheckpointError(f"{where} has no checksum beside it ({CHECKSUM_FILE}: saved by an older "
                                  "version of the pipeline, or the checksum was lost)")
        data = self._read(CHECKSUM_FILE)  # a failed read is raised as it is: no reason to discard
        try:
            sums = json.loads(data)
            return {sums["checkpoint_sha256"], sums.get("replaced_sha256")} - {None}
        except (ValueError, LookupError, TypeError, AttributeError) as error:
            raise CheckpointError(f"the checksum beside {where} ({CHECKSUM_FILE}) cannot be read "
                                  f"({type(error).__name__})") from None

    def save_state(self, state: dict[str, Any]) -> None:
        """Write the checkpoint and its checksum, each whole (:meth:`_write`).

        The checksum goes first, and it also accepts the checkpoint it replaces (the one this store
        loaded or saved last), so a crash between the two writes leaves the previous checkpoint
        beside a checksum that still accepts it: the run resumes from there. Written the other way
        round, that crash would leave the new checkpoint beside the old checksum, discarded as a
        damaged copy, and the run would start again from epoch 0. Accepting the replaced one
        weakens nothing: its bytes are a checkpoint this run saved whole."""
        data = checkpoint_bytes(state)
        digest = hashlib.sha256(data).hexdigest()
        self.write_json(CHECKSUM_FILE, {"checkpoint_sha256": digest, "replaced_sha256": self._in_place})
        self._write(data, CHECKPOINT_FILE)
        self._in_place = digest

    def record_state_checksum(self) -> bool:
        """Write the checksum of the ``checkpoint.pt`` there now, unverified; False when there is
        none. Only for a folder no trainer writes to, whose checkpoint predates checksums (a
        migration of a run store)."""
        if not self._exists(CHECKPOINT_FILE):
            return False
        digest = hashlib.sha256(self._read(CHECKPOINT_FILE)).hexdigest()
        self.write_json(CHECKSUM_FILE, {"checkpoint_sha256": digest, "replaced_sha256": None})
        self._in_place = digest
        return True

    def finished(self) -> bool:
        return self._exists(OUTCOME_DIR, HISTORY_FILE) and self._exists(OUTCOME_DIR, MODEL_FILE)

    def write_outcome(self, model_state: dict[str, Any], summary: dict[str, Any]) -> None:
        """``model.pt`` (the selected weights, epoch and job) then ``history.json`` (``summary`` and
        the sha256 of ``model.pt``, checked before the outcome is reused)."""
        model = checkpoint_bytes({"model": model_state, "epoch": summary["best_epoch"], "job": summary["job"]})
        self._write(model, OUTCOME_DIR, MODEL_FILE)
        summary = {**summary, "model_sha256": hashlib.sha256(model).hexdigest()}
        self._write(json.dumps(summary, indent=1, sort_keys=True).encode(), OUTCOME_DIR, HISTORY_FILE)

    def outcome_problem(self, job: dict[str, Any]) -> str | None:
        """Why the finished outcome cannot be reused for ``job`` (a ``TrainJob.to_dict()``), or
        None when ``history.json`` reads, names this job, and ``model.pt`` has the sha256 it recorded."""
        try:
            summary = json.loads(self._read(OUTCOME_DIR, HISTORY_FILE))
        except (OSError, ValueError) as error:
            return f"its {HISTORY_FILE} cannot be read ({type(error).__name__})"
        if not isinstance(summary, dict) or "model_sha256" not in summary:
            return f"its {HISTORY_FILE} records no checksum of {MODEL_FILE}"
        if _canonical(summary.get("job")) != _canonical(job):
            return f"its {HISTORY_FILE} is for another job"
        try:
            model = self._read(OUTCOME_DIR, MODEL_FILE)
        except OSError as error:
            return f"its {MODEL_FILE} cannot be read ({type(error).__name__})"
        if hashlib.sha256(model).hexdigest() != summary["model_sha256"]:
            return f"its {MODEL_FILE} ({len(model)} bytes) differs from the one the run wrote (checksum mismatch)"
        return None

    def state_problem(self, job: dict[str, Any]) -> str | None:
        """Why the latest checkpoint cannot be resumed for ``job`` (damaged: its sha256 differs from
        the checksum written with it; no checksum; unreadable; another job's), or None (also when
        there is none)."""
        try:
            state = self.load_state()
        except CheckpointError as error:
            return str(error)
        if state is not None and _canonical(state.get("job")) != _canonical(job):
            return f"{self._path(CHECKPOINT_FILE)} was saved for another job"
        return None

    def discard(self) -> None:
        """Delete the run's checkpoint, its checksum and the outcome (the run then starts from
        scratch). The checkpoint goes first: a checksum left alone is never read."""
        from pyarrow import fs

        self._in_place = None
        for parts in ((CHECKPOINT_FILE,), (CHECKSUM_FILE,), (OUTCOME_DIR,)):
            info = self._fs.get_file_info(self._path(*parts))
            if info.type == fs.FileType.File:
                self._fs.delete_file(info.path)
            elif info.type == fs.FileType.Directory:
                self._fs.delete_dir(info.path)

    def remove_partials(self) -> list[str]:
        """Delete what interrupted writes left behind (``*.partial``); the names deleted. Only safe
        while no trainer writes to this run (the stage holds the run's lock)."""
        from pyarrow import fs

        selector = fs.FileSelector(self._root, recursive=True, allow_not_found=True)
        partial = [info.path for info in self._fs.get_file_info(selector)
                   if info.type == fs.FileType.File and info.path.endswith(PARTIAL_SUFFIX)]
        for path in partial:
            self._fs.delete_file(path)
        return [path.rsplit("/", 1)[-1] for path in partial]

    def copy_outcome(self, destination: Path) -> None:
        """The finished run's ``model.pt`` and ``history.json`` into the local ``destination``,
        each checked against the checksum the run recorded."""
        destination.mkdir(parents=True, exist_ok=True)
        history = self._read(OUTCOME_DIR, HISTORY_FILE)
        model = self._read(OUTCOME_DIR, MODEL_FILE)
        recorded = json.loads(history).get("model_sha256")
        if recorded != hashlib.sha256(model).hexdigest():
            raise CheckpointError(f"{self._path(OUTCOME_DIR, MODEL_FILE)} changed after the run verified "
                                  "(checksum mismatch); run the stage again to retrain it")
        atomic_write_bytes(destination / MODEL_FILE, model)
        atomic_write_bytes(destination / HISTORY_FILE, history)


def _canonical(job: Any) -> str:
    """A job dict as JSON text, so that one read back from a file compares equal to one in memory."""
    return json.dumps(job, sort_keys=True, default=str)
