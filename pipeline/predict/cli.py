"""``python -m pipeline.predict MODEL INPUT --out predictions.csv``: score images with an exported model.

MODEL is an exported model folder (``models/<dataset>/recommended``); INPUT an ``.npz`` (``x``,
optionally ``y`` and ``classes``), an image file, or a folder searched at any depth for images
(:mod:`pipeline.predict.inputs`). The CSV (:mod:`pipeline.predict.table`) is written atomically
once every image is scored; a progress bar and a one-line summary go to stderr.

In this process by default; with ``--ray``, or when ``RAY_ADDRESS`` is set (``--no-ray`` to stay
here), the images are read with Ray Data and scored on the cluster's workers, on GPUs when it has
them (:mod:`pipeline.cluster.scoring`), into the same CSV. Ray is imported only then.

A problem a user can fix (an unreadable input, an image of the wrong geometry, a damaged model
folder) ends as one line ``error: predict: ...`` with exit status 2, as a stage's would
(:func:`pipeline.stage.describe`); ``CSADA_TRACEBACK=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from pipeline.fileio import atomic_write_text
from pipeline.predict.inputs import Inputs, decode_image, open_inputs
from pipeline.predict.predictor import BATCH_SIZE, Predictions, Predictor, load_predictor
from pipeline.predict.table import csv_text, summary_line
from pipeline.stage import describe

RAY_LOG = Path("runs/logs/predict.log")  # Ray's own messages, when scoring on a cluster


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="exported model folder, e.g. models/digits/recommended")
    parser.add_argument("input", type=Path, help=".npz (x, optional y), an image file, or a folder of images")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="the CSV to write")
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                        help="score on a Ray cluster with Ray Data (default: when RAY_ADDRESS is set)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per batch")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def raw_chunk(predictor: Predictor, inputs: Inputs, start: int, stop: int) -> np.ndarray:
    """Raw values of items ``start:stop`` of ``inputs`` (an archive's rows or decoded files)."""
    if inputs.array is not None:
        return predictor.raw(inputs.array[start:stop], f"x[{start}:{stop}] of the archive")
    assert inputs.files is not None
    shape = predictor.spec.input_shape
    pixels = np.stack([decode_image(path, shape, inputs.sources[i])
                       for i, path in enumerate(inputs.files[start:stop], start)])
    return predictor.raw(pixels, inputs.sources[start])


def score_here(predictor: Predictor, inputs: Inputs, batch_size: int, progress) -> Predictions:
    """Every item in this process, batch by batch; the rule applied to all outputs at once."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        stop = min(start + batch_size, len(inputs))
        outputs.append(predictor.logits([predictor.standardise(raw_chunk(predictor, inputs, start, stop))]))
        progress.update(stop - start)
    import torch

    return predictor.decisions(torch.cat(outputs))


def run(args: argparse.Namespace) -> str:
    from tqdm import tqdm

    predictor = load_predictor(args.model, args.device)
    inputs = open_inputs(args.input, predictor.spec.input_shape, predictor.classes)
    on_ray = args.ray if args.ray is not None else bool(os.environ.get("RAY_ADDRESS"))
    with tqdm(total=len(inputs), unit="image", file=sys.stderr, desc="predict", leave=False) as progress:
        if on_ray:
            from pipeline.cluster.scoring import score_on_ray

            predictions = score_on_ray(args.model, predictor, inputs, args.batch_size, progress, RAY_LOG)
        else:
            predictions = score_here(predictor, inputs, args.batch_size, progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, csv_text(inputs.sources, predictions, inputs.labels))
    where = "on Ray" if on_ray else "here"
    return f"{summary_line(predictions, predictor.spec.cost, predictor.spec.threshold, inputs.labels)} ({where}) -> {args.out}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        said = run(args)
    except KeyboardInterrupt:
        print("predict: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        message = describe(error)
        if message is None or os.environ.get("CSADA_TRACEBACK"):
            raise
        print(f"error: predict: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"predict: {said}", file=sys.stderr)
