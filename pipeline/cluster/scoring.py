"""Batch scoring on a Ray cluster with Ray Data: the Ray path of ``python -m pipeline.predict``.

The input is read with Ray Data (an archive's images go in as a table of rows, image files are
read by Ray Data's file reader as bytes) and scored by a pool of actors, each holding the
exported model once (:class:`BatchScorer`): one actor per GPU when the cluster has GPUs, else CPU
actors. Each actor decodes, standardises and runs the network with the code the in-process path
uses (:mod:`pipeline.predict`) and hands back the network's outputs; the driver applies the
decision rule to all of them at once, as the in-process path and the evaluate stage do.

The same CSV needs the same batches: a network's output for an image depends, in the last bits,
on the other images in its batch (the matrix products are blocked by batch size). So rows carry
their position and are grouped into the in-process batches (positions ``k * batch_size`` up to
``(k + 1) * batch_size``), and each group is one call of ``map_batches``' user function
(``groupby(...).map_groups``, Ray Data's ``map_batches`` over the groups). A row the actor cannot
use (an unreadable image, one of the wrong size) comes back with its error, and the first such
error, in input order, ends the command as one line.

Like the training stages, the actors read the model folder and the image files by path: on a
cluster of several machines they sit on storage every node shares (docs/ray.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cluster.distributed import connect
from pipeline.config import RayConfig
from pipeline.predict.inputs import InputError, Inputs, decode_image
from pipeline.predict.predictor import Predictions, Predictor, load_predictor


class BatchScorer:
    """A Ray Data actor: the exported model, loaded once; a batch of rows in (one of the in-process
    batches), the network's outputs for them out, in position order, with each row's error."""

    def __init__(self, folder: str, device: str | None = None) -> None:
        self.predictor = load_predictor(folder, device)

    def _raw(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """Raw values of the batch's rows and, per row, the error that made it unusable ('' if none)."""
        shape = self.predictor.spec.input_shape
        if "pixels" in batch:  # rows of an archive: the same message as in the process
            start, stop = int(batch["index"][0]), int(batch["index"][-1]) + 1
            return self.predictor.raw(batch["pixels"], f"x[{start}:{stop}] of the archive"), [""] * len(batch["index"])
        pixels, errors = [], []
        for data, source in zip(batch["bytes"], batch["source"]):
            try:
                pixels.append(decode_image(bytes(data), shape, str(source)))
                errors.append("")
            except InputError as error:
                pixels.append(np.zeros(shape, dtype=np.uint8))
                errors.append(str(error))
        return self.predictor.raw(np.stack(pixels)), errors

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        order = np.argsort(batch["index"], kind="stable")  # a group arrives in any order
        batch = {key: np.asarray(values)[order] for key, values in batch.items()}
        try:
            raw, errors = self._raw(batch)
        except InputError as error:  # the whole batch (an archive's values): every row says so
            errors = [str(error)] * len(batch["index"])
            raw = np.zeros((len(errors), *self.predictor.spec.input_shape))
        logits = self.predictor.logits([self.predictor.standardise(raw)]).numpy()
        return {"index": batch["index"], "logits": logits, "error": np.array(errors)}


def _dataset(inputs: Inputs) -> Any:
    """The input as a Ray Dataset of rows with their position (``index``)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    if inputs.array is not None:
        table = pa.table({"index": np.arange(len(inputs)), "pixels": ArrowTensorArray.from_numpy(inputs.array)})
        return ray.data.from_arrow(table)
    assert inputs.files is not None
    position = {os.path.abspath(path): i for i, path in enumerate(inputs.files)}
    sources = dict(zip(position, inputs.sources))

    def locate(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [os.path.abspath(p) for p in batch["path"]]
        return {"index": np.array([position[p] for p in paths]), "bytes": batch["bytes"],
                "source": np.array([sources[p] for p in paths])}

    return ray.data.read_binary_files(list(position), include_paths=True).map_batches(locate)


def score_on_ray(folder: Path, predictor: Predictor, inputs: Inputs, batch_size: int, progress: Any,
                 log_file: Path) -> Predictions:
    """Every item of ``inputs`` scored on the cluster (``RAY_ADDRESS``, else a local one), in input order."""
    import ray.data

    connect(RayConfig(address=os.environ.get("RAY_ADDRESS") or None), log_file)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command's own bar counts the images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    gpus, cpus = int(ray.cluster_resources().get("GPU", 0)), int(ray.cluster_resources().get("CPU", 1))
    # One actor per GPU; on CPUs, half of them score while the others read.
    actors = ray.data.ActorPoolStrategy(min_size=1, max_size=gpus or max(1, cpus // 2))
    batches = _dataset(inputs).map_batches(
        lambda rows: {**rows, "batch": np.asarray(rows["index"]) // batch_size}, batch_format="numpy")
    scored = batches.groupby("batch").map_groups(
        BatchScorer, fn_constructor_kwargs={"folder": str(folder.resolve()), "device": "cuda" if gpus else "cpu"},
        compute=actors, num_gpus=1 if gpus else 0, num_cpus=1, batch_format="numpy")
    positions, logits, errors = [], [], {}
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        positions.append(batch["index"])
        logits.append(batch["logits"])
        errors.update({int(i): str(e) for i, e in zip(batch["index"], batch["error"]) if e})
        progress.update(len(batch["index"]))
    if errors:
        raise InputError(errors[min(errors)])
    import torch

    order = np.argsort(np.concatenate(positions), kind="stable")
    return predictor.decisions(torch.from_numpy(np.concatenate(logits)[order]))
