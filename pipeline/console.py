"""What a person's terminal can show: its width, and text wrapped to fit it.

A console line is wrapped, never cut: a cut loses the start of a line (a run's name, the root of a
path) or its end (a file name, a number). The width is the terminal's; where the output is not a
terminal (a log file, a CI job) it is :data:`FALLBACK_WIDTH`, and the ``COLUMNS`` environment
variable overrides both (:func:`shutil.get_terminal_size`).
"""

from __future__ import annotations

import shutil
import textwrap

FALLBACK_WIDTH = 100
# Narrower than this, wrapping at every few words helps nobody: lines stay this wide.
MIN_WIDTH = 40
CONTINUATION_INDENT = "  "


def console_width() -> int:
    """The columns of the terminal on stdout, or :data:`FALLBACK_WIDTH` where there is none."""
    columns = shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns
    return max(MIN_WIDTH, columns if columns > 0 else FALLBACK_WIDTH)


def wrap(text: str, width: int | None = None) -> list[str]:
    """``text`` as lines of at most ``width`` characters (default :func:`console_width`).

    Each line of ``text`` keeps its own leading spaces; its continuation lines are indented two
    more. Breaks fall between words; a word longer than a line (a long path) is split across lines.
    """
    width = max(MIN_WIDTH, width or console_width())
    lines: list[str] = []
    for line in text.splitlines() or [""]:
        lead = line[: len(line) - len(line.lstrip(" "))]
        lines += textwrap.wrap(line.strip(" "), width, initial_indent=lead,
                               subsequent_indent=lead + CONTINUATION_INDENT,
                               break_on_hyphens=False) or [""]
    return lines


def fit(text: str, width: int | None = None) -> str:
    """:func:`wrap`'s lines joined by newlines (no trailing newline)."""
    return "\n".join(wrap(text, width))
