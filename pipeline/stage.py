"""The error boundary every DVC stage script runs inside.

``stages/<name>.py`` holds its stage's orchestration as ``main(config)`` and ends with
``run_stage("<name>", main)``: read params.yaml and the recipe once, validate them, run the stage,
print the line ``main`` returns (what the stage made, and how long it took), wrapped to the
terminal's width (pipeline.console). Every failure a user can cause or fix ends as one line,
``error in stage <name>: ...``, and exit status 2:

* a :class:`~pipeline.errors.UserError` (bad params, data, cost matrices or checkpoints, a run
  that diverged or that another process trains);
* a file that is missing, unreadable or unwritable (``OSError``: permissions, a full disk);
* an interrupt (exit status 130);
* the loss of the Ray cluster it trains on (:func:`pipeline.cluster.lifeline.watch_cluster`).

Anything else is a bug and keeps its traceback; ``CSADA_TRACEBACK=1`` shows the traceback of the
one-line cases too. A stage started by ``dvc`` stops when that ``dvc`` dies (pipeline.cluster.lifeline).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable

from pipeline.cluster import lifeline
from pipeline.config import Config, load_config
from pipeline.console import fit
from pipeline.errors import UserError

# PyYAML's report gives each problem a line of its own, then the place on the next,
# `  in "costs/mine.yaml", line 3, column 7`, and, for text read from a string, ":" and two lines
# quoting the source with a caret under the column.
_YAML_PLACE = re.compile(r'\s*\n\s*in "[^"\n]*", (line \d+, column \d+)(?::\n[^\n]*\n *\^)?')


def one_line(message: str) -> str:
    """``message`` on one line: a parser's report quoted whole (PyYAML's spans four) has each
    place it names put in brackets after its problem, and its lines joined with "; "."""
    folded = _YAML_PLACE.sub(r" (\1)", message)
    return "; ".join(line.strip() for line in folded.splitlines() if line.strip())


def describe(error: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for a bug."""
    if isinstance(error, UserError):
        return one_line(str(error))
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error) or type(error).__name__
        hint = " (check the file's permissions)" if isinstance(error, PermissionError) else ""
        return one_line(f"{where}{reason}{hint}")
    return None


def run_stage(name: str, main: Callable[[Config], str], params: str = "params.yaml") -> None:
    started = time.perf_counter()
    lifeline.watch(name)
    try:
        with lifeline.running(name):
            said = main(load_config(params))
    except KeyboardInterrupt:
        print(f"stage {name}: interrupted; run it again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        message = describe(error)
        if message is None or os.environ.get("CSADA_TRACEBACK"):
            raise
        print(f"error in stage {name}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    print(fit(f"{name}: {said} ({time.perf_counter() - started:.1f} s)"), flush=True)
