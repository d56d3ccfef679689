"""The error boundary every DVC stage script runs inside.

``stages/<name>.py`` holds its stage's orchestration as ``main(config)`` and ends with
``run_stage("<name>", main)``: read params.yaml and the recipe once, validate them, run the stage,
print the one line ``main`` returns (what the stage made, and how long it took), and turn a user
error (bad params, missing data, a cost file for other classes, an unusable checkpoint) into a
one-line message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from pipeline.config import Config, load_config
from pipeline.errors import UserError


def run_stage(name: str, main: Callable[[Config], str], params: str = "params.yaml") -> None:
    started = time.perf_counter()
    try:
        said = main(load_config(params))
    except UserError as error:
        print(f"error in stage {name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{name}: {said} ({time.perf_counter() - started:.1f} s)", flush=True)
